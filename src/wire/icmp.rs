//! ICMP error messages overlayd originates: "destination network unreachable" for inner
//! packets whose destination has no lease, so senders fail fast instead of timing out;
//! and the one it reads: an ICMPv6 "packet too big" about an underlay datagram of ours
//! ([`too_big_v6`]).
//!
//! Builders write a complete IP + ICMP packet into a caller-owned buffer, ready to write to
//! the TUN device. Following RFC 1812 §4.3.2.3 the error quotes as much of the offending
//! datagram as fits in 576 bytes (IPv4) or 1280 bytes (IPv6, RFC 4443 §2.4). RFC 1812
//! §4.3.2.7 rules say when not to answer: never about an ICMP error, a non-first
//! fragment, or a packet from an address that does not name a single host, nor to a
//! packet sent to a multicast or broadcast address. Pure: no I/O, no allocation.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::checksum;
use crate::wire::ip::{self, PROTO_ICMP, PROTO_ICMPV6};
use crate::wire::{ipv4, ipv6};

/// ICMP type: destination unreachable.
pub const TYPE_DEST_UNREACHABLE: u8 = 3;
/// ICMP code: network unreachable.
pub const CODE_NET_UNREACHABLE: u8 = 0;
/// ICMPv6 type: destination unreachable.
pub const V6_TYPE_DEST_UNREACHABLE: u8 = 1;
/// ICMPv6 code: no route to destination.
pub const V6_CODE_NO_ROUTE: u8 = 0;

/// ICMPv6 type: packet too big (RFC 4443 §3.2).
pub const V6_TYPE_PACKET_TOO_BIG: u8 = 2;

/// Longest IPv4 ICMP error overlayd builds (RFC 1812 §4.3.2.3).
pub const MAX_V4_ERROR_LEN: usize = 576;
/// Longest ICMPv6 error (the IPv6 minimum MTU, RFC 4443 §2.4).
pub const MAX_V6_ERROR_LEN: usize = 1280;
/// Length of the ICMP header of an error message (type, code, checksum, unused).
pub const ERROR_HEADER_LEN: usize = 8;

/// TTL / hop limit of generated errors.
const TTL: u8 = 64;

/// The ICMP / ICMPv6 error header: type, code, checksum, four unused bytes.
mod field {
    use std::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const UNUSED: Range<usize> = 4..8;
}

/// Writes an error message's header (checksum 0) and `quote` into `icmp`, which is exactly
/// [`ERROR_HEADER_LEN`] + `quote.len()` bytes long.
fn emit_error(icmp: &mut [u8], icmp_type: u8, code: u8, quote: &[u8]) {
    icmp[field::TYPE] = icmp_type;
    icmp[field::CODE] = code;
    icmp[field::CHECKSUM].fill(0);
    icmp[field::UNUSED].fill(0);
    icmp[ERROR_HEADER_LEN..].copy_from_slice(quote);
}

/// Stores the checksum field of an error message.
fn set_checksum(icmp: &mut [u8], c: u16) {
    icmp[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

/// Whether an ICMP type is an error message (as opposed to a query such as echo).
pub fn is_error_v4(icmp_type: u8) -> bool {
    // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// Builds an IPv4 ICMP destination-network-unreachable (type 3 code 0) from `from` to the
/// sender of `orig`, quoting `orig` up to a 576-byte total. Returns the length written to
/// `out`, or `None` when no error may be sent (see the module docs), `orig` is not a valid
/// IPv4 packet, or `out` cannot hold the IP header, ICMP header, the quoted IP header and
/// 8 bytes of its payload (less if the original is shorter).
pub fn net_unreachable_v4(orig: &[u8], from: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let p = ipv4::Packet::new_checked(orig).ok()?;
    let (src, dst) = (p.src_addr(), p.dst_addr());
    if !is_host_v4(src) || dst.is_multicast() || dst.is_broadcast() || p.frag_offset() != 0 {
        return None;
    }
    if p.protocol() == PROTO_ICMP {
        // A first fragment or whole packet: its ICMP type is present unless truncated.
        match p.payload().first() {
            Some(&t) if !is_error_v4(t) => {}
            _ => return None,
        }
    }
    let orig = p.packet();
    let min_quote = orig.len().min(p.header_len() + 8);
    let room = out.len().min(MAX_V4_ERROR_LEN);
    let head = ipv4::HEADER_LEN + ERROR_HEADER_LEN;
    if room < head + min_quote {
        return None;
    }
    let quote = orig.len().min(room - head);
    let total = head + quote;
    let out = &mut out[..total];
    ipv4::Repr {
        src_addr: from,
        dst_addr: src,
        protocol: PROTO_ICMP,
        payload_len: (total - ipv4::HEADER_LEN) as u16,
        ttl: TTL,
        ident: 0,
    }
    .emit(out);
    let icmp = &mut out[ipv4::HEADER_LEN..];
    emit_error(
        icmp,
        TYPE_DEST_UNREACHABLE,
        CODE_NET_UNREACHABLE,
        &orig[..quote],
    );
    let c = checksum::checksum(icmp);
    set_checksum(icmp, c);
    Some(total)
}

/// Builds an ICMPv6 destination-unreachable, no-route (type 1 code 0) from `from` to the
/// sender of the IPv6 packet `orig`, quoting it up to a 1280-byte total. `None` when `orig`
/// is not IPv6, comes from an unspecified or multicast address, went to a multicast
/// address, is itself an ICMPv6 error (types below 128), or `out` cannot hold the headers
/// and the original's 40-byte header. Extension headers are not walked: a packet whose
/// first next-header is not ICMPv6 is treated as not an ICMPv6 error.
pub fn no_route_v6(orig: &[u8], from: Ipv6Addr, out: &mut [u8]) -> Option<usize> {
    let ip::InnerIp::V6(orig) = ip::inner_packet(orig).ok()? else {
        return None;
    };
    let p = ipv6::Packet::new_unchecked(orig);
    let (src, dst) = (p.src_addr(), p.dst_addr());
    if src.is_unspecified() || src.is_multicast() || dst.is_multicast() {
        return None;
    }
    if p.next_header() == PROTO_ICMPV6 {
        match p.payload().first() {
            Some(&t) if t >= 128 => {}
            _ => return None,
        }
    }
    let head = ipv6::HEADER_LEN + ERROR_HEADER_LEN;
    let room = out.len().min(MAX_V6_ERROR_LEN);
    if room < head + ipv6::HEADER_LEN {
        return None;
    }
    let quote = orig.len().min(room - head);
    let total = head + quote;
    let out = &mut out[..total];
    let plen = (total - ipv6::HEADER_LEN) as u16;
    ipv6::Repr {
        src_addr: from,
        dst_addr: src,
        next_header: PROTO_ICMPV6,
        payload_len: plen,
        hop_limit: TTL,
    }
    .emit(out);
    let icmp = &mut out[ipv6::HEADER_LEN..];
    emit_error(
        icmp,
        V6_TYPE_DEST_UNREACHABLE,
        V6_CODE_NO_ROUTE,
        &orig[..quote],
    );
    let sum = checksum::add(
        checksum::pseudo_header_v6(from, src, PROTO_ICMPV6, plen as u32),
        icmp,
    );
    set_checksum(icmp, !checksum::fold(sum));
    Some(total)
}

/// What an ICMPv6 "packet too big" says about the UDP datagram it quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooBig {
    /// The MTU of the link the datagram did not fit.
    pub mtu: u32,
    /// The quoted datagram's source and destination.
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
}

/// Reads an ICMPv6 message as a raw ICMPv6 socket returns it (no IPv6 header in front):
/// `Some` when it is a "packet too big" quoting an IPv6 packet that carries UDP right
/// after its fixed header (as our underlay datagrams do). The quote is usually cut short
/// (the message fits 1280 bytes), so only the quoted headers are required; anything else
/// (another type, a quote too short for them, not IPv6, not UDP) is `None`.
pub fn too_big_v6(msg: &[u8]) -> Option<TooBig> {
    if msg.get(field::TYPE..=field::CODE)? != [V6_TYPE_PACKET_TOO_BIG, 0] {
        return None;
    }
    // In "packet too big" the unused word of other errors holds the MTU.
    let mtu = u32::from_be_bytes(msg.get(field::UNUSED)?.try_into().ok()?);
    let quoted = msg.get(ERROR_HEADER_LEN..ERROR_HEADER_LEN + ipv6::HEADER_LEN + 8)?;
    let p = ipv6::Packet::new_unchecked(quoted);
    if p.version() != 6 || p.next_header() != ip::PROTO_UDP {
        return None;
    }
    Some(TooBig {
        mtu,
        src: p.src_addr(),
        dst: p.dst_addr(),
    })
}

/// Whether `a` can be the source of a packet we answer: a single host, not 0.0.0.0, the
/// limited broadcast, a multicast group, loopback or class E.
fn is_host_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || a.is_loopback()
        || a.octets()[0] >= 240)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);

    /// A UDP datagram 10.244.1.5:1000 → 10.250.0.1:53 with `n` payload bytes.
    fn udp(n: usize) -> Vec<u8> {
        let mut b = vec![0u8; 28 + n];
        ipv4::Repr {
            src_addr: Ipv4Addr::new(10, 244, 1, 5),
            dst_addr: Ipv4Addr::new(10, 250, 0, 1),
            protocol: ip::PROTO_UDP,
            payload_len: (8 + n) as u16,
            ttl: 63,
            ident: 0,
        }
        .emit(&mut b);
        b[20..28].copy_from_slice(&[0x03, 0xe8, 0, 53, 0, (8 + n) as u8, 0, 0]);
        for (i, x) in b[28..].iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn builds_reply() {
        let orig = udp(10);
        let mut out = [0u8; 1500];
        let n = net_unreachable_v4(&orig, ROUTER, &mut out).unwrap();
        assert_eq!(n, 20 + 8 + orig.len());
        let p = ipv4::Packet::new_checked(&out[..n]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(
            (p.src_addr(), p.dst_addr(), p.protocol(), p.ttl()),
            (ROUTER, Ipv4Addr::new(10, 244, 1, 5), PROTO_ICMP, 64)
        );
        let icmp = p.payload();
        assert_eq!(&icmp[..2], &[3, 0]);
        assert_eq!(&icmp[4..8], &[0; 4]);
        assert_eq!(checksum::checksum(icmp), 0);
        assert_eq!(&icmp[8..], &orig[..]);
    }

    #[test]
    fn quote_limited_to_576() {
        let orig = udp(1400);
        let mut out = [0u8; 1500];
        let n = net_unreachable_v4(&orig, ROUTER, &mut out).unwrap();
        assert_eq!(n, 576);
        assert_eq!(&out[28..576], &orig[..548]);
        // A small buffer still gets header + 8 bytes.
        let mut small = [0u8; 56];
        assert_eq!(net_unreachable_v4(&orig, ROUTER, &mut small), Some(56));
        assert_eq!(net_unreachable_v4(&orig, ROUTER, &mut small[..55]), None);
        let p = ipv4::Packet::new_checked(&small[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(checksum::checksum(p.payload()), 0);
    }

    #[test]
    fn never_answers() {
        let mut out = [0u8; 1500];
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = udp(10);
            f(&mut b);
            ipv4::Packet::new_unchecked(&mut b[..]).fill_checksum();
            b
        };
        let cases = [
            with(&|b| b[12..16].copy_from_slice(&[0, 0, 0, 0])),
            with(&|b| b[12..16].copy_from_slice(&[255; 4])),
            with(&|b| b[12..16].copy_from_slice(&[224, 0, 0, 1])),
            with(&|b| b[16..20].copy_from_slice(&[239, 1, 2, 3])),
            with(&|b| b[16..20].copy_from_slice(&[255; 4])),
            with(&|b| b[7] = 1), // offset 8: non-first fragment
            with(&|b| {
                b[9] = PROTO_ICMP;
                b[20] = 3; // an ICMP error
            }),
            with(&|b| {
                b[9] = PROTO_ICMP;
                b[20] = 11;
            }),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(net_unreachable_v4(c, ROUTER, &mut out), None, "case {i}");
        }
        // An echo request is answered; a first fragment too.
        let echo = with(&|b| {
            b[9] = PROTO_ICMP;
            b[20] = 8;
        });
        assert!(net_unreachable_v4(&echo, ROUTER, &mut out).is_some());
        let first = with(&|b| b[6] = 0x20);
        assert!(net_unreachable_v4(&first, ROUTER, &mut out).is_some());
        assert_eq!(net_unreachable_v4(&[0x60; 60], ROUTER, &mut out), None);
    }

    /// A "packet too big" (MTU 1280) as a raw ICMPv6 socket reads it, quoting the first
    /// `quote` bytes of a UDP datagram fd00::1 → fd00::2 of 1500 bytes.
    fn too_big_msg(quote: usize) -> Vec<u8> {
        let mut orig = vec![0u8; 1500];
        ipv6::Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: "fd00::2".parse().unwrap(),
            next_header: ip::PROTO_UDP,
            payload_len: 1460,
            hop_limit: 64,
        }
        .emit(&mut orig);
        let mut m = vec![V6_TYPE_PACKET_TOO_BIG, 0, 0xab, 0xcd, 0, 0, 5, 0];
        m.extend_from_slice(&orig[..quote]);
        m
    }

    #[test]
    fn reads_packet_too_big_about_a_udp_datagram() {
        let want = TooBig {
            mtu: 1280,
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
        };
        assert_eq!(
            too_big_v6(&too_big_msg(1232)),
            Some(want),
            "usual cut quote"
        );
        assert_eq!(too_big_v6(&too_big_msg(48)), Some(want), "headers only");
        assert_eq!(too_big_v6(&too_big_msg(47)), None, "UDP header cut");
        let mut m = too_big_msg(100);
        m[0] = V6_TYPE_DEST_UNREACHABLE;
        assert_eq!(too_big_v6(&m), None, "another type");
        let mut m = too_big_msg(100);
        m[ERROR_HEADER_LEN + 6] = PROTO_ICMPV6;
        assert_eq!(too_big_v6(&m), None, "not UDP");
        let mut m = too_big_msg(100);
        m[ERROR_HEADER_LEN] = 0x45;
        assert_eq!(too_big_v6(&m), None, "not IPv6");
        for n in 0..8 {
            assert_eq!(too_big_v6(&too_big_msg(100)[..n]), None, "{n} bytes");
        }
    }

    fn v6(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 40];
        ipv6::Repr {
            src_addr: "fd00:1::5".parse().unwrap(),
            dst_addr: "fd00:9::1".parse().unwrap(),
            next_header: next,
            payload_len: payload.len() as u16,
            hop_limit: 64,
        }
        .emit(&mut b);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn v6_reply() {
        let from: Ipv6Addr = "fd00:1::".parse().unwrap();
        let orig = v6(ip::PROTO_UDP, &[0u8; 2000]);
        let mut out = [0u8; 2000];
        let n = no_route_v6(&orig, from, &mut out).unwrap();
        assert_eq!(n, 1280);
        assert_eq!(&out[48..n], &orig[..1280 - 48]);
        assert_eq!(out[40..42], [1, 0]);
        let src: Ipv6Addr = "fd00:1::5".parse().unwrap();
        let sum = checksum::add(
            checksum::pseudo_header_v6(from, src, PROTO_ICMPV6, (n - 40) as u32),
            &out[40..n],
        );
        assert_eq!(checksum::fold(sum), 0xffff);
        assert_eq!(&out[24..40], &src.octets());
        // ICMPv6 errors are not answered; echo requests (128) are.
        assert_eq!(
            no_route_v6(&v6(PROTO_ICMPV6, &[1, 0, 0, 0]), from, &mut out),
            None
        );
        assert!(no_route_v6(&v6(PROTO_ICMPV6, &[128, 0, 0, 0]), from, &mut out).is_some());
        assert_eq!(no_route_v6(&udp(4), from, &mut out), None);
        assert_eq!(no_route_v6(&orig, from, &mut out[..87]), None);
    }

    proptest! {
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..120), n in 0usize..700) {
            let mut out = vec![0u8; n];
            if let Some(len) = net_unreachable_v4(&buf, ROUTER, &mut out) {
                prop_assert!(len <= n.min(MAX_V4_ERROR_LEN));
                let p = ipv4::Packet::new_checked(&out[..len]).unwrap();
                prop_assert!(p.verify_checksum());
                prop_assert_eq!(checksum::checksum(p.payload()), 0);
            }
            let _ = no_route_v6(&buf, Ipv6Addr::LOCALHOST, &mut out);
            let _ = too_big_v6(&buf);
        }
    }
}
