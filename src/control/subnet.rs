//! Which subnets this node should hold, decided from the leases already in etcd: flannel's
//! order (own lease, previous subnet, random free one) as a pure function, for IPv4, IPv6
//! or both (one key holds both subnets of a dual-stack node).
//!
//! No etcd and no clock: the caller lists `<prefix>/subnets`, calls [`stale_own`] and
//! [`choose`], and then creates or refreshes the key. Randomness comes from the caller's rng,
//! so tests are deterministic.
//!
//! flannel's `tryAcquireLease`/`allocateSubnet` (pkg/subnet/etcd/local_manager.go) with
//! these deliberate differences, each marked **better** in docs/wire.md: reservations are
//! never deleted; the previous subnet must be free of overlapping keys (flannel only checks
//! the IPv4 key for equality) and is kept per family (flannel drops both when the IPv6 one is
//! missing, e.g. on the first dual-stack start); an IPv6-only node is identified by its
//! `PublicIPv6` (flannel compares `PublicIP`, which is 0.0.0.0 on every IPv6-only node).

use super::config::NetworkConfig;
use super::family::{span, Family, Range};
use super::lease::SubnetKey;
use ipnet::Ipv4Net;
use rand::Rng;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How many free subnets (per family) flannel collects before picking one at random.
pub const CANDIDATES: usize = 100;

/// A key found under `<prefix>/subnets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExistingLease {
    /// The subnets the key names.
    pub key: SubnetKey,
    /// Its holder's `PublicIP` (0.0.0.0 for an IPv6-only holder).
    pub public_ip: Ipv4Addr,
    /// Its holder's `PublicIPv6`.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The key has no etcd lease attached: an operator's reservation, which never expires.
    pub reservation: bool,
}

/// This node's identity, as flannel matches leases to nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `PublicIP`, when IPv4 is enabled: flannel's identity (`findLeaseByIP`).
    pub public_ip: Option<Ipv4Addr>,
    /// `PublicIPv6`: the identity of an IPv6-only node.
    pub public_ipv6: Option<Ipv6Addr>,
}

impl Identity {
    /// An IPv4 (or dual-stack) node, identified by its `PublicIP`.
    pub fn v4(public_ip: Ipv4Addr) -> Self {
        Identity {
            public_ip: Some(public_ip),
            public_ipv6: None,
        }
    }

    /// Whether `l` is held by this node: same `PublicIP`, or for an IPv6-only node (no
    /// `PublicIP`) the same `PublicIPv6`.
    pub fn holds(&self, l: &ExistingLease) -> bool {
        match (self.public_ip, self.public_ipv6) {
            (Some(ip), _) => l.public_ip == ip,
            (None, Some(ip6)) => l.public_ipv6 == Some(ip6),
            (None, None) => false,
        }
    }
}

/// What [`choose`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Choice {
    /// A lease or reservation already held by this node and fitting the config: refresh it.
    Reuse(SubnetKey),
    /// Free subnets: create their key (it may be lost to a racing node; then choose again).
    New(SubnetKey),
}

impl Choice {
    /// The chosen subnets.
    pub fn key(self) -> SubnetKey {
        match self {
            Choice::Reuse(k) | Choice::New(k) => k,
        }
    }

    /// The chosen IPv4 subnet (`None` for an IPv6-only config).
    pub fn subnet(self) -> Option<Ipv4Net> {
        self.key().ipv4
    }
}

/// Every subnet of one family between its min and max is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free /{subnet_len} subnet between {min_field} {min} and {max_field} {max}: all {total} are taken by leases or reservations; widen {network_field} or the range, or remove stale keys")]
pub struct NoFreeSubnet {
    /// `Network` or `IPv6Network`.
    pub network_field: &'static str,
    /// `SubnetMin` or `IPv6SubnetMin`.
    pub min_field: &'static str,
    /// `SubnetMax` or `IPv6SubnetMax`.
    pub max_field: &'static str,
    /// `SubnetLen` or `IPv6SubnetLen`.
    pub subnet_len: u8,
    /// The range's first subnet.
    pub min: IpAddr,
    /// The range's last subnet.
    pub max: IpAddr,
    /// How many subnets the range holds.
    pub total: u128,
}

/// Whether `key` is what this config hands out: each enabled family's subnet present and
/// inside its range, no subnet of a disabled family (flannel's `isSubnetConfigCompat` and
/// `isIPv6SubnetConfigCompat`).
pub fn fits(cfg: &NetworkConfig, key: &SubnetKey) -> bool {
    let v4 = if cfg.enable_ipv4 {
        key.ipv4.is_some_and(|s| cfg.contains(s))
    } else {
        key.ipv4.is_none()
    };
    let v6 = match &cfg.ipv6 {
        Some(c) => key.ipv6.is_some_and(|s| c.contains(s)),
        None => key.ipv6.is_none(),
    };
    v4 && v6
}

fn overlaps((a0, a1): (u128, u128), (b0, b1): (u128, u128)) -> bool {
    a0 <= b1 && b0 <= a1
}

/// Our own leases (not reservations) that no longer fit the config: delete them before
/// choosing. Reservations are the operator's and are never deleted.
pub fn stale_own(cfg: &NetworkConfig, existing: &[ExistingLease], me: &Identity) -> Vec<SubnetKey> {
    existing
        .iter()
        .filter(|l| me.holds(l) && !l.reservation && !fits(cfg, &l.key))
        .map(|l| l.key)
        .collect()
}

/// Choose this node's subnets, in flannel's order:
/// 1. a lease or reservation held by this node (see [`Identity::holds`]) which fits the
///    config (a reservation is preferred over a lease when both exist);
/// 2. for each enabled family, the `previous` subnet (from subnet.env) if it fits the config
///    and overlaps no existing key's subnet of that family;
/// 3. otherwise one at random among the first [`CANDIDATES`] free subnets from the family's
///    min up, a subnet being free when it overlaps no existing key's subnet of that family, of
///    any length (leases of any holder and reservations alike; stale keys still in `existing`
///    count as taken). IPv4 is drawn first, then IPv6, as flannel's `allocateSubnet` does.
pub fn choose(
    cfg: &NetworkConfig,
    existing: &[ExistingLease],
    me: &Identity,
    previous: SubnetKey,
    rng: &mut impl Rng,
) -> Result<Choice, NoFreeSubnet> {
    let own = |reservation: bool| {
        existing
            .iter()
            .find(|l| me.holds(l) && l.reservation == reservation && fits(cfg, &l.key))
    };
    if let Some(l) = own(true).or_else(|| own(false)) {
        return Ok(Choice::Reuse(l.key));
    }

    let ipv4 = choose_in(cfg.range4(), existing, previous, rng)?;
    let ipv6 = choose_in(
        cfg.ipv6.as_ref().map(|c| c.range()),
        existing,
        previous,
        rng,
    )?;
    Ok(Choice::New(SubnetKey { ipv4, ipv6 }))
}

/// Steps 2 and 3 of [`choose`] for one family (`None` when it is disabled): the previous
/// subnet if it is in `range` and free, else a random one of the first [`CANDIDATES`] free.
fn choose_in<F: Family>(
    range: Option<Range<F>>,
    existing: &[ExistingLease],
    previous: SubnetKey,
    rng: &mut impl Rng,
) -> Result<Option<F::Net>, NoFreeSubnet> {
    let Some(r) = range else { return Ok(None) };
    let prev = F::of_key(&previous).filter(|p| {
        r.contains(*p)
            && !existing
                .iter()
                .filter_map(|l| F::of_key(&l.key))
                .any(|s| overlaps(span::<F>(s), span::<F>(*p)))
    });
    if prev.is_some() {
        return Ok(prev);
    }
    let free = free_subnets(&r, existing, CANDIDATES);
    if free.is_empty() {
        let f = F::FIELDS;
        return Err(NoFreeSubnet {
            network_field: f.network,
            min_field: f.subnet_min,
            max_field: f.subnet_max,
            subnet_len: r.subnet_len,
            min: F::ip(r.min),
            max: F::ip(r.max),
            total: r.count(),
        });
    }
    Ok(Some(free[rng.random_range(0..free.len())]))
}

/// The first `limit` subnets of `r` from its min to its max overlapping no existing key's
/// subnet of that family, in address order (flannel's `OuterLoop`/`OuterLoopv6`). Runs in
/// O(k log k + limit) for k keys, however large the range.
fn free_subnets<F: Family>(r: &Range<F>, existing: &[ExistingLease], limit: usize) -> Vec<F::Net> {
    let taken = existing
        .iter()
        .filter_map(|l| F::of_key(&l.key))
        .map(span::<F>)
        .collect();
    first_free(
        F::to_u128(r.min),
        F::to_u128(r.max),
        r.host_bits(),
        taken,
        limit,
    )
    .into_iter()
    // Candidates lie between min and max, so they fit the family's width.
    .map(|a| F::net(F::from_u128(a), r.subnet_len))
    .collect()
}

/// The first `limit` aligned blocks of `2^host_bits` addresses from `min` (aligned) to `max`
/// that overlap none of the inclusive `taken` spans. One sorted sweep: O(k log k + limit).
fn first_free(
    min: u128,
    max: u128,
    host_bits: u32,
    mut taken: Vec<(u128, u128)>,
    limit: usize,
) -> Vec<u128> {
    taken.sort_unstable();
    // host_bits <= 125 (IPv6SubnetLen >= 3), so the block size fits.
    let last_off = (1u128 << host_bits) - 1;
    let align_up = |n: u128| -> Option<u128> {
        if n & last_off == 0 {
            Some(n)
        } else {
            (n | last_off).checked_add(1)
        }
    };
    let mut out = Vec::new();
    let mut a = min;
    let mut j = 0;
    while a <= max && out.len() < limit {
        // Skip keys that end before this candidate.
        while j < taken.len() && taken[j].1 < a {
            j += 1;
        }
        // a <= max, an aligned block start, so the block's last address does not overflow.
        let a_last = a + last_off;
        let next = match taken.get(j) {
            Some(&(start, end)) if start <= a_last => {
                // Overlap: jump to the first block boundary after the key's end. Later keys
                // sorted by start have start >= this one's, so the next round rechecks them.
                end.checked_add(1).and_then(align_up)
            }
            _ => {
                out.push(a);
                a_last.checked_add(1)
            }
        };
        match next {
            Some(n) => a = n,
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Ipv6Config;
    use crate::fib::{V4, V6};
    use ipnet::Ipv6Net;

    fn free4(c: &NetworkConfig, ex: &[ExistingLease], limit: usize) -> Vec<Ipv4Net> {
        c.range4()
            .map_or(Vec::new(), |r| free_subnets(&r, ex, limit))
    }

    fn free6(c6: &Ipv6Config, ex: &[ExistingLease], limit: usize) -> Vec<Ipv6Net> {
        free_subnets(&c6.range(), ex, limit)
    }
    use crate::control::config::{BackendKind, NetworkConfig};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn cfg(network: &str, len: Option<u8>) -> NetworkConfig {
        NetworkConfig::from_cli(net(network), len, BackendKind::Vxlan).unwrap()
    }

    fn dual(v6: &str) -> NetworkConfig {
        NetworkConfig::parse(
            format!(r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"{v6}"}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    fn v6_only(v6: &str) -> NetworkConfig {
        NetworkConfig::parse(
            format!(r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{v6}"}}"#).as_bytes(),
        )
        .unwrap()
    }

    fn key4(sn: &str) -> SubnetKey {
        SubnetKey::v4(net(sn))
    }

    fn key(sn: &str, sn6: &str) -> SubnetKey {
        SubnetKey {
            ipv4: (!sn.is_empty()).then(|| net(sn)),
            ipv6: (!sn6.is_empty()).then(|| net6(sn6)),
        }
    }

    fn lease_k(k: SubnetKey, ip_: &str) -> ExistingLease {
        ExistingLease {
            key: k,
            public_ip: ip(ip_),
            public_ipv6: None,
            reservation: false,
        }
    }

    fn lease(sn: &str, ip_: &str) -> ExistingLease {
        lease_k(key4(sn), ip_)
    }

    fn reservation(sn: &str, ip_: &str) -> ExistingLease {
        ExistingLease {
            reservation: true,
            ..lease(sn, ip_)
        }
    }

    const ME: &str = "192.168.1.10";

    fn me() -> Identity {
        Identity::v4(ip(ME))
    }

    fn pick_with(
        c: &NetworkConfig,
        ex: &[ExistingLease],
        prev: SubnetKey,
        seed: u64,
    ) -> Result<Choice, NoFreeSubnet> {
        choose(c, ex, &me(), prev, &mut StdRng::seed_from_u64(seed))
    }

    fn pick(
        c: &NetworkConfig,
        ex: &[ExistingLease],
        prev: Option<&str>,
        seed: u64,
    ) -> Result<Choice, NoFreeSubnet> {
        pick_with(c, ex, prev.map(key4).unwrap_or_default(), seed)
    }

    fn overlaps4(a: Ipv4Net, b: Ipv4Net) -> bool {
        overlaps(span::<V4>(a), span::<V4>(b))
    }

    #[test]
    fn own_lease_first() {
        let c = cfg("10.244.0.0/16", None);
        let ex = [
            lease("10.244.3.0/24", "192.168.1.9"),
            lease("10.244.7.0/24", ME),
        ];
        assert_eq!(
            pick(&c, &ex, Some("10.244.9.0/24"), 1),
            Ok(Choice::Reuse(key4("10.244.7.0/24")))
        );
        // A reservation for our IP wins over a lease.
        let ex = [lease("10.244.7.0/24", ME), reservation("10.244.8.0/24", ME)];
        assert_eq!(
            pick(&c, &ex, None, 1),
            Ok(Choice::Reuse(key4("10.244.8.0/24")))
        );
    }

    #[test]
    fn own_lease_that_no_longer_fits_is_stale() {
        let c = cfg("10.244.0.0/16", Some(25));
        let ex = [
            lease("10.244.7.0/24", ME),
            reservation("10.244.9.0/24", ME),
            lease("10.244.8.0/25", "192.168.1.11"),
            lease("10.245.0.0/25", ME),
        ];
        assert_eq!(
            stale_own(&c, &ex, &me()),
            vec![key4("10.244.7.0/24"), key4("10.245.0.0/25")]
        );
        // Neither the stale lease nor the misfit reservation is reused.
        let got = pick(&c, &ex, None, 3).unwrap();
        assert!(matches!(got, Choice::New(_)));
        let sn = got.subnet().unwrap();
        assert!(c.contains(sn));
        assert!(
            ex.iter().all(|l| !overlaps4(l.key.ipv4.unwrap(), sn)),
            "{sn}"
        );
        // A lease of ours fitting the config is not stale.
        assert!(stale_own(&c, &[lease("10.244.1.0/25", ME)], &me()).is_empty());
    }

    #[test]
    fn previous_subnet_second() {
        let c = cfg("10.244.0.0/16", None);
        let ex = [lease("10.244.3.0/24", "192.168.1.9")];
        assert_eq!(
            pick(&c, &ex, Some("10.244.9.0/24"), 1),
            Ok(Choice::New(key4("10.244.9.0/24")))
        );
        // Taken exactly, or overlapped by a key of another length: not reused.
        for other in ["10.244.9.0/24", "10.244.8.0/23", "10.244.9.128/25"] {
            let ex = [lease(other, "192.168.1.9")];
            let got = pick(&c, &ex, Some("10.244.9.0/24"), 1).unwrap();
            assert_ne!(got.subnet(), Some(net("10.244.9.0/24")), "{other}");
        }
        // A reservation of another node blocks it too.
        let ex = [reservation("10.244.9.0/24", "192.168.1.9")];
        assert_ne!(
            pick(&c, &ex, Some("10.244.9.0/24"), 1).unwrap().subnet(),
            Some(net("10.244.9.0/24"))
        );
        // Outside the config (wrong length, below SubnetMin, outside Network): ignored.
        for p in ["10.244.9.0/25", "10.244.0.0/24", "10.245.9.0/24"] {
            let got = pick(&c, &[], Some(p), 1).unwrap().subnet().unwrap();
            assert_ne!(got, net(p));
            assert!(c.contains(got));
        }
    }

    #[test]
    fn random_among_first_hundred_free() {
        let c = cfg("10.0.0.0/8", None);
        let ex = [
            lease("10.0.1.0/24", "192.168.1.9"),
            reservation("10.0.2.0/23", "192.168.1.8"),
        ];
        let free = free4(&c, &ex, CANDIDATES);
        assert_eq!(free.len(), 100);
        assert_eq!(free[0], net("10.0.4.0/24"));
        assert_eq!(free[99], net("10.0.103.0/24"));
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let got = pick(&c, &ex, None, seed).unwrap();
            let Choice::New(k) = got else {
                panic!("{got:?}")
            };
            assert_eq!(k.ipv6, None);
            assert!(free.contains(&k.ipv4.unwrap()));
            seen.insert(k);
        }
        assert!(seen.len() > 50, "only {} distinct picks", seen.len());
        // Deterministic for one seed.
        assert_eq!(pick(&c, &ex, None, 42), pick(&c, &ex, None, 42));
    }

    #[test]
    fn free_skips_overlaps_of_any_length() {
        let c = cfg("10.0.0.0/24", Some(28));
        // Range: 10.0.0.16 .. 10.0.0.240 in /28 steps (15 subnets).
        assert_eq!(c.subnet_count(), 15);
        let ex = [
            lease("10.0.0.0/26", "1.1.1.1"),   // covers .0-.63
            lease("10.0.0.72/29", "1.1.1.2"),  // inside .64/28
            lease("10.0.0.96/27", "1.1.1.3"),  // .96-.127
            lease("10.0.0.100/30", "1.1.1.4"), // nested in the previous
            lease("10.0.0.0/30", "1.1.1.5"),   // nested in the first
            lease("10.0.1.0/24", "1.1.1.6"),   // outside Network
        ];
        let free = free4(&c, &ex, 100);
        let want: Vec<Ipv4Net> = [80, 128, 144, 160, 176, 192, 208, 224, 240]
            .iter()
            .map(|o| Ipv4Net::new(Ipv4Addr::new(10, 0, 0, *o), 28).unwrap())
            .collect();
        assert_eq!(free, want);
        assert_eq!(free4(&c, &ex, 2), want[..2].to_vec());
        // A covering key: nothing free.
        let all = [lease("10.0.0.0/16", "1.1.1.1")];
        assert!(free4(&c, &all, 100).is_empty());
    }

    #[test]
    fn exhaustion() {
        let c = cfg("10.0.0.0/28", None);
        let ex = [
            lease("10.0.0.4/30", "1.1.1.1"),
            reservation("10.0.0.8/30", "1.1.1.2"),
            lease("10.0.0.12/30", "1.1.1.3"),
        ];
        let e = pick(&c, &ex, Some("10.0.0.8/30"), 0).unwrap_err();
        assert_eq!(e.total, 3);
        let msg = e.to_string();
        assert!(
            msg.contains("no free /30 subnet between SubnetMin 10.0.0.4 and SubnetMax 10.0.0.12")
                && msg.contains("widen Network"),
            "{msg}"
        );
        // Our own reservation still works when everything else is full.
        let ex2 = [ex[0], reservation("10.0.0.8/30", ME), ex[2]];
        assert_eq!(
            pick(&c, &ex2, None, 0),
            Ok(Choice::Reuse(key4("10.0.0.8/30")))
        );
        // One free slot: that one, whatever the seed.
        let ex3 = [ex[0], ex[2]];
        for seed in 0..10 {
            assert_eq!(
                pick(&c, &ex3, None, seed),
                Ok(Choice::New(key4("10.0.0.8/30")))
            );
        }
    }

    #[test]
    fn top_of_address_space() {
        let c = NetworkConfig::parse(br#"{"Network":"255.255.0.0/16"}"#).unwrap();
        let ex: Vec<ExistingLease> = (1..=254u8)
            .map(|i| {
                lease_k(
                    SubnetKey::v4(Ipv4Net::new(Ipv4Addr::new(255, 255, i, 0), 24).unwrap()),
                    "1.1.1.1",
                )
            })
            .collect();
        assert_eq!(
            pick(&c, &ex, None, 0),
            Ok(Choice::New(key4("255.255.255.0/24")))
        );
        // The same at the top of the IPv6 space: no overflow past ffff:...:ffff.
        let c = v6_only("ffff:ffff:ffff:ff00::/56");
        let ex: Vec<ExistingLease> = (1..=254u16)
            .map(|i| ExistingLease {
                public_ipv6: Some("fd00::1".parse().unwrap()),
                ..lease_k(
                    SubnetKey {
                        ipv4: None,
                        ipv6: Some(
                            Ipv6Net::new(
                                Ipv6Addr::new(0xffff, 0xffff, 0xffff, 0xff00 | i, 0, 0, 0, 0),
                                64,
                            )
                            .unwrap(),
                        ),
                    },
                    "0.0.0.0",
                )
            })
            .collect();
        assert_eq!(
            pick(&c, &ex, None, 0),
            Ok(Choice::New(key("", "ffff:ffff:ffff:ffff::/64")))
        );
        let all = [lease_k(key("", "ffff:ffff:ffff:ff00::/56"), "0.0.0.0")];
        assert!(free6(c.ipv6.as_ref().unwrap(), &all, 100).is_empty());
    }

    /// flannel's `allocateSubnet` for a dual-stack config: an IPv4 and an IPv6 subnet, each
    /// random among the first 100 free of its family, IPv6 subnets taken only by keys' IPv6
    /// parts (a key without one takes none).
    #[test]
    fn dual_stack_new_lease() {
        let c = dual("fd00:10::/56");
        let ex = [
            lease("10.244.1.0/24", "192.168.1.9"),
            lease_k(key("10.244.2.0/24", "fd00:10:0:1::/64"), "192.168.1.8"),
            lease_k(key("", "fd00:10:0:2::/63"), "0.0.0.0"),
        ];
        let free6 = free6(c.ipv6.as_ref().unwrap(), &ex, CANDIDATES);
        assert_eq!(free6.len(), 100);
        assert_eq!(free6[0], net6("fd00:10:0:4::/64"));
        assert_eq!(free6[99], net6("fd00:10:0:67::/64"));
        let mut seen6 = std::collections::HashSet::new();
        for seed in 0..100 {
            let Choice::New(k) = pick(&c, &ex, None, seed).unwrap() else {
                panic!("new")
            };
            let (v4, v6) = (k.ipv4.unwrap(), k.ipv6.unwrap());
            assert!(c.contains(v4) && c.ipv6.as_ref().unwrap().contains(v6));
            assert!(v4 != net("10.244.1.0/24") && v4 != net("10.244.2.0/24"));
            assert!(free6.contains(&v6), "{v6}");
            assert!(fits(&c, &k));
            seen6.insert(v6);
        }
        assert!(seen6.len() > 30, "only {} distinct IPv6 picks", seen6.len());
        // Exhausting the IPv6 range fails with an IPv6 message, even with IPv4 left.
        let c = dual("fd00:10::/62");
        let full = [lease_k(key("10.244.9.0/24", "fd00:10::/62"), "192.168.1.9")];
        let e = pick(&c, &full, None, 0).unwrap_err().to_string();
        assert!(
            e.contains("no free /64 subnet between IPv6SubnetMin fd00:10:0:1:: and IPv6SubnetMax fd00:10:0:3::")
                && e.contains("all 3 are taken")
                && e.contains("widen IPv6Network"),
            "{e}"
        );
    }

    /// Own dual-stack leases: reused when both halves fit; a lease without its IPv6 half
    /// (written before EnableIPv6 was set) is stale, as flannel's isIPv6SubnetConfigCompat
    /// says, and so is a dual-stack lease once IPv6 is switched off again.
    #[test]
    fn dual_stack_own_lease_fit() {
        let c = dual("fd00:10::/56");
        let mine = lease_k(key("10.244.7.0/24", "fd00:10:0:7::/64"), ME);
        assert_eq!(pick(&c, &[mine], None, 0), Ok(Choice::Reuse(mine.key)));
        assert!(stale_own(&c, &[mine], &me()).is_empty());
        let v4_only = lease("10.244.7.0/24", ME);
        assert_eq!(stale_own(&c, &[v4_only], &me()), vec![v4_only.key]);
        let wrong_len = lease_k(key("10.244.7.0/24", "fd00:10:0:7::/65"), ME);
        assert_eq!(stale_own(&c, &[wrong_len], &me()), vec![wrong_len.key]);
        let c4 = cfg("10.244.0.0/16", None);
        assert_eq!(stale_own(&c4, &[mine], &me()), vec![mine.key]);
        // Reservations are never stale, and a misfit one is not reused.
        let r = ExistingLease {
            reservation: true,
            ..v4_only
        };
        assert!(stale_own(&c, &[r], &me()).is_empty());
        let got = pick(&c, &[r], None, 0).unwrap();
        assert!(matches!(got, Choice::New(_)));
        assert_ne!(
            got.subnet(),
            Some(net("10.244.7.0/24")),
            "the reservation still holds it"
        );
        // A dual-stack reservation for us is reused.
        let r = ExistingLease {
            reservation: true,
            ..mine
        };
        assert_eq!(pick(&c, &[r], None, 0), Ok(Choice::Reuse(mine.key)));
    }

    /// The previous subnets from subnet.env are kept per family: a dual-stack start after a
    /// v4-only run keeps the IPv4 subnet and draws an IPv6 one (flannel drops both).
    #[test]
    fn dual_stack_previous_per_family() {
        let c = dual("fd00:10::/56");
        let ex = [lease_k(
            key("10.244.3.0/24", "fd00:10:0:3::/64"),
            "192.168.1.9",
        )];
        let both = key("10.244.9.0/24", "fd00:10:0:9::/64");
        assert_eq!(pick_with(&c, &ex, both, 0), Ok(Choice::New(both)));
        let got = pick_with(&c, &ex, key4("10.244.9.0/24"), 0).unwrap().key();
        assert_eq!(got.ipv4, Some(net("10.244.9.0/24")));
        assert!(got.ipv6.is_some_and(|s| s != net6("fd00:10:0:3::/64")));
        // A taken previous IPv6 subnet is not reused; the free IPv4 one still is.
        let taken6 = key("10.244.9.0/24", "fd00:10:0:3::/64");
        let got = pick_with(&c, &ex, taken6, 0).unwrap().key();
        assert_eq!(got.ipv4, Some(net("10.244.9.0/24")));
        assert_ne!(got.ipv6, Some(net6("fd00:10:0:3::/64")));
        // Outside the IPv6 range: ignored.
        let out6 = key("10.244.9.0/24", "fd00:11:0:9::/64");
        let got = pick_with(&c, &ex, out6, 0).unwrap().key();
        assert!(c.ipv6.as_ref().unwrap().contains(got.ipv6.unwrap()));
    }

    /// IPv6 only: keys `0.0.0.0-0&...`, identity by PublicIPv6 (flannel would match every
    /// IPv6-only node's PublicIP 0.0.0.0 and take another node's lease).
    #[test]
    fn ipv6_only() {
        let c = v6_only("fd00:10::/56");
        let ip6 = |s: &str| -> Option<Ipv6Addr> { Some(s.parse().unwrap()) };
        let me6 = Identity {
            public_ip: None,
            public_ipv6: ip6("fd00:77::10"),
        };
        let other = ExistingLease {
            public_ipv6: ip6("fd00:77::9"),
            ..lease_k(key("", "fd00:10:0:3::/64"), "0.0.0.0")
        };
        let mine = ExistingLease {
            public_ipv6: ip6("fd00:77::10"),
            ..lease_k(key("", "fd00:10:0:8::/64"), "0.0.0.0")
        };
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            choose(&c, &[other, mine], &me6, SubnetKey::default(), &mut rng),
            Ok(Choice::Reuse(mine.key))
        );
        let got = choose(&c, &[other], &me6, SubnetKey::default(), &mut rng).unwrap();
        let Choice::New(k) = got else {
            panic!("{got:?}")
        };
        assert_eq!(k.ipv4, None);
        assert!(k.ipv6.is_some_and(|s| s != net6("fd00:10:0:3::/64")));
        // An old dual-stack lease of ours does not fit an IPv6-only config.
        let old = ExistingLease {
            public_ipv6: ip6("fd00:77::10"),
            ..lease_k(key("10.244.1.0/24", "fd00:10:0:8::/64"), "192.168.1.10")
        };
        assert_eq!(stale_own(&c, &[old, other], &me6), vec![old.key]);
        // Previous IPv6 subnet.
        let prev = key("", "fd00:10:0:20::/64");
        assert_eq!(
            choose(&c, &[other], &me6, prev, &mut rng),
            Ok(Choice::New(prev))
        );
        assert!(!Identity {
            public_ip: None,
            public_ipv6: None
        }
        .holds(&other));
    }

    proptest::proptest! {
        #[test]
        fn chosen_is_free_and_fits(
            len in 26u8..=30,
            keys in proptest::collection::vec((0u32..256, 22u8..=30, proptest::prelude::any::<bool>()), 0..20),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let c = cfg("10.9.0.0/24", Some(len));
            let ex: Vec<ExistingLease> = keys.iter().map(|&(o, l, r)| ExistingLease {
                reservation: r,
                ..lease_k(SubnetKey::v4(Ipv4Net::new(Ipv4Addr::from(0x0a09_0000 | o), l).unwrap().trunc()), "1.1.1.1")
            }).collect();
            let brute: Vec<Ipv4Net> = c.subnets().filter(|s| ex.iter().all(|l| !overlaps4(l.key.ipv4.unwrap(), *s))).collect();
            proptest::prop_assert_eq!(free4(&c, &ex, 1000), brute.clone());
            match pick(&c, &ex, None, seed) {
                Ok(Choice::New(k)) => proptest::prop_assert!(brute.contains(&k.ipv4.unwrap())),
                Ok(other) => proptest::prop_assert!(false, "{:?}", other),
                Err(_) => proptest::prop_assert!(brute.is_empty()),
            }
        }

        /// The IPv6 sweep against brute force over a small range of a large network, keys of
        /// any length (including ones covering the whole range, and IPv4-only keys).
        #[test]
        fn chosen_v6_is_free_and_fits(
            len in 116u8..=124,
            keys in proptest::collection::vec((0u128..4096, 100u8..=128, proptest::prelude::any::<bool>()), 0..20),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let base: u128 = u128::from("fd00:aa::".parse::<Ipv6Addr>().unwrap());
            let c = NetworkConfig::parse(format!(
                r#"{{"Network":"10.9.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:aa::/114","IPv6SubnetLen":{len}}}"#
            ).as_bytes()).unwrap();
            let c6 = c.ipv6.clone().unwrap();
            let ex: Vec<ExistingLease> = keys.iter().map(|&(o, l, v6)| {
                let sn6 = Ipv6Net::new(Ipv6Addr::from(base | o), l).unwrap().trunc();
                lease_k(SubnetKey { ipv4: Some(net("10.9.200.0/24")), ipv6: v6.then_some(sn6) }, "1.1.1.1")
            }).collect();
            let size = 1u128 << (128 - len);
            let brute: Vec<Ipv6Net> = (0..c6.subnet_count())
                .map(|i| Ipv6Net::new(Ipv6Addr::from(u128::from(c6.subnet_min) + i * size), len).unwrap())
                .filter(|s| ex.iter().filter_map(|l| l.key.ipv6).all(|k| !overlaps(span::<V6>(k), span::<V6>(*s))))
                .collect();
            proptest::prop_assert_eq!(free6(&c6, &ex, 10_000), brute.clone());
            proptest::prop_assert_eq!(free6(&c6, &ex, 3), brute.iter().copied().take(3).collect::<Vec<_>>());
            match pick(&c, &ex, None, seed) {
                Ok(Choice::New(k)) => {
                    proptest::prop_assert!(brute[..brute.len().min(CANDIDATES)].contains(&k.ipv6.unwrap()));
                    proptest::prop_assert!(fits(&c, &k));
                }
                Ok(other) => proptest::prop_assert!(false, "{:?}", other),
                Err(e) => proptest::prop_assert!(brute.is_empty(), "{}", e),
            }
        }
    }
}
