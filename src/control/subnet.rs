//! Which subnet this node should hold, decided from the leases already in etcd: flannel's
//! order (own lease, previous subnet, random free one) as a pure function.
//!
//! No etcd and no clock: the caller lists `<prefix>/subnets`, calls [`stale_own`] and
//! [`choose`], and then creates or refreshes the key. Randomness comes from the caller's rng,
//! so tests are deterministic.

use super::config::NetworkConfig;
use ipnet::Ipv4Net;
use rand::Rng;
use std::net::Ipv4Addr;

/// How many free subnets flannel collects before picking one at random.
pub const CANDIDATES: usize = 100;

/// A key found under `<prefix>/subnets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExistingLease {
    /// The subnet the key names.
    pub subnet: Ipv4Net,
    /// Its holder's `PublicIP`.
    pub public_ip: Ipv4Addr,
    /// The key has no etcd lease attached: an operator's reservation, which never expires.
    pub reservation: bool,
}

/// What [`choose`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Choice {
    /// A lease or reservation already holding our public IP and fitting the config: refresh it.
    Reuse(Ipv4Net),
    /// A free subnet: create its key (it may be lost to a racing node; then choose again).
    New(Ipv4Net),
}

impl Choice {
    /// The chosen subnet.
    pub fn subnet(self) -> Ipv4Net {
        match self {
            Choice::Reuse(s) | Choice::New(s) => s,
        }
    }
}

/// Every subnet between SubnetMin and SubnetMax is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free /{subnet_len} subnet between SubnetMin {min} and SubnetMax {max}: all {total} are taken by leases or reservations; widen Network or the range, or remove stale keys")]
pub struct NoFreeSubnet {
    /// `SubnetLen`.
    pub subnet_len: u8,
    /// `SubnetMin`.
    pub min: Ipv4Addr,
    /// `SubnetMax`.
    pub max: Ipv4Addr,
    /// How many subnets the range holds.
    pub total: u64,
}

/// `[start, end)` of a subnet as u64, so the end of 255.255.255.0/24 does not overflow.
fn span(sn: Ipv4Net) -> (u64, u64) {
    let start = u64::from(u32::from(sn.network()));
    (start, start + (1u64 << (32 - sn.prefix_len())))
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    let (a0, a1) = span(a);
    let (b0, b1) = span(b);
    a0 < b1 && b0 < a1
}

/// Our own leases (not reservations) that no longer fit the config: delete them before
/// choosing. Reservations are the operator's and are never deleted.
pub fn stale_own(
    cfg: &NetworkConfig,
    existing: &[ExistingLease],
    our_ip: Ipv4Addr,
) -> Vec<Ipv4Net> {
    existing
        .iter()
        .filter(|l| l.public_ip == our_ip && !l.reservation && !cfg.contains(l.subnet))
        .map(|l| l.subnet)
        .collect()
}

/// Choose this node's subnet, in flannel's order:
/// 1. a lease or reservation whose `PublicIP` is ours and which fits the config (a
///    reservation is preferred over a lease when both exist);
/// 2. `previous` (from subnet.env) if it fits the config and overlaps no existing key;
/// 3. one at random among the first [`CANDIDATES`] free subnets from SubnetMin up, a subnet
///    being free when it overlaps no existing key of any length (leases of any holder and
///    reservations alike; stale keys still in `existing` count as taken).
pub fn choose(
    cfg: &NetworkConfig,
    existing: &[ExistingLease],
    our_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    rng: &mut impl Rng,
) -> Result<Choice, NoFreeSubnet> {
    let own = |reservation: bool| {
        existing.iter().find(|l| {
            l.public_ip == our_ip && l.reservation == reservation && cfg.contains(l.subnet)
        })
    };
    if let Some(l) = own(true).or_else(|| own(false)) {
        return Ok(Choice::Reuse(l.subnet));
    }

    if let Some(p) = previous {
        if cfg.contains(p) && !existing.iter().any(|l| overlaps(l.subnet, p)) {
            return Ok(Choice::New(p));
        }
    }

    let free = free_subnets(cfg, existing, CANDIDATES);
    if free.is_empty() {
        return Err(NoFreeSubnet {
            subnet_len: cfg.subnet_len,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
            total: cfg.subnet_count(),
        });
    }
    Ok(Choice::New(free[rng.random_range(0..free.len())]))
}

/// The first `limit` subnets from SubnetMin to SubnetMax overlapping no existing key, in
/// address order. Runs in O(n log n + limit + keys), however large the range.
pub fn free_subnets(cfg: &NetworkConfig, existing: &[ExistingLease], limit: usize) -> Vec<Ipv4Net> {
    let size = 1u64 << (32 - cfg.subnet_len);
    let mut taken: Vec<(u64, u64)> = existing.iter().map(|l| span(l.subnet)).collect();
    taken.sort_unstable();

    let mut out = Vec::new();
    let mut a = u64::from(u32::from(cfg.subnet_min));
    let max = u64::from(u32::from(cfg.subnet_max));
    let mut j = 0;
    while a <= max && out.len() < limit {
        // Skip keys that end at or before this candidate.
        while j < taken.len() && taken[j].1 <= a {
            j += 1;
        }
        match taken.get(j) {
            Some(&(start, end)) if start < a + size => {
                // Overlap: jump to the first subnet boundary at or after the key's end
                // (boundaries are absolute: SubnetMin is aligned). Later keys sorted by start
                // have start >= this one's, so the next round rechecks them.
                a = end.div_ceil(size) * size;
            }
            _ => {
                // a <= max <= u32::MAX and subnet_len <= 30.
                out.push(
                    Ipv4Net::new(Ipv4Addr::from(a as u32), cfg.subnet_len).expect("len <= 32"),
                );
                a += size;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::{BackendKind, NetworkConfig};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn cfg(network: &str, len: Option<u8>) -> NetworkConfig {
        NetworkConfig::from_cli(net(network), len, BackendKind::Vxlan).unwrap()
    }

    fn lease(sn: &str, ip_: &str) -> ExistingLease {
        ExistingLease {
            subnet: net(sn),
            public_ip: ip(ip_),
            reservation: false,
        }
    }

    fn reservation(sn: &str, ip_: &str) -> ExistingLease {
        ExistingLease {
            reservation: true,
            ..lease(sn, ip_)
        }
    }

    const ME: &str = "192.168.1.10";

    fn pick(
        c: &NetworkConfig,
        ex: &[ExistingLease],
        prev: Option<&str>,
        seed: u64,
    ) -> Result<Choice, NoFreeSubnet> {
        choose(
            c,
            ex,
            ip(ME),
            prev.map(net),
            &mut StdRng::seed_from_u64(seed),
        )
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
            Ok(Choice::Reuse(net("10.244.7.0/24")))
        );
        // A reservation for our IP wins over a lease.
        let ex = [lease("10.244.7.0/24", ME), reservation("10.244.8.0/24", ME)];
        assert_eq!(
            pick(&c, &ex, None, 1),
            Ok(Choice::Reuse(net("10.244.8.0/24")))
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
            stale_own(&c, &ex, ip(ME)),
            vec![net("10.244.7.0/24"), net("10.245.0.0/25")]
        );
        // Neither the stale lease nor the misfit reservation is reused.
        let got = pick(&c, &ex, None, 3).unwrap();
        assert!(matches!(got, Choice::New(_)));
        let sn = got.subnet();
        assert!(c.contains(sn));
        assert!(ex.iter().all(|l| !overlaps(l.subnet, sn)), "{sn}");
        // A lease of ours fitting the config is not stale.
        assert!(stale_own(&c, &[lease("10.244.1.0/25", ME)], ip(ME)).is_empty());
    }

    #[test]
    fn previous_subnet_second() {
        let c = cfg("10.244.0.0/16", None);
        let ex = [lease("10.244.3.0/24", "192.168.1.9")];
        assert_eq!(
            pick(&c, &ex, Some("10.244.9.0/24"), 1),
            Ok(Choice::New(net("10.244.9.0/24")))
        );
        // Taken exactly, or overlapped by a key of another length: not reused.
        for other in ["10.244.9.0/24", "10.244.8.0/23", "10.244.9.128/25"] {
            let ex = [lease(other, "192.168.1.9")];
            let got = pick(&c, &ex, Some("10.244.9.0/24"), 1).unwrap();
            assert_ne!(got.subnet(), net("10.244.9.0/24"), "{other}");
        }
        // A reservation of another node blocks it too.
        let ex = [reservation("10.244.9.0/24", "192.168.1.9")];
        assert_ne!(
            pick(&c, &ex, Some("10.244.9.0/24"), 1).unwrap().subnet(),
            net("10.244.9.0/24")
        );
        // Outside the config (wrong length, below SubnetMin, outside Network): ignored.
        for p in ["10.244.9.0/25", "10.244.0.0/24", "10.245.9.0/24"] {
            let got = pick(&c, &[], Some(p), 1).unwrap();
            assert_ne!(got.subnet(), net(p));
            assert!(c.contains(got.subnet()));
        }
    }

    #[test]
    fn random_among_first_hundred_free() {
        let c = cfg("10.0.0.0/8", None);
        let ex = [
            lease("10.0.1.0/24", "192.168.1.9"),
            reservation("10.0.2.0/23", "192.168.1.8"),
        ];
        let free = free_subnets(&c, &ex, CANDIDATES);
        assert_eq!(free.len(), 100);
        assert_eq!(free[0], net("10.0.4.0/24"));
        assert_eq!(free[99], net("10.0.103.0/24"));
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let got = pick(&c, &ex, None, seed).unwrap();
            let Choice::New(sn) = got else {
                panic!("{got:?}")
            };
            assert!(free.contains(&sn));
            seen.insert(sn);
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
        let free = free_subnets(&c, &ex, 100);
        let want: Vec<Ipv4Net> = [80, 128, 144, 160, 176, 192, 208, 224, 240]
            .iter()
            .map(|o| Ipv4Net::new(Ipv4Addr::new(10, 0, 0, *o), 28).unwrap())
            .collect();
        assert_eq!(free, want);
        assert_eq!(free_subnets(&c, &ex, 2), want[..2].to_vec());
        // A covering key: nothing free.
        let all = [lease("10.0.0.0/16", "1.1.1.1")];
        assert!(free_subnets(&c, &all, 100).is_empty());
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
            msg.contains("no free /30 subnet between SubnetMin 10.0.0.4 and SubnetMax 10.0.0.12"),
            "{msg}"
        );
        // Our own reservation still works when everything else is full.
        let ex2 = [ex[0], reservation("10.0.0.8/30", ME), ex[2]];
        assert_eq!(
            pick(&c, &ex2, None, 0),
            Ok(Choice::Reuse(net("10.0.0.8/30")))
        );
        // One free slot: that one, whatever the seed.
        let ex3 = [ex[0], ex[2]];
        for seed in 0..10 {
            assert_eq!(
                pick(&c, &ex3, None, seed),
                Ok(Choice::New(net("10.0.0.8/30")))
            );
        }
    }

    #[test]
    fn top_of_address_space() {
        let c = NetworkConfig::parse(br#"{"Network":"255.255.0.0/16"}"#).unwrap();
        let ex: Vec<ExistingLease> = (1..=254u8)
            .map(|i| ExistingLease {
                subnet: Ipv4Net::new(Ipv4Addr::new(255, 255, i, 0), 24).unwrap(),
                public_ip: ip("1.1.1.1"),
                reservation: false,
            })
            .collect();
        assert_eq!(
            pick(&c, &ex, None, 0),
            Ok(Choice::New(net("255.255.255.0/24")))
        );
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
                subnet: Ipv4Net::new(Ipv4Addr::from(0x0a09_0000 | o), l).unwrap().trunc(),
                public_ip: ip("1.1.1.1"),
                reservation: r,
            }).collect();
            let brute: Vec<Ipv4Net> = c.subnets().filter(|s| ex.iter().all(|l| !overlaps(l.subnet, *s))).collect();
            proptest::prop_assert_eq!(free_subnets(&c, &ex, 1000), brute.clone());
            match pick(&c, &ex, None, seed) {
                Ok(Choice::New(sn)) => proptest::prop_assert!(brute.contains(&sn)),
                Ok(other) => proptest::prop_assert!(false, "{:?}", other),
                Err(_) => proptest::prop_assert!(brute.is_empty()),
            }
        }
    }
}
