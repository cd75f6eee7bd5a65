//! What IPv4 and IPv6 have in common: protocol numbers, one length-checked header parse,
//! the pseudo-header sum, and the classification of inner packets.
//!
//! The version-specific views are [`ipv4::Packet`] and [`ipv6::Packet`]; this module picks
//! one by the version nibble. [`parse`] is the header check the offloads build on (its
//! [`Error`] names how many bytes were needed, for their error messages); [`inner_packet`]
//! is the one gate every decapsulated packet passes before it is written to the TUN device
//! (its errors are drop reasons). [`src_addr`] and [`dst_addr`] read fixed offsets for the
//! forwarding hot path. Pure: no I/O, no allocation.

use std::net::IpAddr;

use crate::drop::DropReason;
use crate::wire::checksum;
use crate::wire::{ipv4, ipv6};

/// The IP protocol numbers, defined in [`proto`](super::proto) (below the version views,
/// which use them too) and named here with the rest of what both versions share.
pub use crate::wire::proto::{
    PROTO_DCCP, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    PROTO_UDPLITE,
};

/// IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Ipv4,
    Ipv6,
}

impl Version {
    /// The version of the packet starting at `pkt`, by its first nibble; `None` when `pkt`
    /// is empty or the nibble is neither 4 nor 6.
    #[inline]
    pub fn of(pkt: &[u8]) -> Option<Version> {
        match pkt.first()? >> 4 {
            4 => Some(Version::Ipv4),
            6 => Some(Version::Ipv6),
            _ => None,
        }
    }

    /// The EtherType that carries this version.
    pub fn ethertype(self) -> u16 {
        match self {
            Version::Ipv4 => crate::wire::ether::ETHERTYPE_IPV4,
            Version::Ipv6 => crate::wire::ether::ETHERTYPE_IPV6,
        }
    }

    /// The version number as in the header's first nibble.
    pub fn number(self) -> u8 {
        match self {
            Version::Ipv4 => 4,
            Version::Ipv6 => 6,
        }
    }
}

/// Why [`parse`] refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header or the length it claims: `needed` bytes
    /// were needed, `len` are there.
    Truncated { needed: usize, len: usize },
    /// The first nibble is neither 4 nor 6 (the nibble).
    NotIp(u8),
    /// IPv4 header length below 5 words, or a total length shorter than the header.
    BadHeader,
}

impl Error {
    /// The drop counter this error is accounted under.
    pub fn drop_reason(self) -> DropReason {
        match self {
            Error::Truncated { .. } => DropReason::Truncated,
            Error::NotIp(_) | Error::BadHeader => DropReason::BadInner,
        }
    }
}

/// The version-agnostic facts of an IP header whose lengths [`parse`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// IP header length: IPv4 IHL × 4; 40 for IPv6 (extension headers are not walked).
    pub header_len: usize,
    /// Packet length according to the IP length field (≤ the buffer length).
    pub total_len: usize,
    /// IPv4 protocol or the first IPv6 next header.
    pub protocol: u8,
}

impl Header {
    /// Whether this is an IPv6 header.
    pub fn is_v6(&self) -> bool {
        self.version == Version::Ipv6
    }
}

/// Parses the IP header at the start of `pkt` and checks that its lengths fit the buffer:
/// the header, then (IPv4) IHL ≥ 5, the whole header, total length ≥ header length, and
/// the total length. Trailing bytes past the total length are allowed. After `Ok`, the
/// version's view ([`ipv4::Packet`], [`ipv6::Packet`]) can be made unchecked over
/// `&pkt[..total_len]` and none of its header accessors panics.
pub fn parse(pkt: &[u8]) -> Result<Header, Error> {
    let first = *pkt.first().ok_or(Error::Truncated { needed: 1, len: 0 })?;
    match first >> 4 {
        4 => {
            need(pkt, ipv4::HEADER_LEN)?;
            let p = ipv4::Packet::new_unchecked(pkt);
            let header_len = p.header_len();
            if header_len < ipv4::HEADER_LEN {
                return Err(Error::BadHeader);
            }
            need(pkt, header_len)?;
            let total_len = usize::from(p.total_len());
            if total_len < header_len {
                return Err(Error::BadHeader);
            }
            need(pkt, total_len)?;
            Ok(Header {
                version: Version::Ipv4,
                header_len,
                total_len,
                protocol: p.protocol(),
            })
        }
        6 => {
            need(pkt, ipv6::HEADER_LEN)?;
            let p = ipv6::Packet::new_unchecked(pkt);
            let total_len = p.total_len();
            need(pkt, total_len)?;
            Ok(Header {
                version: Version::Ipv6,
                header_len: ipv6::HEADER_LEN,
                total_len,
                protocol: p.next_header(),
            })
        }
        v => Err(Error::NotIp(v)),
    }
}

/// `Truncated` unless `pkt` holds at least `needed` bytes.
fn need(pkt: &[u8], needed: usize) -> Result<(), Error> {
    if pkt.len() < needed {
        return Err(Error::Truncated {
            needed,
            len: pkt.len(),
        });
    }
    Ok(())
}

/// Whether `pkt` is exactly one IPv4 or IPv6 packet: the length in its header covers the
/// whole buffer. A received datagram bigger than its GRO segment size is either a run of
/// merged datagrams or, when this holds, one whole tunnel-GSO frame from a peer kernel.
pub fn len_covers(pkt: &[u8]) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= ipv4::HEADER_LEN => {
            usize::from(ipv4::Packet::new_unchecked(pkt).total_len()) == pkt.len()
        }
        Some(6) if pkt.len() >= ipv6::HEADER_LEN => {
            ipv6::Packet::new_unchecked(pkt).total_len() == pkt.len()
        }
        _ => false,
    }
}

/// Sum of the TCP/UDP pseudo-header for a transport segment of `l4_len` bytes carried by
/// the IP packet `pkt`, whose fixed header of `version` is complete (checked by the
/// caller: [`parse`], or a header block it built).
///
/// # Panics
/// If `pkt` is shorter than the version's fixed header.
#[inline]
pub fn pseudo_header_sum(pkt: &[u8], version: Version, protocol: u8, l4_len: usize) -> u64 {
    match version {
        Version::Ipv4 => {
            let p = ipv4::Packet::new_unchecked(pkt);
            checksum::pseudo_header_v4(p.src_addr(), p.dst_addr(), protocol, l4_len as u16)
        }
        Version::Ipv6 => {
            let p = ipv6::Packet::new_unchecked(pkt);
            checksum::pseudo_header_v6(p.src_addr(), p.dst_addr(), protocol, l4_len as u32)
        }
    }
}

/// An inner IP packet that passed [`inner_packet`]: version known, lengths consistent, and
/// the slice trimmed to exactly the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerIp<'a> {
    V4(&'a [u8]),
    V6(&'a [u8]),
}

impl<'a> InnerIp<'a> {
    /// The whole packet, without padding.
    pub fn packet(&self) -> &'a [u8] {
        match *self {
            InnerIp::V4(b) | InnerIp::V6(b) => b,
        }
    }

    /// The EtherType of this packet's version.
    pub fn ethertype(&self) -> u16 {
        match self {
            InnerIp::V4(_) => crate::wire::ether::ETHERTYPE_IPV4,
            InnerIp::V6(_) => crate::wire::ether::ETHERTYPE_IPV6,
        }
    }

    /// Source address.
    pub fn src_addr(&self) -> IpAddr {
        match *self {
            InnerIp::V4(b) => IpAddr::V4(ipv4::Packet::new_unchecked(b).src_addr()),
            InnerIp::V6(b) => IpAddr::V6(ipv6::Packet::new_unchecked(b).src_addr()),
        }
    }

    /// Destination address.
    pub fn dst_addr(&self) -> IpAddr {
        match *self {
            InnerIp::V4(b) => IpAddr::V4(ipv4::Packet::new_unchecked(b).dst_addr()),
            InnerIp::V6(b) => IpAddr::V6(ipv6::Packet::new_unchecked(b).dst_addr()),
        }
    }

    /// The payload protocol (IPv6: the first next-header value).
    pub fn protocol(&self) -> u8 {
        match *self {
            InnerIp::V4(b) => ipv4::Packet::new_unchecked(b).protocol(),
            InnerIp::V6(b) => ipv6::Packet::new_unchecked(b).next_header(),
        }
    }
}

/// Classifies and validates an inner IP packet by its version nibble. IPv4: IHL ≥ 5 and
/// header ≤ total length ≤ buffer ([`ipv4::Packet::check_len`]); IPv6: 40 + payload
/// length ≤ buffer. Trailing padding is trimmed off. The IPv4 header checksum is not
/// checked here (the kernel does that when the packet is written to the TUN device).
/// `Truncated` or `BadInner` otherwise.
pub fn inner_packet(buf: &[u8]) -> Result<InnerIp<'_>, DropReason> {
    match buf.first().map(|b| b >> 4) {
        None => Err(DropReason::Truncated),
        Some(4) => {
            let p = ipv4::Packet::new_checked(buf)?;
            Ok(InnerIp::V4(&buf[..usize::from(p.total_len())]))
        }
        Some(6) => {
            let p = ipv6::Packet::new_checked(buf)?;
            Ok(InnerIp::V6(&buf[..p.total_len()]))
        }
        Some(_) => Err(DropReason::BadInner),
    }
}

/// Fast path: the destination of an IPv4 or IPv6 packet by fixed offsets.
#[inline]
pub fn dst_addr(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 => ipv4::ipv4_dst(pkt).map(IpAddr::V4),
        6 if pkt.len() >= ipv6::HEADER_LEN => {
            Some(IpAddr::V6(ipv6::Packet::new_unchecked(pkt).dst_addr()))
        }
        _ => None,
    }
}

/// Fast path: the source of an IPv4 or IPv6 packet by fixed offsets.
#[inline]
pub fn src_addr(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 => ipv4::ipv4_src(pkt).map(IpAddr::V4),
        6 if pkt.len() >= ipv6::HEADER_LEN => {
            Some(IpAddr::V6(ipv6::Packet::new_unchecked(pkt).src_addr()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// ICMP echo request 10.244.1.1 → 10.244.2.1, 4 payload bytes, header checksum filled.
    fn v4() -> [u8; 24] {
        let mut b = [
            0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 244, 1, 1,
            10, 244, 2, 1, 8, 0, 0, 0,
        ];
        ipv4::Packet::new_unchecked(&mut b[..]).fill_checksum();
        b
    }

    /// UDP fd00::1 → fd00::2 with 8 payload bytes and 2 bytes of padding.
    fn v6() -> [u8; 50] {
        let mut b = [0u8; 50];
        ipv6::Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: "fd00::2".parse().unwrap(),
            next_header: PROTO_UDP,
            payload_len: 8,
            hop_limit: 64,
        }
        .emit(&mut b);
        b
    }

    #[test]
    fn parses_both_versions() {
        let b = v4();
        let h = parse(&b).unwrap();
        assert_eq!(
            h,
            Header {
                version: Version::Ipv4,
                header_len: 20,
                total_len: 24,
                protocol: PROTO_ICMP
            }
        );
        assert!(!h.is_v6());
        let b = v6();
        let h = parse(&b).unwrap();
        assert_eq!(
            (h.version, h.header_len, h.total_len, h.protocol),
            (Version::Ipv6, 40, 48, PROTO_UDP)
        );
        assert!(h.is_v6());
        assert_eq!((Version::Ipv4.number(), Version::Ipv6.number()), (4, 6));
        assert_eq!(Version::of(&v4()), Some(Version::Ipv4));
        assert_eq!(Version::of(&v6()[..1]), Some(Version::Ipv6));
        assert_eq!(Version::of(&[]), None);
        assert_eq!(Version::of(&[0x50]), None);
        assert_eq!(
            (Version::Ipv4.ethertype(), Version::Ipv6.ethertype()),
            (0x0800, 0x86dd)
        );
    }

    #[test]
    fn parse_errors_name_the_bytes_needed() {
        let b = v4();
        assert_eq!(parse(&[]), Err(Error::Truncated { needed: 1, len: 0 }));
        assert_eq!(
            parse(&b[..10]),
            Err(Error::Truncated {
                needed: 20,
                len: 10
            })
        );
        assert_eq!(
            parse(&b[..23]),
            Err(Error::Truncated {
                needed: 24,
                len: 23
            })
        );
        let mut v = b;
        v[0] = 0x44;
        assert_eq!(parse(&v), Err(Error::BadHeader));
        // Length first: a short buffer is truncated whatever its IHL says.
        assert_eq!(
            parse(&v[..12]),
            Err(Error::Truncated {
                needed: 20,
                len: 12
            })
        );
        v[0] = 0x47;
        assert_eq!(
            parse(&v),
            Err(Error::Truncated {
                needed: 28,
                len: 24
            })
        );
        let mut v = b;
        v[3] = 19;
        assert_eq!(parse(&v), Err(Error::BadHeader));
        let s = v6();
        assert_eq!(
            parse(&s[..39]),
            Err(Error::Truncated {
                needed: 40,
                len: 39
            })
        );
        assert_eq!(
            parse(&s[..47]),
            Err(Error::Truncated {
                needed: 48,
                len: 47
            })
        );
        assert_eq!(parse(&[0x10; 40]), Err(Error::NotIp(1)));
        assert_eq!(
            Error::Truncated { needed: 1, len: 0 }.drop_reason(),
            DropReason::Truncated
        );
        assert_eq!(Error::NotIp(5).drop_reason(), DropReason::BadInner);
        assert_eq!(Error::BadHeader.drop_reason(), DropReason::BadInner);
    }

    #[test]
    fn len_covers_whole_packets_only() {
        let b = v4();
        assert!(len_covers(&b));
        assert!(!len_covers(&b[..23]));
        let s = v6();
        assert!(len_covers(&s[..48]));
        assert!(!len_covers(&s));
        assert!(!len_covers(&[]));
        assert!(!len_covers(&[0x45, 0, 0, 4]));
        assert!(!len_covers(&[0x55; 64]));
    }

    #[test]
    fn pseudo_header_matches_checksum_module() {
        let b = v4();
        assert_eq!(
            pseudo_header_sum(&b, Version::Ipv4, PROTO_TCP, 300),
            checksum::pseudo_header_v4(
                Ipv4Addr::new(10, 244, 1, 1),
                Ipv4Addr::new(10, 244, 2, 1),
                PROTO_TCP,
                300
            )
        );
        let s = v6();
        assert_eq!(
            pseudo_header_sum(&s, Version::Ipv6, PROTO_UDP, 70_000),
            checksum::pseudo_header_v6(
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                PROTO_UDP,
                70_000
            )
        );
    }

    #[test]
    fn inner() {
        let mut b = [0u8; 30];
        b[..24].copy_from_slice(&v4());
        let i = inner_packet(&b).unwrap();
        assert_eq!(i, InnerIp::V4(&b[..24]));
        assert_eq!(i.dst_addr(), IpAddr::V4(Ipv4Addr::new(10, 244, 2, 1)));
        assert_eq!(i.src_addr(), IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!((i.protocol(), i.ethertype()), (PROTO_ICMP, 0x0800));
        assert_eq!(dst_addr(&b), Some(IpAddr::V4(Ipv4Addr::new(10, 244, 2, 1))));
        assert_eq!(src_addr(&b), Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1))));

        let v6 = v6();
        let i = inner_packet(&v6).unwrap();
        assert_eq!(i.packet().len(), 48);
        assert_eq!(i.src_addr(), "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(i.dst_addr(), "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(dst_addr(&v6), Some("fd00::2".parse().unwrap()));
        assert_eq!(src_addr(&v6), Some("fd00::1".parse().unwrap()));
        assert_eq!((i.protocol(), i.ethertype()), (PROTO_UDP, 0x86dd));
        assert_eq!(inner_packet(&v6[..47]), Err(DropReason::Truncated));
        assert_eq!(inner_packet(&v6[..39]), Err(DropReason::Truncated));
        assert_eq!(inner_packet(&[]), Err(DropReason::Truncated));
        assert_eq!(inner_packet(&[0x50; 40]), Err(DropReason::BadInner));
        assert_eq!(inner_packet(&b[..23]), Err(DropReason::Truncated));
        // The IPv4 view checks the header fields before the length (unlike `parse`).
        assert_eq!(inner_packet(&[0x44; 12]), Err(DropReason::BadInner));
        assert_eq!(dst_addr(&v6[..39]), None);
        assert_eq!(src_addr(&[0x10; 40]), None);
    }

    proptest! {
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(h) = parse(&buf) {
                prop_assert!(h.header_len <= h.total_len && h.total_len <= buf.len());
                let _ = pseudo_header_sum(&buf, h.version, h.protocol, h.total_len - h.header_len);
                prop_assert_eq!(len_covers(&buf), h.total_len == buf.len());
            }
            if let Ok(i) = inner_packet(&buf) {
                let _ = (i.src_addr(), i.dst_addr(), i.protocol());
                prop_assert!(i.packet().len() <= buf.len());
                prop_assert!(parse(&buf).is_ok());
            }
            let _ = (dst_addr(&buf), src_addr(&buf));
        }
    }
}
