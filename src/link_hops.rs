//! `--gre-link-tx`'s control side: the next hop (device and neighbour MAC) toward each
//! peer, looked up in the kernel and told to the send sockets' link-layer senders at every
//! periodic check — the routed plane's gre peers and the L2 gre networks' members alike. The route to each peer is asked once and kept until the host's IPv4
//! routes change (the kernel announces each change) or [`ROUTES_FOR`] has passed; the
//! neighbour table, where MACs and their states live, is read at every check.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::host::{plan_hops, Netlink, RouteMemo, RouteWatch};
use crate::sys::socket::UnderlaySocket;

/// How long a route answer is believed when no change was announced (a lost announcement
/// is caught up with after this long).
const ROUTES_FOR: Duration = Duration::from_secs(60);

/// The next hops of one plane's link-layer senders.
pub struct LinkHops {
    /// How many peers have a next hop (the `overlayd_gre_link_peers` gauge).
    pub peers: Arc<AtomicUsize>,
    /// Kept [`ROUTES_FOR`]; not at all when the kernel's announcements cannot be heard
    /// (`watch` None): every check then asks again.
    routes: RouteMemo<Ipv4Addr, Option<(u32, Ipv4Addr)>>,
    watch: Option<RouteWatch>,
}

impl LinkHops {
    /// Starts following the host's route announcements (inside the tokio runtime).
    pub fn start() -> Self {
        let watch = RouteWatch::start()
            .inspect_err(|e| warn!(error = %e, "cannot follow the host's route changes; the peers' routes are looked up at every check"))
            .ok();
        let kept = if watch.is_some() {
            ROUTES_FOR
        } else {
            Duration::ZERO
        };
        LinkHops {
            peers: Arc::new(AtomicUsize::new(0)),
            routes: RouteMemo::new(kept),
            watch,
        }
    }

    /// Tells `senders`' link-layer paths the next hops toward the peers at `dsts` (each
    /// looked up once however often it is listed), and asks the kernel to revalidate the
    /// stale neighbour entries among them (a peer without a usable entry is sent to through
    /// the raw socket, which makes the kernel resolve it).
    pub async fn refresh(
        &mut self,
        nl: &Netlink,
        dsts: impl IntoIterator<Item = Ipv4Addr>,
        senders: &[Arc<UnderlaySocket>],
    ) {
        let links: Vec<_> = senders.iter().filter_map(|s| s.link_tx()).collect();
        if links.is_empty() {
            return;
        }
        self.routes
            .refresh(self.watch.as_ref().map_or(0, RouteWatch::changes));
        let mut dsts: Vec<_> = dsts.into_iter().collect();
        dsts.sort_unstable();
        dsts.dedup();
        let mut via = Vec::new();
        for dst in dsts {
            if let Some(hop) = self.hop_toward(nl, dst).await {
                via.push((dst, hop));
            }
        }
        let neighbours = match via.is_empty() {
            true => Ok(Vec::new()),
            false => nl.usable_neighbours().await,
        };
        let found = plan_hops(&via, &neighbours.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the neighbour table; gre sends through the raw socket meanwhile");
            Vec::new()
        }));
        for &(ifindex, ip) in &found.stale {
            if let Err(e) = nl.nudge_neighbour(ifindex, ip).await {
                debug!(error = %e, "cannot ask for a stale neighbour entry's revalidation");
            }
        }
        self.peers.store(found.hops.len(), Ordering::Relaxed);
        for l in links {
            l.set_hops(found.hops.clone());
        }
    }

    /// The device and neighbour of the route to `dst`: remembered, or asked (and then
    /// remembered, an absent route too); none when the kernel cannot be asked.
    async fn hop_toward(&mut self, nl: &Netlink, dst: Ipv4Addr) -> Option<(u32, Ipv4Addr)> {
        if let Some(hop) = self.routes.get(&dst) {
            return *hop;
        }
        match nl.hop_toward(dst).await {
            Ok(hop) => {
                self.routes.insert(dst, hop);
                hop
            }
            Err(e) => {
                warn!(error = %e, %dst, "cannot look up the route to a peer; gre sends to it through the raw socket meanwhile");
                None
            }
        }
    }
}
