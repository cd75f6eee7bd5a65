//! The IPv6 forwarding table: an immutable snapshot mapping the overlay's IPv6 subnets to
//! peers, built by the control plane from the same lease list and watch as the IPv4 one
//! ([`crate::fib`]) and swapped atomically under the data plane.
//!
//! A lookup is one hash probe: the destination masked with the network's `IPv6SubnetLen`,
//! as a `u128`. Each entry names the underlay address its packets go to ([`Peer6::underlay`],
//! chosen by the control plane: the peer's `PublicIPv6` over an IPv6 underlay, or its
//! `PublicIP`). The reverse map — each of a node's underlay addresses (IPv4 and IPv6) →
//! its entries — is what the receive path uses to accept an inner IPv6 packet only from a
//! node whose IPv6 subnet holds the inner source, whichever underlay family carried it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::Ipv6Net;

use crate::counters::PeerCounters;

/// A remote node's IPv6 side, as the data plane needs it.
#[derive(Debug, Clone)]
pub struct Peer6 {
    /// The peer's IPv6 overlay subnet.
    pub subnet: Ipv6Net,
    /// Its `PublicIP` (0.0.0.0 for an IPv6-only node).
    pub public_ip: Ipv4Addr,
    /// Its `PublicIPv6`, when its lease has one.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where its IPv6 packets are sent: one of the two addresses above.
    pub underlay: IpAddr,
    /// The VTEP MAC (vxlan; zero otherwise) of the peer's device on that underlay:
    /// `BackendData.VtepMAC` over IPv4, `BackendV6Data.VtepMAC` over IPv6.
    pub mac: [u8; 6],
    /// Traffic counters; carried over from the previous snapshot by [`Fib6::adopt_counters`].
    pub counters: Arc<PeerCounters>,
}

impl Peer6 {
    pub fn new(
        subnet: Ipv6Net,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
        underlay: IpAddr,
        mac: [u8; 6],
    ) -> Self {
        Self {
            subnet,
            public_ip,
            public_ipv6,
            underlay,
            mac,
            counters: Arc::default(),
        }
    }

    /// The node's underlay addresses a datagram from it may come from.
    fn senders(&self) -> impl Iterator<Item = IpAddr> {
        let v4 = (!self.public_ip.is_unspecified()).then_some(IpAddr::V4(self.public_ip));
        v4.into_iter()
            .chain(self.public_ipv6.map(IpAddr::V6))
            .chain(std::iter::once(self.underlay))
    }
}

/// Equality is identity on the wire: counters do not take part.
impl PartialEq for Peer6 {
    fn eq(&self, o: &Self) -> bool {
        self.subnet == o.subnet
            && self.public_ip == o.public_ip
            && self.public_ipv6 == o.public_ipv6
            && self.underlay == o.underlay
            && self.mac == o.mac
    }
}
impl Eq for Peer6 {}

/// A multiplicative hasher for `u128` keys (masked subnets, underlay addresses): one
/// multiply of the folded halves, the well-mixed high bits folded down, as
/// [`crate::fib::U32Hasher`] does for IPv4.
#[derive(Default, Clone, Copy)]
pub struct U128Hasher(u64);

impl Hasher for U128Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u128(&mut self, v: u128) {
        let folded = (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
        let h = (folded ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

type U128Map<V> = HashMap<u128, V, BuildHasherDefault<U128Hasher>>;

/// An underlay address as a `u128` key: IPv6 as it is, IPv4 as its mapped form.
#[inline]
fn addr_key(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// One immutable IPv6 forwarding-table snapshot. Empty (every lookup misses) when the
/// network has no IPv6.
#[derive(Debug, Default)]
pub struct Fib6 {
    /// This node's IPv6 subnet; packets to it are local.
    pub local: Option<Ipv6Net>,
    /// The whole IPv6 overlay network.
    pub network: Option<Ipv6Net>,
    mask: u128,
    peers: Vec<Peer6>,
    by_subnet: U128Map<u32>,
    by_sender: U128Map<Vec<u32>>,
}

impl Fib6 {
    /// Builds a snapshot. Peers whose subnet length differs from `subnet_len`, that overlap
    /// the local subnet or an earlier peer, or whose subnet lies outside `network`, are
    /// skipped and returned (so the caller can log them).
    pub fn new(
        network: Ipv6Net,
        subnet_len: u8,
        local: Option<Ipv6Net>,
        peers: impl IntoIterator<Item = Peer6>,
    ) -> (Fib6, Vec<Peer6>) {
        let mask = if subnet_len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(subnet_len.min(128)))
        };
        let mut fib = Fib6 {
            local,
            network: Some(network),
            mask,
            ..Fib6::default()
        };
        let mut skipped = Vec::new();
        for p in peers {
            let key = u128::from(p.subnet.network());
            let conflicts_local =
                local.is_some_and(|l| l.contains(&p.subnet) || p.subnet.contains(&l));
            if p.subnet.prefix_len() != subnet_len
                || !network.contains(&p.subnet)
                || conflicts_local
                || fib.by_subnet.contains_key(&key)
            {
                skipped.push(p);
                continue;
            }
            let idx = fib.peers.len() as u32;
            fib.by_subnet.insert(key, idx);
            for s in p.senders() {
                let list = fib.by_sender.entry(addr_key(s)).or_default();
                if !list.contains(&idx) {
                    list.push(idx);
                }
            }
            fib.peers.push(p);
        }
        (fib, skipped)
    }

    /// The peer owning `dst`, if any: one masked hash probe.
    #[inline]
    pub fn lookup(&self, dst: Ipv6Addr) -> Option<&Peer6> {
        let key = u128::from(dst) & self.mask;
        self.by_subnet.get(&key).map(|&i| &self.peers[i as usize])
    }

    /// Whether `dst` belongs to this node's own IPv6 subnet.
    #[inline]
    pub fn is_local(&self, dst: Ipv6Addr) -> bool {
        self.local
            .is_some_and(|l| u128::from(dst) & self.mask == u128::from(l.network()))
    }

    /// Whether the underlay address `from` is one of a current lease holder's.
    #[inline]
    pub fn is_known_sender(&self, from: IpAddr) -> bool {
        self.by_sender.contains_key(&addr_key(from))
    }

    /// The peer entry of the node at underlay address `from` whose IPv6 subnet holds
    /// `src`, if any: an inner IPv6 packet from anyone else is spoofed.
    #[inline]
    pub fn sender_peer(&self, from: IpAddr, src: Ipv6Addr) -> Option<&Peer6> {
        let key = u128::from(src) & self.mask;
        let idxs = self.by_sender.get(&addr_key(from))?;
        idxs.iter()
            .map(|&i| &self.peers[i as usize])
            .find(|p| u128::from(p.subnet.network()) == key)
    }

    /// Keeps the counters of peers that `old` already had (same subnet and node), so that a
    /// rebuild does not reset them.
    pub fn adopt_counters(&mut self, old: &Fib6) {
        for p in &mut self.peers {
            if let Some(o) = old.lookup(p.subnet.network()) {
                if o.subnet == p.subnet
                    && o.public_ip == p.public_ip
                    && o.public_ipv6 == p.public_ipv6
                {
                    p.counters = o.counters.clone();
                }
            }
        }
    }

    /// The peer entries, in insertion order.
    pub fn peers(&self) -> &[Peer6] {
        &self.peers
    }
}

/// The shared handle: the control plane stores, workers load.
pub type SharedFib6 = Arc<ArcSwap<Fib6>>;

/// A shared handle holding an empty table.
pub fn shared() -> SharedFib6 {
    Arc::new(ArcSwap::from_pointee(Fib6::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn peer(sn: &str, ip: [u8; 4], ip6: Option<&str>) -> Peer6 {
        let public_ip = Ipv4Addr::from(ip);
        let public_ipv6 = ip6.map(v6);
        let underlay = public_ipv6.map_or(IpAddr::V4(public_ip), IpAddr::V6);
        Peer6::new(
            sn.parse().unwrap(),
            public_ip,
            public_ipv6,
            underlay,
            [2, 0, 0, 0, 0, ip[3]],
        )
    }

    fn table() -> Fib6 {
        let (fib, skipped) = Fib6::new(
            "fd00:10::/56".parse().unwrap(),
            64,
            Some("fd00:10:0:1::/64".parse().unwrap()),
            vec![
                peer("fd00:10:0:2::/64", [192, 168, 77, 2], Some("fd00:77::2")),
                peer("fd00:10:0:3::/64", [192, 168, 77, 3], None),
                peer("fd00:10:0:4::/64", [0, 0, 0, 0], Some("fd00:77::4")),
                peer("fd00:10:0:5::/80", [192, 168, 77, 5], None),
                peer("fd00:10:0:1::/64", [192, 168, 77, 9], None),
                peer("fd00:99::/64", [192, 168, 77, 10], None),
                peer("fd00:10:0:2::/64", [192, 168, 77, 11], None),
            ],
        );
        assert_eq!(
            skipped.len(),
            4,
            "wrong length, local, outside the network, duplicate"
        );
        fib
    }

    #[test]
    fn lookup_masks_with_subnet_len() {
        let fib = table();
        let p = fib.lookup(v6("fd00:10:0:2::77")).unwrap();
        assert_eq!(p.underlay, IpAddr::V6(v6("fd00:77::2")));
        assert_eq!(
            fib.lookup(v6("fd00:10:0:3:ffff::1")).unwrap().underlay,
            IpAddr::V4(Ipv4Addr::new(192, 168, 77, 3))
        );
        assert!(fib.lookup(v6("fd00:10:0:5::1")).is_none());
        assert!(fib.lookup(v6("fd00:10:0:1::1")).is_none(), "local");
        assert!(fib.lookup(v6("2001:db8::1")).is_none());
        assert!(fib.is_local(v6("fd00:10:0:1:abcd::1")));
        assert!(!fib.is_local(v6("fd00:10:0:2::1")));
        let empty = Fib6::default();
        assert!(empty.lookup(v6("::")).is_none(), "an empty table is empty");
        assert!(!empty.is_local(v6("::")));
    }

    #[test]
    fn senders_by_either_underlay_address() {
        let fib = table();
        let b4 = IpAddr::V4(Ipv4Addr::new(192, 168, 77, 2));
        let b6 = IpAddr::V6(v6("fd00:77::2"));
        for b in [b4, b6] {
            assert!(fib.is_known_sender(b));
            assert!(fib.sender_peer(b, v6("fd00:10:0:2::9")).is_some());
            assert!(
                fib.sender_peer(b, v6("fd00:10:0:3::9")).is_none(),
                "spoofed: another node's subnet"
            );
        }
        // An IPv6-only node is known by its IPv6 address only; 0.0.0.0 is nobody's.
        assert!(fib.is_known_sender(IpAddr::V6(v6("fd00:77::4"))));
        assert!(!fib.is_known_sender(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        // The IPv4-mapped form of an IPv4 sender is not confused with a native IPv6 one.
        assert!(!fib.is_known_sender(IpAddr::V6(v6("::ffff:192.168.77.99"))));
        assert!(!fib.is_known_sender(IpAddr::V4(Ipv4Addr::new(192, 168, 77, 9))));
    }

    #[test]
    fn counters_survive_rebuilds() {
        let old = table();
        old.lookup(v6("fd00:10:0:2::1"))
            .unwrap()
            .counters
            .tx
            .add(5, 500);
        let (mut new, _) = Fib6::new(
            "fd00:10::/56".parse().unwrap(),
            64,
            Some("fd00:10:0:1::/64".parse().unwrap()),
            vec![
                peer("fd00:10:0:2::/64", [192, 168, 77, 2], Some("fd00:77::2")),
                peer("fd00:10:0:3::/64", [192, 168, 77, 33], None),
            ],
        );
        new.adopt_counters(&old);
        let load = |p: &Peer6| {
            p.counters
                .tx
                .packets
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(load(new.lookup(v6("fd00:10:0:2::1")).unwrap()), 5);
        assert_eq!(load(new.lookup(v6("fd00:10:0:3::1")).unwrap()), 0);
    }

    #[test]
    fn swap_is_visible_to_readers() {
        let s = shared();
        assert!(s.load().lookup(v6("fd00:10:0:2::1")).is_none());
        s.store(Arc::new(table()));
        assert!(s.load().lookup(v6("fd00:10:0:2::1")).is_some());
    }
}
