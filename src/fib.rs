//! The forwarding table: an immutable snapshot mapping overlay subnets to peers, built by
//! the control plane on every lease event and swapped atomically under the data plane.
//!
//! Lookups are one hash probe: the destination is masked with the network's `SubnetLen` and
//! looked up in a map keyed by subnet address. The reverse map (underlay address → that
//! node's subnets) is what the receive path uses to accept only packets from current leases
//! whose inner source lies in the sender's subnet.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;

use crate::counters::PeerCounters;

/// A remote node as the data plane needs it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's overlay subnet.
    pub subnet: Ipv4Net,
    /// Its underlay (public) address.
    pub public_ip: Ipv4Addr,
    /// Its VTEP MAC (vxlan); zero for other backends.
    pub mac: [u8; 6],
    /// Traffic counters; carried over from the previous snapshot by [`Fib::adopt_counters`].
    pub counters: Arc<PeerCounters>,
}

impl Peer {
    pub fn new(subnet: Ipv4Net, public_ip: Ipv4Addr, mac: [u8; 6]) -> Self {
        Self {
            subnet,
            public_ip,
            mac,
            counters: Arc::default(),
        }
    }
}

/// Equality is identity on the wire: counters do not take part.
impl PartialEq for Peer {
    fn eq(&self, o: &Self) -> bool {
        self.subnet == o.subnet && self.public_ip == o.public_ip && self.mac == o.mac
    }
}
impl Eq for Peer {}

/// A multiplicative hasher for `u32` keys: the keys are already well spread subnet
/// addresses, and SipHash would cost more than the rest of a lookup.
#[derive(Default, Clone, Copy)]
pub struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, v: u32) {
        // Subnet keys have zero low bits and the table picks buckets by the low bits of the
        // hash: fold the well-mixed high half of the product down (2-6x faster lookups with
        // 1000 /24 peers, benches/fib.rs).
        let h = (v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

type U32Map<V> = HashMap<u32, V, BuildHasherDefault<U32Hasher>>;

/// One immutable forwarding-table snapshot.
#[derive(Debug, Default)]
pub struct Fib {
    /// This node's subnet; packets to it are local.
    pub local: Option<Ipv4Net>,
    /// The whole overlay network.
    pub network: Option<Ipv4Net>,
    mask: u32,
    peers: Vec<Peer>,
    by_subnet: U32Map<u32>,
    by_public: U32Map<Vec<u32>>,
}

impl Fib {
    /// Builds a snapshot. Peers whose subnet length differs from `subnet_len` cannot be found
    /// by one masked probe and are skipped (returned so the caller can log them); so are
    /// peers overlapping the local subnet.
    pub fn new(
        network: Ipv4Net,
        subnet_len: u8,
        local: Option<Ipv4Net>,
        peers: impl IntoIterator<Item = Peer>,
    ) -> (Fib, Vec<Peer>) {
        let mask = if subnet_len == 0 {
            0
        } else {
            u32::MAX << (32 - subnet_len as u32)
        };
        let mut fib = Fib {
            local,
            network: Some(network),
            mask,
            ..Fib::default()
        };
        let mut skipped = Vec::new();
        for p in peers {
            let key = u32::from(p.subnet.network());
            let conflicts_local =
                local.is_some_and(|l| l.contains(&p.subnet) || p.subnet.contains(&l));
            if p.subnet.prefix_len() != subnet_len
                || conflicts_local
                || fib.by_subnet.contains_key(&key)
            {
                skipped.push(p);
                continue;
            }
            let idx = fib.peers.len() as u32;
            fib.by_subnet.insert(key, idx);
            fib.by_public
                .entry(u32::from(p.public_ip))
                .or_default()
                .push(idx);
            fib.peers.push(p);
        }
        (fib, skipped)
    }

    /// The peer owning `dst`, if any: one masked hash probe.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let key = u32::from(dst) & self.mask;
        self.by_subnet.get(&key).map(|&i| &self.peers[i as usize])
    }

    /// Whether `dst` belongs to this node's own subnet.
    #[inline]
    pub fn is_local(&self, dst: Ipv4Addr) -> bool {
        self.local
            .is_some_and(|l| u32::from(dst) & self.mask == u32::from(l.network()))
    }

    /// Whether `public_ip` holds a current lease.
    #[inline]
    pub fn is_known_sender(&self, public_ip: Ipv4Addr) -> bool {
        self.by_public.contains_key(&u32::from(public_ip))
    }

    /// Whether an inner packet from `src` may arrive from the node at `public_ip`: the node
    /// holds a lease and `src` lies in one of its subnets.
    #[inline]
    pub fn sender_owns(&self, public_ip: Ipv4Addr, src: Ipv4Addr) -> bool {
        self.sender_peer(public_ip, src).is_some()
    }

    /// The peer entry of `public_ip` whose subnet holds `src`, if any.
    #[inline]
    pub fn sender_peer(&self, public_ip: Ipv4Addr, src: Ipv4Addr) -> Option<&Peer> {
        let key = u32::from(src) & self.mask;
        let idxs = self.by_public.get(&u32::from(public_ip))?;
        idxs.iter()
            .map(|&i| &self.peers[i as usize])
            .find(|p| u32::from(p.subnet.network()) == key)
    }

    /// Keeps the counters of peers that `old` already had (same subnet and address), so
    /// that a rebuild does not reset them.
    pub fn adopt_counters(&mut self, old: &Fib) {
        for p in &mut self.peers {
            if let Some(o) = old.lookup(p.subnet.network()) {
                if o.subnet == p.subnet && o.public_ip == p.public_ip {
                    p.counters = o.counters.clone();
                }
            }
        }
    }

    /// The peer entries, in insertion order.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }
}

/// The shared handle: the control plane stores, workers load.
pub type SharedFib = Arc<ArcSwap<Fib>>;

/// A shared handle holding an empty table.
pub fn shared() -> SharedFib {
    Arc::new(ArcSwap::from_pointee(Fib::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str, ip: [u8; 4]) -> Peer {
        Peer::new(
            s.parse().unwrap(),
            Ipv4Addr::from(ip),
            [2, 0, 0, 0, 0, ip[3]],
        )
    }

    fn table() -> Fib {
        let (fib, skipped) = Fib::new(
            "10.244.0.0/16".parse().unwrap(),
            24,
            Some("10.244.1.0/24".parse().unwrap()),
            vec![
                peer("10.244.2.0/24", [192, 168, 77, 2]),
                peer("10.244.3.0/24", [192, 168, 77, 3]),
                peer("10.244.4.0/24", [192, 168, 77, 3]),
                peer("10.244.5.0/25", [192, 168, 77, 5]),
                peer("10.244.1.0/24", [192, 168, 77, 9]),
            ],
        );
        assert_eq!(
            skipped.len(),
            2,
            "wrong length and the local subnet are skipped"
        );
        fib
    }

    #[test]
    fn lookup_masks_with_subnet_len() {
        let fib = table();
        assert_eq!(
            fib.lookup(Ipv4Addr::new(10, 244, 2, 77)).unwrap().public_ip,
            Ipv4Addr::new(192, 168, 77, 2)
        );
        assert_eq!(
            fib.lookup(Ipv4Addr::new(10, 244, 4, 255)).unwrap().subnet,
            "10.244.4.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert!(fib.lookup(Ipv4Addr::new(10, 244, 5, 1)).is_none());
        assert!(fib.lookup(Ipv4Addr::new(10, 244, 1, 1)).is_none());
        assert!(fib.lookup(Ipv4Addr::new(8, 8, 8, 8)).is_none());
        assert!(fib.is_local(Ipv4Addr::new(10, 244, 1, 200)));
        assert!(!fib.is_local(Ipv4Addr::new(10, 244, 2, 1)));
    }

    #[test]
    fn sender_checks() {
        let fib = table();
        let b = Ipv4Addr::new(192, 168, 77, 3);
        assert!(fib.is_known_sender(b));
        assert!(fib.sender_owns(b, Ipv4Addr::new(10, 244, 3, 9)));
        assert!(fib.sender_owns(b, Ipv4Addr::new(10, 244, 4, 9)));
        assert!(
            !fib.sender_owns(b, Ipv4Addr::new(10, 244, 2, 9)),
            "spoofed: that subnet is another node's"
        );
        assert!(!fib.is_known_sender(Ipv4Addr::new(192, 168, 77, 9)));
        assert!(!fib.sender_owns(
            Ipv4Addr::new(192, 168, 77, 99),
            Ipv4Addr::new(10, 244, 3, 9)
        ));
    }

    #[test]
    fn counters_survive_rebuilds() {
        let old = table();
        let p = old.lookup(Ipv4Addr::new(10, 244, 2, 1)).unwrap();
        p.counters.tx.add(3, 300);
        let (mut new, _) = Fib::new(
            "10.244.0.0/16".parse().unwrap(),
            24,
            Some("10.244.1.0/24".parse().unwrap()),
            vec![
                peer("10.244.2.0/24", [192, 168, 77, 2]),
                peer("10.244.3.0/24", [192, 168, 77, 33]),
            ],
        );
        new.adopt_counters(&old);
        let kept = new.lookup(Ipv4Addr::new(10, 244, 2, 1)).unwrap();
        assert_eq!(
            kept.counters
                .tx
                .packets
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        let moved = new.lookup(Ipv4Addr::new(10, 244, 3, 1)).unwrap();
        assert_eq!(
            moved
                .counters
                .tx
                .packets
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "a subnet that moved to another node starts afresh"
        );
        assert!(new
            .sender_peer(
                Ipv4Addr::new(192, 168, 77, 33),
                Ipv4Addr::new(10, 244, 3, 7)
            )
            .is_some());
    }

    #[test]
    fn swap_is_visible_to_readers() {
        let shared = shared();
        assert!(shared.load().lookup(Ipv4Addr::new(10, 244, 2, 1)).is_none());
        let (fib, _) = Fib::new(
            "10.244.0.0/16".parse().unwrap(),
            24,
            None,
            vec![peer("10.244.2.0/24", [1, 2, 3, 4])],
        );
        shared.store(Arc::new(fib));
        assert!(shared.load().lookup(Ipv4Addr::new(10, 244, 2, 1)).is_some());
    }
}
