//! Leases → peers → forwarding tables: the other nodes' leases, each decoded once by our
//! backend when it changes (cached by key), turned into the IPv4 and IPv6 [`Table`]s the
//! workers read.
//!
//! One builder serves both address families, as [`Table`] does. When two leases name one
//! subnet, the one etcd created first (lowest `create_revision`) wins on every node, and the
//! conflict is logged once per losing lease version. A lease that is invalid for us (bad
//! `BackendData`, a `PublicIP` no node can have, a subnet outside the network) is warned
//! about once per version and not kept. Every set here holds at most one entry per current
//! key: a key's entries go when its lease does.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::control::config::NetworkConfig;
use crate::control::etcd::{Acquired, LeaseSink, RemoteLease};
use crate::fib::{Entry, Family, Peer, Peer6, SharedFib, SharedFib6, Table};

/// Why a lease is left out before any table is built (`None`: it is kept).
fn refusal(cfg: &NetworkConfig, l: &RemoteLease) -> Option<String> {
    // An unusable PublicIP (0.0.0.0, loopback, multicast, broadcast) never gets here: the
    // lease's decoding refuses it (control::lease).
    if l.has_ipv4() && cfg.enable_ipv4 && !cfg.network.contains(&l.subnet) {
        return Some(format!(
            "subnet {} lies outside Network {}",
            l.subnet, cfg.network
        ));
    }
    match (l.ipv6_subnet, &cfg.ipv6) {
        (Some(s), Some(c6)) if !c6.network.contains(&s) => Some(format!(
            "IPv6 subnet {s} lies outside IPv6Network {}",
            c6.network
        )),
        _ => None,
    }
}

/// One lease with what our backend makes of it.
struct Known {
    lease: RemoteLease,
    v4: Option<Peer>,
    v6: Option<Peer6>,
}

/// The peers of this node, by lease key, and the tables built from them.
pub struct Tables {
    backend: Backend,
    /// Whether this node sends IPv6 over an IPv6 underlay.
    v6_underlay: bool,
    cfg: NetworkConfig,
    fib: SharedFib,
    fib6: SharedFib6,
    by_key: HashMap<String, Known>,
    /// Lease key → the revision of its version already warned about.
    warned: HashMap<String, i64>,
    /// Told after every swap of the tables (see [`Self::changes`]).
    changed: watch::Sender<()>,
}

impl Tables {
    pub fn new(
        backend: Backend,
        v6_underlay: bool,
        cfg: NetworkConfig,
        fib: SharedFib,
        fib6: SharedFib6,
    ) -> Self {
        Tables {
            backend,
            v6_underlay,
            cfg,
            fib,
            fib6,
            by_key: HashMap::new(),
            warned: HashMap::new(),
            changed: watch::Sender::new(()),
        }
    }

    /// A receiver told after each swap of the forwarding tables: what must follow the
    /// leases (the L2 member re-check) waits on it instead of polling. Control plane only.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The number of leases kept (decoded for this node).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no lease is kept.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Warns about `l` unless its current version was warned about already.
    fn warn_once(&mut self, l: &RemoteLease, why: &str) {
        if self.warned.insert(l.key.clone(), l.mod_revision) != Some(l.mod_revision) {
            warn!(key = %l.key, backend = %self.backend.kind.as_str(), reason = %why, "ignoring a lease");
        }
    }

    /// Decodes `l` for our backend (both families); `None` when it is not kept.
    fn decode(&mut self, l: RemoteLease) -> Option<Known> {
        if let Some(why) = refusal(&self.cfg, &l) {
            self.warn_once(&l, &why);
            return None;
        }
        let v4 = match self.backend.peer_mac(&l.attrs) {
            Ok(mac) => mac
                .filter(|_| l.has_ipv4())
                .map(|mac| Peer::new(l.subnet, l.attrs.public_ip, mac)),
            Err(e) => {
                self.warn_once(&l, &format!("invalid BackendData: {e}"));
                None
            }
        };
        let v6 = match l
            .ipv6_subnet
            .map(|_| self.backend.ipv6_route(&l.attrs, self.v6_underlay))
        {
            Some(Ok(route)) => route.zip(l.ipv6_subnet).map(|((underlay, mac), s)| {
                Peer6::new(s, l.attrs.public_ip, l.attrs.public_ipv6, underlay, mac)
            }),
            Some(Err(e)) => {
                self.warn_once(&l, &format!("invalid BackendV6Data: {e}"));
                None
            }
            None => None,
        };
        (v4.is_some() || v6.is_some()).then_some(Known { lease: l, v4, v6 })
    }

    /// One table of family `P` from the kept peers, the oldest lease first so that it wins
    /// a conflict; each loser logged once per version.
    fn build<P: Entry + Clone>(
        &mut self,
        order: &[&str],
        own: &Acquired,
        network: <P::F as Family>::Net,
        subnet_len: u8,
        local: Option<<P::F as Family>::Net>,
        peer: impl Fn(&Known) -> Option<&P>,
    ) -> Table<P> {
        let mut table = Table::empty(network, subnet_len, local);
        let mut owners: Vec<&str> = Vec::new();
        let mut losers: Vec<(String, String)> = Vec::new();
        for key in order {
            let Some(p) = self
                .by_key
                .get(*key)
                .filter(|k| k.lease.subnets() != own.key())
                .and_then(&peer)
            else {
                continue;
            };
            match table.insert(p.clone()) {
                Ok(()) => owners.push(key),
                Err(p) => {
                    let winner = table
                        .lookup_index(P::F::network(&p.subnet()))
                        .map_or("this node's own lease", |i| owners[i]);
                    losers.push((key.to_string(), winner.to_string()));
                }
            }
        }
        for (loser, winner) in losers {
            if let Some(l) = self.by_key.get(&loser).map(|k| k.lease.clone()) {
                self.warn_once(&l, &format!("its subnet conflicts with {winner}'s, created earlier (or it lies outside the network or does not match its SubnetLen)"));
            }
        }
        table
    }

    /// Builds and stores both tables for a node holding `own` (counters carried over).
    fn rebuild(&mut self, own: &Acquired) {
        let mut order: Vec<(i64, String)> = self
            .by_key
            .iter()
            .map(|(k, v)| (v.lease.create_revision, k.clone()))
            .collect();
        order.sort_unstable();
        let order: Vec<&str> = order.iter().map(|(_, k)| k.as_str()).collect();
        let fib = match self.cfg.enable_ipv4 {
            true => {
                let (n, len) = (self.cfg.network, self.cfg.subnet_len);
                self.build(&order, own, n, len, Some(own.subnet), |k| k.v4.as_ref())
            }
            false => Table::default(),
        };
        let fib6 = match self.cfg.ipv6.as_ref().map(|c| (c.network, c.subnet_len)) {
            Some((n, len)) => self.build(&order, own, n, len, own.ipv6_subnet, |k| k.v6.as_ref()),
            None => Table::default(),
        };
        self.store(fib, fib6);
    }

    fn store(&self, mut fib: Table<Peer>, mut fib6: Table<Peer6>) {
        fib.adopt_counters(&self.fib.load());
        fib6.adopt_counters(&self.fib6.load());
        debug!(
            peers = fib.peers().len(),
            peers6 = fib6.peers().len(),
            "forwarding table updated"
        );
        self.fib.store(Arc::new(fib));
        self.fib6.store(Arc::new(fib6));
        self.changed.send_replace(());
    }
}

fn log_peer(l: &RemoteLease, what: &str) {
    info!(subnet = %l.subnets(), public_ip = %l.attrs.public_ip, public_ipv6 = ?l.attrs.public_ipv6, "{what}");
}

impl LeaseSink for Tables {
    fn reset(&mut self, leases: Vec<RemoteLease>) {
        let first = self.by_key.is_empty();
        let keys: std::collections::HashSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
        self.warned.retain(|k, _| keys.contains(k.as_str()));
        for (k, old) in &self.by_key {
            if !keys.contains(k.as_str()) {
                log_peer(&old.lease, "peer removed (relist)");
            }
        }
        let mut by_key = HashMap::with_capacity(leases.len());
        for l in leases {
            let unchanged = self
                .by_key
                .remove(&l.key)
                .filter(|k| k.lease.mod_revision == l.mod_revision);
            let known = match unchanged {
                Some(k) => Some(k),
                None => {
                    if !first {
                        log_peer(&l, "peer added (relist)");
                    }
                    self.decode(l)
                }
            };
            if let Some(k) = known {
                by_key.insert(k.lease.key.clone(), k);
            }
        }
        self.by_key = by_key;
    }

    fn put(&mut self, lease: RemoteLease) {
        let key = lease.key.clone();
        if !self.by_key.contains_key(&key) {
            log_peer(&lease, "peer added");
        }
        match self.decode(lease) {
            Some(k) => self.by_key.insert(key, k),
            None => self.by_key.remove(&key),
        };
    }

    fn remove(&mut self, key: &str) {
        if let Some(k) = self.by_key.remove(key) {
            log_peer(&k.lease, "peer removed");
        }
        self.warned.remove(key);
    }

    fn publish(&mut self, own: &Acquired) {
        self.rebuild(own);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::{BackendConfig, BackendKind};
    use crate::control::lease::SubnetKey;
    use crate::fib;
    use std::net::Ipv4Addr;

    fn tables() -> Tables {
        let cfg =
            NetworkConfig::parse(br#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#).unwrap();
        let backend = Backend::new(
            &BackendConfig::new(BackendKind::Udp),
            Ipv4Addr::new(192, 168, 0, 1),
        );
        Tables::new(backend, false, cfg, fib::shared(), fib::shared6())
    }

    fn lease(subnet: &str, ip: [u8; 4], created: i64) -> RemoteLease {
        let key = SubnetKey::parse(&subnet.replace('/', "-")).unwrap();
        let attrs = crate::control::lease::LeaseAttrs::from_json(
            format!(r#"{{"PublicIP":"{}"}}"#, Ipv4Addr::from(ip)).as_bytes(),
        )
        .unwrap();
        RemoteLease {
            key: format!("/k/{}-{created}", key.to_key()),
            subnet: key.ipv4.unwrap(),
            ipv6_subnet: None,
            attrs,
            lease_id: 1,
            mod_revision: created,
            create_revision: created,
        }
    }

    fn own() -> Acquired {
        Acquired {
            subnet: "10.5.1.0/24".parse().unwrap(),
            ipv6_subnet: None,
            lease_id: 1,
            reservation: false,
        }
    }

    fn peer_ip(t: &Tables, dst: [u8; 4]) -> Option<Ipv4Addr> {
        t.fib
            .load()
            .lookup(Ipv4Addr::from(dst))
            .map(|p| p.public_ip)
    }

    #[test]
    fn the_oldest_lease_wins_a_subnet_conflict() {
        let mut t = tables();
        // Key order and arrival order favour the younger lease; creation order decides.
        t.reset(vec![lease("10.5.2.0/24", [192, 168, 0, 9], 20)]);
        t.put(lease("10.5.2.0/24", [192, 168, 0, 8], 10));
        t.publish(&own());
        assert_eq!(
            peer_ip(&t, [10, 5, 2, 7]),
            Some(Ipv4Addr::new(192, 168, 0, 8))
        );
        // The loser was warned about once, and only while it exists.
        assert_eq!(t.warned.len(), 1);
        t.remove(&lease("10.5.2.0/24", [192, 168, 0, 9], 20).key);
        assert!(t.warned.is_empty());
        t.publish(&own());
        assert_eq!(
            peer_ip(&t, [10, 5, 2, 7]),
            Some(Ipv4Addr::new(192, 168, 0, 8))
        );
    }

    #[test]
    fn leases_outside_the_network_are_not_kept() {
        let mut t = tables();
        t.reset(vec![
            lease("10.9.2.0/24", [192, 168, 0, 9], 1),
            lease("10.6.3.0/24", [192, 168, 0, 3], 2),
            lease("10.5.7.0/24", [192, 168, 0, 7], 6),
        ]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.warned.len(), 2);
        t.reset(vec![lease("10.5.7.0/24", [192, 168, 0, 7], 6)]);
        assert!(t.warned.is_empty(), "warnings of gone keys are pruned");
    }

    #[test]
    fn own_lease_is_no_peer_and_senders_are_checked() {
        let mut t = tables();
        t.reset(vec![
            lease("10.5.1.0/24", [192, 168, 0, 1], 1),
            lease("10.5.2.0/24", [192, 168, 0, 2], 2),
            lease("10.5.3.0/24", [192, 168, 0, 2], 3),
        ]);
        t.publish(&own());
        let fib = t.fib.load();
        assert_eq!(fib.peers().len(), 2);
        assert!(t.warned.is_empty(), "our own lease is not a conflict");
        let b = Ipv4Addr::new(192, 168, 0, 2);
        assert!(fib.sender_owns(b, Ipv4Addr::new(10, 5, 3, 1)));
        assert!(!fib.sender_owns(b, Ipv4Addr::new(10, 5, 1, 1)));
        assert!(!fib.sender_owns(Ipv4Addr::new(192, 168, 0, 3), Ipv4Addr::new(10, 5, 2, 1)));
    }
}
