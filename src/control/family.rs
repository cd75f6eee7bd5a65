//! What differs between IPv4 and IPv6 in the network config and in subnet choice — field
//! names, prefix limits, defaults, address width — so that the checks of
//! [`config`](super::config) and the choice of [`subnet`](super::subnet) are written once
//! for both families, as [`fib::Table`](crate::fib::Table) is. Pure.

use super::lease::SubnetKey;
use crate::fib::{self, V4, V6};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The network config's field names for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    /// `Network` or `IPv6Network`.
    pub network: &'static str,
    /// `SubnetLen` or `IPv6SubnetLen`.
    pub subnet_len: &'static str,
    /// `SubnetMin` or `IPv6SubnetMin`.
    pub subnet_min: &'static str,
    /// `SubnetMax` or `IPv6SubnetMax`.
    pub subnet_max: &'static str,
}

/// An address family as the control plane sees it (on top of the table's view).
/// Addresses are handled as `u128` on the address line, so IPv4 arithmetic cannot overflow.
pub trait Family: fib::Family {
    /// Address width.
    const BITS: u8;
    /// The config fields of this family.
    const FIELDS: Fields;
    /// A network to suggest in messages.
    const EXAMPLE: &'static str;
    /// `SubnetLen` when unset, for networks of prefix `DEFAULT_SUBNET_LEN - 2` or shorter
    /// (narrower networks get prefix + 2): flannel's 24 and 64.
    const DEFAULT_SUBNET_LEN: u8;
    /// The longest `SubnetLen`: flannel's 30 and 126 (a network must hold four subnets, so
    /// its prefix is at most this minus 2).
    const MAX_SUBNET_LEN: u8;
    /// The shortest network prefix accepted: /8 for IPv4 (10.0.0.0/8, the largest private
    /// block), /16 for IPv6 (2^48 /64 subnets). A wider overlay would swallow the hosts' own
    /// networks and the default route (issue 22; flannel accepts anything but /0).
    const MIN_PREFIX: u8;
    /// What a network field should hold, for messages.
    const NET_EXPECTED: &'static str;
    /// What an address field should hold, for messages.
    const ADDR_EXPECTED: &'static str;
    /// Parse a network as flannel's config decoder does (host bits kept).
    fn parse_net(s: &str) -> Option<Self::Net>;
    /// Parse an address as flannel's config decoder does.
    fn parse_addr(s: &str) -> Option<Self::Addr>;
    /// The address on the `u128` line.
    fn to_u128(a: Self::Addr) -> u128;
    /// The address at `v`, which must be below `2^BITS`.
    fn from_u128(v: u128) -> Self::Addr;
    /// The subnet at `a`, `len` long (`len <= BITS`).
    fn net(a: Self::Addr, len: u8) -> Self::Net;
    /// The address a network was written with (host bits included).
    fn addr(n: &Self::Net) -> Self::Addr;
    /// As a family-neutral address, for messages.
    fn ip(a: Self::Addr) -> IpAddr;
    /// As a family-neutral network, for messages.
    fn ip_net(n: Self::Net) -> IpNet;
    /// This family's subnet of a lease key.
    fn of_key(k: &SubnetKey) -> Option<Self::Net>;
}

impl Family for V4 {
    const BITS: u8 = 32;
    const FIELDS: Fields = Fields {
        network: "Network",
        subnet_len: "SubnetLen",
        subnet_min: "SubnetMin",
        subnet_max: "SubnetMax",
    };
    const EXAMPLE: &'static str = "10.244.0.0/16";
    const DEFAULT_SUBNET_LEN: u8 = 24;
    const MAX_SUBNET_LEN: u8 = 30;
    const MIN_PREFIX: u8 = 8;
    const NET_EXPECTED: &'static str = "an IPv4 CIDR such as \"10.244.0.0/16\"";
    const ADDR_EXPECTED: &'static str = "an IPv4 address such as \"10.244.1.0\"";
    fn parse_net(s: &str) -> Option<Ipv4Net> {
        s.parse().ok()
    }
    /// A dotted quad or an IPv4-mapped IPv6 address, as flannel's `ip.ParseIP4`.
    fn parse_addr(s: &str) -> Option<Ipv4Addr> {
        crate::go::json::parse_ipv4(s)
    }
    fn to_u128(a: Ipv4Addr) -> u128 {
        u128::from(u32::from(a))
    }
    fn from_u128(v: u128) -> Ipv4Addr {
        debug_assert!(v <= u128::from(u32::MAX));
        Ipv4Addr::from(v as u32)
    }
    fn net(a: Ipv4Addr, len: u8) -> Ipv4Net {
        Ipv4Net::new_assert(a, len)
    }
    fn addr(n: &Ipv4Net) -> Ipv4Addr {
        n.addr()
    }
    fn ip(a: Ipv4Addr) -> IpAddr {
        a.into()
    }
    fn ip_net(n: Ipv4Net) -> IpNet {
        n.into()
    }
    fn of_key(k: &SubnetKey) -> Option<Ipv4Net> {
        k.ipv4
    }
}

impl Family for V6 {
    const BITS: u8 = 128;
    const FIELDS: Fields = Fields {
        network: "IPv6Network",
        subnet_len: "IPv6SubnetLen",
        subnet_min: "IPv6SubnetMin",
        subnet_max: "IPv6SubnetMax",
    };
    const EXAMPLE: &'static str = "fd00:10:244::/56";
    const DEFAULT_SUBNET_LEN: u8 = 64;
    const MAX_SUBNET_LEN: u8 = 126;
    const MIN_PREFIX: u8 = 16;
    const NET_EXPECTED: &'static str = "an IPv6 CIDR such as \"fd00:10:244::/56\"";
    const ADDR_EXPECTED: &'static str = "an IPv6 address such as \"fd00:10:244:1::\"";
    fn parse_net(s: &str) -> Option<Ipv6Net> {
        s.parse().ok()
    }
    fn parse_addr(s: &str) -> Option<Ipv6Addr> {
        s.parse().ok()
    }
    fn to_u128(a: Ipv6Addr) -> u128 {
        u128::from(a)
    }
    fn from_u128(v: u128) -> Ipv6Addr {
        Ipv6Addr::from(v)
    }
    fn net(a: Ipv6Addr, len: u8) -> Ipv6Net {
        Ipv6Net::new_assert(a, len)
    }
    fn addr(n: &Ipv6Net) -> Ipv6Addr {
        n.addr()
    }
    fn ip(a: Ipv6Addr) -> IpAddr {
        a.into()
    }
    fn ip_net(n: Ipv6Net) -> IpNet {
        n.into()
    }
    fn of_key(k: &SubnetKey) -> Option<Ipv6Net> {
        k.ipv6
    }
}

/// One family's subnets as a validated config hands them out: `subnet_len`-long subnets of
/// `network` from `min` to `max` (network addresses, `min <= max`).
#[derive(Debug)]
pub struct Range<F: Family> {
    /// `Network` / `IPv6Network`.
    pub network: F::Net,
    /// `SubnetLen` / `IPv6SubnetLen`.
    pub subnet_len: u8,
    /// `SubnetMin` / `IPv6SubnetMin`.
    pub min: F::Addr,
    /// `SubnetMax` / `IPv6SubnetMax`.
    pub max: F::Addr,
}

impl<F: Family> Range<F> {
    /// Host bits of one subnet.
    pub fn host_bits(&self) -> u32 {
        u32::from(F::BITS - self.subnet_len)
    }

    /// Whether `sn` is a subnet handed out: `subnet_len` long, a network address inside
    /// `network`, between `min` and `max`.
    pub fn contains(&self, sn: F::Net) -> bool {
        let a = F::to_u128(F::addr(&sn));
        F::prefix_len(&sn) == self.subnet_len
            && a == F::to_u128(F::network(&sn))
            && F::contains(&self.network, &sn)
            && (F::to_u128(self.min)..=F::to_u128(self.max)).contains(&a)
    }

    /// How many subnets lie between `min` and `max`.
    pub fn count(&self) -> u128 {
        ((F::to_u128(self.max) - F::to_u128(self.min)) >> self.host_bits()) + 1
    }

    /// The defaults for `min` and `max`: the second subnet of `network` and the last.
    pub fn default_min_max(network: F::Net, subnet_len: u8) -> (F::Addr, F::Addr) {
        let size = 1u128 << (F::BITS - subnet_len);
        let base = F::to_u128(F::network(&network));
        // prefix >= 1, so the span fits in u128; both lie inside the network.
        let span = 1u128 << (F::BITS - F::prefix_len(&network));
        (
            F::from_u128(base + size),
            F::from_u128(base + (span - size)),
        )
    }
}

/// `[first, last]` of a subnet on the `u128` address line.
pub fn span<F: Family>(sn: F::Net) -> (u128, u128) {
    let first = F::to_u128(F::network(&sn));
    let host = u32::from(F::BITS - F::prefix_len(&sn));
    // host <= 128: a shift by 128 (no host bits) leaves nothing.
    let last_off = u128::MAX.checked_shr(128 - host).unwrap_or(0);
    (first, first + last_off)
}
