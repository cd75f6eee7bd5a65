//! Inner-flow hashing for the underlay UDP source port.
//!
//! Like the kernel's VXLAN driver (`udp_flow_src_port`), overlayd puts a hash of the inner
//! flow into the outer UDP source port so that the underlay (ECMP, RSS, `SO_REUSEPORT`)
//! spreads flows while keeping each one on one path. The hash is symmetric, as the
//! kernel's flow dissector makes it (`__flow_hash_consistentify`): both directions of a
//! connection hash alike. It is not keyed: it spreads load, it does not defend against
//! chosen collisions. Pure, allocation-free, reads the headers through the
//! [`ipv4`]/[`ipv6`] views after checking their fixed length; never panics.

use crate::wire::ip::{Version, PROTO_DCCP, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PROTO_UDPLITE};
use crate::wire::{ipv4, ipv6, udp};

/// Lowest port of the kernel's default ephemeral range (`ip_local_port_range`).
pub const PORT_MIN: u16 = 32768;
/// Highest port of that range.
pub const PORT_MAX: u16 = 60999;

/// Protocols whose first four payload bytes are source and destination ports.
fn has_ports(proto: u8) -> bool {
    matches!(
        proto,
        PROTO_TCP | PROTO_UDP | PROTO_DCCP | PROTO_SCTP | PROTO_UDPLITE
    )
}

/// Hashes the inner flow of an IP packet: addresses and protocol, plus the ports for
/// TCP/UDP/SCTP/DCCP/UDP-Lite when the packet is not a fragment. IPv6 extension headers
/// are not walked (such packets hash by addresses and next header). Anything that is not
/// IPv4/IPv6 hashes to 0.
#[inline]
pub fn hash(inner: &[u8]) -> u32 {
    match Version::of(inner) {
        Some(Version::Ipv4) if inner.len() >= ipv4::HEADER_LEN => hash_v4(inner),
        Some(Version::Ipv6) if inner.len() >= ipv6::HEADER_LEN => hash_v6(inner),
        _ => 0,
    }
}

/// `p` holds at least the fixed IPv4 header.
fn hash_v4(p: &[u8]) -> u32 {
    let ip = ipv4::Packet::new_unchecked(p);
    let ihl = ip.header_len();
    let proto = ip.protocol();
    let mut src = u32::from(ip.src_addr());
    let mut dst = u32::from(ip.dst_addr());
    let (mut sp, mut dp) = ports(p, ihl, proto, !ip.is_fragment() && ihl >= ipv4::HEADER_LEN);
    if (dst, dp) < (src, sp) {
        std::mem::swap(&mut src, &mut dst);
        std::mem::swap(&mut sp, &mut dp);
    }
    let mut h = word(0, ((src as u64) << 32) | dst as u64);
    h = word(h, ((sp as u64) << 32) | ((dp as u64) << 16) | proto as u64);
    finish(h)
}

/// `p` holds at least the fixed IPv6 header.
fn hash_v6(p: &[u8]) -> u32 {
    let ip = ipv6::Packet::new_unchecked(p);
    let proto = ip.next_header();
    // Compared and absorbed as big-endian numbers: the order of the address bytes.
    let mut src = u128::from(ip.src_addr());
    let mut dst = u128::from(ip.dst_addr());
    let (mut sp, mut dp) = ports(p, ipv6::HEADER_LEN, proto, true);
    if (dst, dp) < (src, sp) {
        std::mem::swap(&mut src, &mut dst);
        std::mem::swap(&mut sp, &mut dp);
    }
    let mut h = 0;
    for a in [src, dst] {
        h = word(h, (a >> 64) as u64);
        h = word(h, a as u64);
    }
    h = word(h, ((sp as u64) << 32) | ((dp as u64) << 16) | proto as u64);
    finish(h)
}

/// The transport ports at `off` (the first four bytes of every protocol [`has_ports`]
/// names), or zeros when absent.
#[inline]
fn ports(p: &[u8], off: usize, proto: u8, allowed: bool) -> (u16, u16) {
    if !allowed || !has_ports(proto) {
        return (0, 0);
    }
    match p.get(off..off + 4) {
        // Every protocol `has_ports` names starts with the two ports, laid out as UDP's.
        Some(b) => {
            let t = udp::Packet::new_unchecked(b);
            (t.src_port(), t.dst_port())
        }
        None => (0, 0),
    }
}

/// One FxHash-style absorption step.
#[inline]
fn word(h: u64, w: u64) -> u64 {
    (h.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// MurmurHash3's 64-bit finaliser, folded to 32 bits.
#[inline]
fn finish(mut k: u64) -> u32 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    (k ^ (k >> 32)) as u32
}

/// Maps a flow hash into [`PORT_MIN`]..=[`PORT_MAX`] exactly as the kernel's
/// `udp_flow_src_port` does with the default range: fold the low half into the high half,
/// then scale the 32-bit value into the range.
#[inline]
pub fn src_port(hash: u32) -> u16 {
    let h = hash ^ (hash << 16);
    let range = (PORT_MAX - PORT_MIN) as u64 + 1;
    (((h as u64 * range) >> 32) + PORT_MIN as u64) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, sp: u16, dp: u16) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0] = 0x45;
        b[9] = proto;
        b[12..16].copy_from_slice(&src);
        b[16..20].copy_from_slice(&dst);
        b[20..22].copy_from_slice(&sp.to_be_bytes());
        b[22..24].copy_from_slice(&dp.to_be_bytes());
        b
    }

    #[test]
    fn ports_matter_for_tcp_udp_only() {
        let a = hash(&v4([10, 244, 1, 1], [10, 244, 2, 1], PROTO_TCP, 1000, 80));
        let b = hash(&v4([10, 244, 1, 1], [10, 244, 2, 1], PROTO_TCP, 1001, 80));
        assert_ne!(a, b);
        let a = hash(&v4([10, 244, 1, 1], [10, 244, 2, 1], 1, 1000, 80));
        let b = hash(&v4([10, 244, 1, 1], [10, 244, 2, 1], 1, 1001, 80));
        assert_eq!(a, b);
    }

    #[test]
    fn fragments_ignore_ports() {
        let mut a = v4([10, 244, 1, 1], [10, 244, 2, 1], PROTO_UDP, 1000, 53);
        let mut b = v4([10, 244, 1, 1], [10, 244, 2, 1], PROTO_UDP, 2000, 53);
        a[6] = 0x20;
        b[6] = 0x20;
        assert_eq!(hash(&a), hash(&b));
    }

    #[test]
    fn symmetric() {
        let a = hash(&v4([10, 244, 1, 1], [10, 244, 2, 1], PROTO_TCP, 40000, 80));
        let b = hash(&v4([10, 244, 2, 1], [10, 244, 1, 1], PROTO_TCP, 80, 40000));
        assert_eq!(a, b);
    }

    #[test]
    fn garbage_is_zero() {
        assert_eq!(hash(&[]), 0);
        assert_eq!(hash(&[0x45; 19]), 0);
        assert_eq!(hash(&[0x60; 39]), 0);
        assert_eq!(hash(&[0x10; 60]), 0);
    }

    #[test]
    fn port_range_edges() {
        assert_eq!(src_port(0), PORT_MIN);
        assert_eq!(src_port(0xffff_0000), PORT_MAX);
        // The low half is folded into the high half first: all ones folds to 0x0000ffff.
        assert_eq!(src_port(u32::MAX), PORT_MIN);
        assert_eq!(src_port(0x8000_0000), PORT_MIN + 14116);
    }

    #[test]
    fn spreads() {
        let mut seen = std::collections::HashSet::new();
        for sp in 0..1000u16 {
            let h = hash(&v4(
                [10, 244, 1, 1],
                [10, 244, 2, 1],
                PROTO_TCP,
                30000 + sp,
                80,
            ));
            seen.insert(src_port(h));
        }
        assert!(seen.len() > 950, "{}", seen.len());
    }

    proptest! {
        #[test]
        fn port_in_range(h in any::<u32>()) {
            let p = src_port(h);
            prop_assert!((PORT_MIN..=PORT_MAX).contains(&p));
        }

        #[test]
        fn v6_symmetric(s in any::<[u8; 16]>(), d in any::<[u8; 16]>(), sp in any::<u16>(), dp in any::<u16>()) {
            let mk = |s: &[u8; 16], d: &[u8; 16], sp: u16, dp: u16| {
                let mut b = [0u8; 44];
                b[0] = 0x60;
                b[6] = PROTO_UDP;
                b[8..24].copy_from_slice(s);
                b[24..40].copy_from_slice(d);
                b[40..42].copy_from_slice(&sp.to_be_bytes());
                b[42..44].copy_from_slice(&dp.to_be_bytes());
                b
            };
            prop_assert_eq!(hash(&mk(&s, &d, sp, dp)), hash(&mk(&d, &s, dp, sp)));
        }

        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = src_port(hash(&buf));
        }
    }
}
