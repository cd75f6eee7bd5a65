//! flannel's `DirectRouting` (`Backend.DirectRouting`, vxlan and gre): a peer whose public
//! address is on a link of this host — the kernel's route to it has no gateway, flannel's
//! test — is reached by a plain kernel route, `<its subnet> via <its public address>`,
//! instead of through the tunnel. Those routes follow the forwarding tables (each swap),
//! are checked again with the periodic check (a deleted one comes back, a peer that moved
//! off the link loses its own), carry [`DIRECT_PROTO`] so that a restart after a crash finds
//! and removes the stale ones, and go at stop.
//!
//! [`wanted`] and [`diff`] are pure; [`DirectRoutes`] applies them through netlink.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::fib::{Peer, Peer6, SharedFib, SharedFib6, Table};
use crate::host::{DirectRoute, Netlink, RouteMemo, DIRECT_PROTO};

/// How long a peer address's "on a link or not" is believed before it is asked again.
const ON_LINK_FOR: Duration = Duration::from_secs(30);

/// Every peer's candidate route: each IPv4 subnet via its PublicIP, each IPv6 subnet via
/// its PublicIPv6 (an IPv6 subnet carried over IPv4 has no IPv6 gateway, so no candidate).
pub fn candidates(fib: &Table<Peer>, fib6: &Table<Peer6>) -> Vec<DirectRoute> {
    let v4 = fib
        .peers()
        .iter()
        .filter_map(|p| DirectRoute::new(p.subnet, p.public_ip));
    let v6 = fib6
        .peers()
        .iter()
        .filter_map(|p| DirectRoute::new(p.subnet, p.public_ipv6?));
    v4.chain(v6).collect()
}

/// The candidates whose gateway is on a link (`on_link`; an unknown answer counts as not).
pub fn wanted(
    candidates: &[DirectRoute],
    on_link: impl Fn(IpAddr) -> Option<bool>,
) -> BTreeSet<DirectRoute> {
    candidates
        .iter()
        .filter(|r| on_link(r.via()) == Some(true))
        .copied()
        .collect()
}

/// Whether `r` is for a subnet inside `networks`: only such routes are ours (another
/// daemon's, for another network, are left alone and not counted).
pub fn is_ours(r: &DirectRoute, networks: &[IpNet]) -> bool {
    networks.iter().any(|n| n.contains(&r.subnet()))
}

/// What to add and what to remove to go from `have` to `want`; only ours ([`is_ours`])
/// are removed.
pub fn diff(
    want: &BTreeSet<DirectRoute>,
    have: &BTreeSet<DirectRoute>,
    networks: &[IpNet],
) -> (Vec<DirectRoute>, Vec<DirectRoute>) {
    let add = want.difference(have).copied().collect();
    let remove = have
        .difference(want)
        .filter(|r| is_ours(r, networks))
        .copied()
        .collect();
    (add, remove)
}

/// The direct routes of one node, kept in step with its forwarding tables.
pub struct DirectRoutes {
    nl: Netlink,
    /// `Backend.DirectRouting` on a backend that honours it.
    enabled: bool,
    /// The overlay's networks (IPv4, IPv6): the subnets our routes may be for.
    networks: Vec<IpNet>,
    fib: SharedFib,
    fib6: SharedFib6,
    changed: watch::Receiver<()>,
    on_link: RouteMemo<IpAddr, bool>,
    /// How many are installed (the `overlayd_direct_routes` gauge).
    count: Arc<AtomicUsize>,
}

impl DirectRoutes {
    pub fn new(
        nl: Netlink,
        enabled: bool,
        networks: Vec<IpNet>,
        (fib, fib6): (SharedFib, SharedFib6),
        changed: watch::Receiver<()>,
    ) -> Self {
        DirectRoutes {
            nl,
            enabled,
            networks,
            fib,
            fib6,
            changed,
            on_link: RouteMemo::new(ON_LINK_FOR),
            count: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The installed count, for telemetry.
    pub fn count(&self) -> Arc<AtomicUsize> {
        self.count.clone()
    }

    /// Resolves when the forwarding tables changed; never when disabled or when the tables'
    /// owner is gone.
    pub async fn changed(&mut self) {
        if !self.enabled || self.changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Brings the host's direct routes to what the tables want (none when disabled): adds
    /// the missing, removes ours that no peer wants. Failures are logged and retried at the
    /// next sync.
    pub async fn sync(&mut self) {
        let want = match self.enabled {
            true => self.want().await,
            false => BTreeSet::new(),
        };
        self.apply(&want).await;
    }

    /// Removes every direct route of ours (at stop).
    pub async fn clear(&mut self) {
        self.apply(&BTreeSet::new()).await;
    }

    async fn want(&mut self) -> BTreeSet<DirectRoute> {
        self.on_link.refresh(0);
        let candidates = candidates(&self.fib.load(), &self.fib6.load());
        for via in candidates.iter().map(DirectRoute::via) {
            if self.on_link.get(&via).is_some() {
                continue;
            }
            match self.nl.on_link(via).await {
                Ok(on) => {
                    self.on_link.insert(via, on);
                }
                Err(e) => warn!(error = %e, %via, "cannot look up the route to a peer"),
            }
        }
        wanted(&candidates, |via| self.on_link.get(&via).copied())
    }

    async fn apply(&mut self, want: &BTreeSet<DirectRoute>) {
        let have = match self.nl.direct_routes().await {
            Ok(h) => h.into_iter().collect(),
            Err(e) => {
                warn!(error = %e, "cannot list the direct routes; retrying at the next check");
                return;
            }
        };
        let (add, remove) = diff(want, &have, &self.networks);
        let mut installed = have.iter().filter(|r| is_ours(r, &self.networks)).count();
        for r in remove {
            match self.nl.del_direct_route(r).await {
                Ok(()) => {
                    installed -= 1;
                    info!(route = %r, proto = DIRECT_PROTO, "direct route removed");
                }
                Err(e) => warn!(error = %e, "cannot remove a direct route"),
            }
        }
        for r in add {
            match self.nl.add_direct_route(r).await {
                Ok(()) => {
                    installed += 1;
                    info!(route = %r, proto = DIRECT_PROTO, "direct route added: the peer is on a link of this host");
                }
                Err(e) => {
                    warn!(error = %e, "cannot add a direct route; the tunnel carries its traffic")
                }
            }
        }
        self.count.store(installed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::Table;

    fn route(subnet: &str, via: &str) -> DirectRoute {
        DirectRoute::new(
            subnet.parse::<IpNet>().unwrap(),
            via.parse::<IpAddr>().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_route_keeps_to_one_family() {
        assert!(DirectRoute::new(
            "10.1.0.0/24".parse::<IpNet>().unwrap(),
            "fd00::1".parse::<IpAddr>().unwrap()
        )
        .is_none());
        assert_eq!(
            route("10.1.0.7/24", "192.168.1.2"),
            route("10.1.0.0/24", "192.168.1.2")
        );
    }

    #[test]
    fn candidates_from_both_tables() {
        let mut fib = Table::empty("10.1.0.0/16".parse().unwrap(), 24, None);
        fib.insert(Peer::new(
            "10.1.2.0/24".parse().unwrap(),
            "192.168.1.2".parse().unwrap(),
            [2; 6],
        ))
        .unwrap();
        let mut fib6 = Table::empty("fd10::/48".parse().unwrap(), 64, None);
        let v4 = "192.168.1.2".parse().unwrap();
        fib6.insert(Peer6::new(
            "fd10:0:0:2::/64".parse().unwrap(),
            v4,
            Some("fd00::2".parse().unwrap()),
            "fd00::2".parse().unwrap(),
            [2; 6],
        ))
        .unwrap();
        // Carried over IPv4: no IPv6 gateway, no candidate.
        fib6.insert(Peer6::new(
            "fd10:0:0:3::/64".parse().unwrap(),
            "192.168.1.3".parse().unwrap(),
            None,
            IpAddr::V4("192.168.1.3".parse().unwrap()),
            [3; 6],
        ))
        .unwrap();
        assert_eq!(
            candidates(&fib, &fib6),
            [
                route("10.1.2.0/24", "192.168.1.2"),
                route("fd10:0:0:2::/64", "fd00::2")
            ]
        );
    }

    #[test]
    fn only_peers_on_a_link_are_wanted() {
        let c = [
            route("10.1.2.0/24", "192.168.1.2"),
            route("10.1.3.0/24", "172.16.0.3"),
            route("10.1.4.0/24", "192.168.1.4"),
        ];
        let on_link = |ip: IpAddr| match ip.to_string().as_str() {
            "192.168.1.2" => Some(true),
            "172.16.0.3" => Some(false),
            _ => None,
        };
        assert_eq!(
            wanted(&c, on_link),
            BTreeSet::from([route("10.1.2.0/24", "192.168.1.2")])
        );
    }

    #[test]
    fn diff_adds_the_missing_and_removes_only_ours() {
        let nets: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        let want = BTreeSet::from([
            route("10.1.2.0/24", "192.168.1.2"),
            route("10.1.3.0/24", "192.168.1.3"),
        ]);
        let have = BTreeSet::from([
            route("10.1.3.0/24", "192.168.1.3"),
            // A peer that left, and one whose address changed.
            route("10.1.4.0/24", "192.168.1.4"),
            route("10.1.2.0/24", "192.168.1.9"),
            // Another daemon's network: not ours to remove.
            route("10.9.4.0/24", "192.168.1.4"),
        ]);
        let (add, remove) = diff(&want, &have, &nets);
        assert_eq!(add, [route("10.1.2.0/24", "192.168.1.2")]);
        assert_eq!(
            remove,
            [
                route("10.1.2.0/24", "192.168.1.9"),
                route("10.1.4.0/24", "192.168.1.4")
            ]
        );
        let (add, remove) = diff(&BTreeSet::new(), &have, &nets);
        assert!(add.is_empty());
        assert_eq!(remove.len(), 3);
    }
}
