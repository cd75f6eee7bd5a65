//! The forwarding tables: immutable snapshots mapping overlay subnets to peers, built by
//! the control plane on every lease event and swapped atomically under the data plane. One
//! table type, [`Table`], serves both families: [`Fib`] holds the IPv4 subnets, [`Fib6`] the
//! IPv6 ones (built from the same lease list and watch).
//!
//! A lookup is one hash probe: the destination masked with the network's `SubnetLen` (or
//! `IPv6SubnetLen`) and looked up in a map keyed by subnet address. The reverse map — each
//! of a node's underlay addresses, IPv4 or IPv6 → its entries — is what the receive path
//! uses to accept only packets from current leases whose inner source lies in the sender's
//! subnet of that family, whichever underlay family carried them. An IPv6 entry names the
//! underlay address its packets go to ([`Peer6::underlay`], chosen by the control plane:
//! the peer's `PublicIPv6` over an IPv6 underlay, or its `PublicIP`).

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::BitAnd;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::{Ipv4Net, Ipv6Net};

use crate::counters::PeerCounters;

/// An address family as the table needs it: addresses as integer keys, and prefixes.
pub trait Family {
    type Addr: Copy + Debug;
    type Net: Copy + PartialEq + Debug;
    type Key: Copy + Eq + Hash + Default + Debug + BitAnd<Output = Self::Key>;
    fn key(a: Self::Addr) -> Self::Key;
    /// The mask of a prefix `len` bits long.
    fn mask(len: u8) -> Self::Key;
    fn network(n: &Self::Net) -> Self::Addr;
    fn prefix_len(n: &Self::Net) -> u8;
    fn contains(outer: &Self::Net, inner: &Self::Net) -> bool;
}

/// IPv4 subnets.
#[derive(Debug)]
pub enum V4 {}

impl Family for V4 {
    type Addr = Ipv4Addr;
    type Net = Ipv4Net;
    type Key = u32;
    #[inline]
    fn key(a: Ipv4Addr) -> u32 {
        u32::from(a)
    }
    fn mask(len: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0)
    }
    fn network(n: &Ipv4Net) -> Ipv4Addr {
        n.network()
    }
    fn prefix_len(n: &Ipv4Net) -> u8 {
        n.prefix_len()
    }
    fn contains(outer: &Ipv4Net, inner: &Ipv4Net) -> bool {
        outer.contains(inner)
    }
}

/// IPv6 subnets.
#[derive(Debug)]
pub enum V6 {}

impl Family for V6 {
    type Addr = Ipv6Addr;
    type Net = Ipv6Net;
    type Key = u128;
    #[inline]
    fn key(a: Ipv6Addr) -> u128 {
        u128::from(a)
    }
    fn mask(len: u8) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(len.min(128)))
            .unwrap_or(0)
    }
    fn network(n: &Ipv6Net) -> Ipv6Addr {
        n.network()
    }
    fn prefix_len(n: &Ipv6Net) -> u8 {
        n.prefix_len()
    }
    fn contains(outer: &Ipv6Net, inner: &Ipv6Net) -> bool {
        outer.contains(inner)
    }
}

/// What a table entry tells the table about the remote node it stands for.
pub trait Entry {
    type F: Family;
    /// The node's overlay subnet of this family.
    fn subnet(&self) -> <Self::F as Family>::Net;
    /// The underlay addresses a datagram from the node may come from.
    fn senders(&self) -> impl Iterator<Item = IpAddr>;
    /// Whether `o` stands for the same subnet on the same node (its counters carry over).
    fn same_node(&self, o: &Self) -> bool;
    fn counters(&self) -> &Arc<PeerCounters>;
    fn counters_mut(&mut self) -> &mut Arc<PeerCounters>;
}

/// A remote node's IPv4 side, as the data plane needs it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's overlay subnet.
    pub subnet: Ipv4Net,
    /// Its underlay (public) address.
    pub public_ip: Ipv4Addr,
    /// Its VTEP MAC (vxlan); zero for other backends.
    pub mac: [u8; 6],
    /// Traffic counters; carried over from the previous snapshot by [`Table::adopt_counters`].
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

impl Entry for Peer {
    type F = V4;
    fn subnet(&self) -> Ipv4Net {
        self.subnet
    }
    fn senders(&self) -> impl Iterator<Item = IpAddr> {
        std::iter::once(IpAddr::V4(self.public_ip))
    }
    fn same_node(&self, o: &Self) -> bool {
        self.subnet == o.subnet && self.public_ip == o.public_ip
    }
    fn counters(&self) -> &Arc<PeerCounters> {
        &self.counters
    }
    fn counters_mut(&mut self) -> &mut Arc<PeerCounters> {
        &mut self.counters
    }
}

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
    /// Traffic counters; carried over from the previous snapshot by [`Table::adopt_counters`].
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

impl Entry for Peer6 {
    type F = V6;
    fn subnet(&self) -> Ipv6Net {
        self.subnet
    }
    fn senders(&self) -> impl Iterator<Item = IpAddr> {
        let v4 = (!self.public_ip.is_unspecified()).then_some(IpAddr::V4(self.public_ip));
        v4.into_iter()
            .chain(self.public_ipv6.map(IpAddr::V6))
            .chain(std::iter::once(self.underlay))
    }
    fn same_node(&self, o: &Self) -> bool {
        self.subnet == o.subnet
            && self.public_ip == o.public_ip
            && self.public_ipv6 == o.public_ipv6
    }
    fn counters(&self) -> &Arc<PeerCounters> {
        &self.counters
    }
    fn counters_mut(&mut self) -> &mut Arc<PeerCounters> {
        &mut self.counters
    }
}

/// A multiplicative hasher for address keys: the keys are already well spread addresses,
/// and SipHash would cost more than the rest of a lookup.
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
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
    fn write_u128(&mut self, v: u128) {
        // The halves folded into one word first, then as for `u32`.
        let folded = (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
        let h = (folded ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;
type Net<P> = <<P as Entry>::F as Family>::Net;
type Addr<P> = <<P as Entry>::F as Family>::Addr;
type Key<P> = <<P as Entry>::F as Family>::Key;

/// An underlay address as a `u128` key: IPv6 as it is, IPv4 as its mapped form.
#[inline]
fn sender_key(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// One immutable forwarding-table snapshot of one family. Empty (every lookup misses) when
/// the network has no subnets of that family.
#[derive(Debug)]
pub struct Table<P: Entry> {
    /// This node's subnet; packets to it are local.
    pub local: Option<Net<P>>,
    /// The whole overlay network of this family.
    pub network: Option<Net<P>>,
    subnet_len: u8,
    mask: Key<P>,
    peers: Vec<P>,
    by_subnet: AddrMap<Key<P>, u32>,
    /// Every underlay address of every peer (the known senders).
    by_sender: AddrMap<u128, ()>,
}

/// The IPv4 table.
pub type Fib = Table<Peer>;
/// The IPv6 table.
pub type Fib6 = Table<Peer6>;

impl<P: Entry> Default for Table<P> {
    fn default() -> Self {
        Table {
            local: None,
            network: None,
            subnet_len: 0,
            mask: Key::<P>::default(),
            peers: Vec::new(),
            by_subnet: AddrMap::default(),
            by_sender: AddrMap::default(),
        }
    }
}

impl<P: Entry> Table<P> {
    /// Builds a snapshot. Peers whose subnet length differs from `subnet_len` (they cannot
    /// be found by one masked probe), that overlap the local subnet or an earlier peer, or
    /// whose subnet lies outside `network`, are skipped and returned (so the caller can log
    /// them).
    pub fn new(
        network: Net<P>,
        subnet_len: u8,
        local: Option<Net<P>>,
        peers: impl IntoIterator<Item = P>,
    ) -> (Self, Vec<P>) {
        let mut fib = Self::empty(network, subnet_len, local);
        let skipped = peers
            .into_iter()
            .filter_map(|p| fib.insert(p).err())
            .collect();
        (fib, skipped)
    }

    /// A snapshot under construction with no peers yet.
    pub fn empty(network: Net<P>, subnet_len: u8, local: Option<Net<P>>) -> Self {
        Table {
            local,
            network: Some(network),
            subnet_len,
            mask: P::F::mask(subnet_len),
            ..Table::default()
        }
    }

    /// Adds a peer while the snapshot is being built (before it is shared); gives it back
    /// when [`Self::new`] would skip it. O(1): one probe per subnet and per sender address.
    pub fn insert(&mut self, p: P) -> Result<(), P> {
        let Some(network) = self.network else {
            return Err(p);
        };
        let subnet = p.subnet();
        let key = P::F::key(P::F::network(&subnet));
        let conflicts_local = self
            .local
            .is_some_and(|l| P::F::contains(&l, &subnet) || P::F::contains(&subnet, &l));
        if P::F::prefix_len(&subnet) != self.subnet_len
            || !P::F::contains(&network, &subnet)
            || conflicts_local
            || self.by_subnet.contains_key(&key)
        {
            return Err(p);
        }
        self.by_subnet.insert(key, self.peers.len() as u32);
        self.by_sender
            .extend(p.senders().map(|s| (sender_key(s), ())));
        self.peers.push(p);
        Ok(())
    }

    /// The peer owning `dst`, if any: one masked hash probe.
    #[inline]
    pub fn lookup(&self, dst: Addr<P>) -> Option<&P> {
        let key = P::F::key(dst) & self.mask;
        self.by_subnet.get(&key).map(|&i| &self.peers[i as usize])
    }

    /// The position in [`Self::peers`] of the peer owning `dst`, if any.
    pub fn lookup_index(&self, dst: Addr<P>) -> Option<usize> {
        let key = P::F::key(dst) & self.mask;
        self.by_subnet.get(&key).map(|&i| i as usize)
    }

    /// Whether `dst` belongs to this node's own subnet.
    #[inline]
    pub fn is_local(&self, dst: Addr<P>) -> bool {
        self.local
            .is_some_and(|l| P::F::key(dst) & self.mask == P::F::key(P::F::network(&l)))
    }

    /// Whether the underlay address `from` is one of a current lease holder's.
    #[inline]
    pub fn is_known_sender(&self, from: impl Into<IpAddr>) -> bool {
        self.by_sender.contains_key(&sender_key(from.into()))
    }

    /// Whether an inner packet from `src` may arrive from the node at `from`: the node
    /// holds a lease and `src` lies in one of its subnets of this family.
    #[inline]
    pub fn sender_owns(&self, from: impl Into<IpAddr>, src: Addr<P>) -> bool {
        self.sender_peer(from, src).is_some()
    }

    /// The peer entry of the node at underlay address `from` whose subnet holds `src`, if
    /// any: an inner packet from anyone else is spoofed. One probe for `src`'s subnet, then
    /// a comparison with that peer's (at most three) underlay addresses.
    #[inline]
    pub fn sender_peer(&self, from: impl Into<IpAddr>, src: Addr<P>) -> Option<&P> {
        let from = sender_key(from.into());
        self.lookup(src)
            .filter(|p| p.senders().any(|s| sender_key(s) == from))
    }

    /// Keeps the counters of peers that `old` already had (same subnet and node), so that a
    /// rebuild does not reset them.
    pub fn adopt_counters(&mut self, old: &Self) {
        for p in &mut self.peers {
            if let Some(o) = old.lookup(P::F::network(&p.subnet())) {
                if o.same_node(p) {
                    *p.counters_mut() = o.counters().clone();
                }
            }
        }
    }

    /// The peer entries, in insertion order.
    pub fn peers(&self) -> &[P] {
        &self.peers
    }
}

/// The shared handle: the control plane stores, workers load.
pub type SharedFib = Arc<ArcSwap<Fib>>;
/// The same for IPv6.
pub type SharedFib6 = Arc<ArcSwap<Fib6>>;

/// A shared handle holding an empty IPv4 table.
pub fn shared() -> SharedFib {
    Arc::new(ArcSwap::from_pointee(Fib::default()))
}

/// A shared handle holding an empty IPv6 table.
pub fn shared6() -> SharedFib6 {
    Arc::new(ArcSwap::from_pointee(Fib6::default()))
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

#[cfg(test)]
mod tests6 {
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
        let s = shared6();
        assert!(s.load().lookup(v6("fd00:10:0:2::1")).is_none());
        s.store(Arc::new(table()));
        assert!(s.load().lookup(v6("fd00:10:0:2::1")).is_some());
    }
}
