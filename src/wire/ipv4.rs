//! IPv4 headers (RFC 791).
//!
//! A checked, zero-copy [`Packet`] view, a small [`Repr`] for the 20-byte headers overlayd
//! builds itself (ICMP errors, test packets), [`outer_payload`] for the raw GRE socket
//! (whose reads start with the outer IPv4 header), and [`ipv4_dst`]/[`ipv4_src`], which read
//! fixed offsets for the forwarding hot path. What IPv4 shares with IPv6 (protocol numbers,
//! the inner-packet gate) is in [`ip`](super::ip). Pure: no I/O, no allocation.
//!
//! Errors use the inner-packet vocabulary: `Truncated` when the buffer is shorter than the
//! header claims, `BadInner` when the header itself is malformed; [`outer_payload`] maps the
//! latter to `BadHeader`.

use std::net::Ipv4Addr;

use crate::drop::DropReason;
use crate::wire::checksum;
use crate::wire::proto::PROTO_GRE;

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

mod field {
    use std::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// A read/write view of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`] passes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks what every accessor relies on: version 4, IHL ≥ 5, header and total length
    /// within the buffer (`Truncated` if not), total length ≥ header length (`BadInner`).
    /// Trailing bytes past the total length (link padding) are allowed and ignored.
    pub fn check_len(&self) -> Result<(), DropReason> {
        let b = self.buffer.as_ref();
        if b.is_empty() {
            return Err(DropReason::Truncated);
        }
        if b[0] >> 4 != 4 || self.header_len() < HEADER_LEN {
            return Err(DropReason::BadInner);
        }
        if b.len() < HEADER_LEN || b.len() < self.header_len() {
            return Err(DropReason::Truncated);
        }
        let total = self.total_len() as usize;
        if total < self.header_len() {
            return Err(DropReason::BadInner);
        }
        if total > b.len() {
            return Err(DropReason::Truncated);
        }
        Ok(())
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (4 once checked).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }

    /// DSCP and ECN byte.
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// Total length: header and payload.
    pub fn total_len(&self) -> u16 {
        self.u16_at(field::LENGTH.start)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        self.u16_at(field::IDENT.start)
    }

    /// DF flag.
    pub fn dont_frag(&self) -> bool {
        self.u16_at(field::FLG_OFF.start) & 0x4000 != 0
    }

    /// MF flag.
    pub fn more_frags(&self) -> bool {
        self.u16_at(field::FLG_OFF.start) & 0x2000 != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.u16_at(field::FLG_OFF.start) & 0x1fff) << 3
    }

    /// The flags and fragment offset word as on the wire: reserved bit, DF, MF, and the
    /// offset in 8-byte units.
    pub fn frag_field(&self) -> u16 {
        self.u16_at(field::FLG_OFF.start)
    }

    /// Whether this is a fragment at all (MF set or offset nonzero).
    pub fn is_fragment(&self) -> bool {
        self.u16_at(field::FLG_OFF.start) & 0x3fff != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Payload protocol.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM.start)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        addr_at(self.buffer.as_ref(), field::SRC.start)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        addr_at(self.buffer.as_ref(), field::DST.start)
    }

    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The packet without link padding: the first `total_len` bytes.
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len() as usize]
    }

    /// The payload: from the end of the header to `total_len`.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len() as usize]
    }

    fn u16_at(&self, off: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[off], b[off + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&ident.to_be_bytes());
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    /// Recomputes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        let h = self.header_len();
        let b = self.buffer.as_mut();
        b[field::CHECKSUM].fill(0);
        let c = checksum::checksum(&b[..h]);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// An option-less IPv4 header overlayd writes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: u8,
    /// Payload bytes after the 20-byte header.
    pub payload_len: u16,
    pub ttl: u8,
    /// Identification (0 where it means nothing: the packet is never fragmented, or its
    /// ID is chosen per datagram elsewhere).
    pub ident: u16,
}

impl Repr {
    /// Reads the fields of a checked packet. `BadInner` when the header checksum fails.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, DropReason> {
        if !p.verify_checksum() {
            return Err(DropReason::BadInner);
        }
        Ok(Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: p.total_len() - p.header_len() as u16,
            ttl: p.ttl(),
            ident: p.ident(),
        })
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header (TOS 0, no flags, checksum computed once) at the start of
    /// `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let total = (HEADER_LEN as u16).saturating_add(self.payload_len);
        let b = &mut buf[..HEADER_LEN];
        b[..4].copy_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8]);
        b[field::IDENT].copy_from_slice(&self.ident.to_be_bytes());
        b[field::FLG_OFF.start..field::CHECKSUM.end].copy_from_slice(&[
            0,
            0,
            self.ttl,
            self.protocol,
            0,
            0,
        ]);
        b[field::SRC].copy_from_slice(&self.src_addr.octets());
        b[field::DST].copy_from_slice(&self.dst_addr.octets());
        let c = checksum::checksum(b);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// Splits what a raw IP-protocol-47 socket reads into the outer source address and the
/// GRE packet (header onwards, padding trimmed). `BadHeader` unless it is a well-formed
/// IPv4 packet carrying GRE; `Truncated` when shorter than its headers claim.
pub fn outer_payload(buf: &[u8]) -> Result<(Ipv4Addr, &[u8]), DropReason> {
    let p = Packet::new_checked(buf).map_err(|e| match e {
        DropReason::BadInner => DropReason::BadHeader,
        e => e,
    })?;
    if p.protocol() != PROTO_GRE {
        return Err(DropReason::BadHeader);
    }
    let (h, t) = (p.header_len(), p.total_len() as usize);
    Ok((p.src_addr(), &buf[h..t]))
}

/// Fast path: the IPv4 destination of `pkt`, if it starts like an IPv4 header.
#[inline]
pub fn ipv4_dst(pkt: &[u8]) -> Option<Ipv4Addr> {
    let p = Packet::new_unchecked(pkt.get(..HEADER_LEN)?);
    (p.version() == 4).then(|| p.dst_addr())
}

/// Fast path: the IPv4 source of `pkt`, if it starts like an IPv4 header.
#[inline]
pub fn ipv4_src(pkt: &[u8]) -> Option<Ipv4Addr> {
    let p = Packet::new_unchecked(pkt.get(..HEADER_LEN)?);
    (p.version() == 4).then(|| p.src_addr())
}

fn addr_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::{PROTO_ICMP, PROTO_UDP};
    use proptest::prelude::*;

    /// ICMP echo request 10.244.1.1 → 10.244.2.1, header of a real capture, 4 payload bytes.
    const PKT: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 244, 1, 1, 10,
        244, 2, 1, 8, 0, 0, 0,
    ];

    fn pkt() -> [u8; 24] {
        let mut b = PKT;
        Packet::new_unchecked(&mut b[..]).fill_checksum();
        b
    }

    #[test]
    fn deconstruct() {
        let b = pkt();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.version(), p.header_len(), p.total_len()), (4, 20, 24));
        assert_eq!(
            (p.ident(), p.dont_frag(), p.more_frags(), p.frag_offset()),
            (0x1234, true, false, 0)
        );
        assert_eq!(p.frag_field(), 0x4000);
        assert!(!p.is_fragment());
        assert_eq!((p.ttl(), p.protocol(), p.tos()), (64, PROTO_ICMP, 0));
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 244, 2, 1));
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &[8, 0, 0, 0]);
        assert_eq!(ipv4_dst(&b), Some(Ipv4Addr::new(10, 244, 2, 1)));
        assert_eq!(ipv4_src(&b), Some(Ipv4Addr::new(10, 244, 1, 1)));
    }

    #[test]
    fn construct() {
        let r = Repr {
            src_addr: Ipv4Addr::new(10, 244, 1, 1),
            dst_addr: Ipv4Addr::new(10, 244, 2, 1),
            protocol: PROTO_ICMP,
            payload_len: 4,
            ttl: 64,
            ident: 0x1234,
        };
        let mut b = [0u8; 24];
        r.emit(&mut b);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(&b[4..6], &[0x12, 0x34], "the ID on the wire, big-endian");
        assert_eq!(p.ident(), 0x1234);
        assert_eq!(Repr::parse(&p), Ok(r));
        let mut m = Packet::new_unchecked(&mut b[..]);
        m.set_ttl(1);
        assert!(!m.verify_checksum());
        m.fill_checksum();
        assert!(m.verify_checksum());
    }

    #[test]
    fn fragments() {
        let mut b = pkt();
        b[6] = 0x20; // MF, offset 0: first fragment
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.frag_field(), 0x2000);
        assert!(p.is_fragment() && p.more_frags() && p.frag_offset() == 0);
        b[6] = 0x00;
        b[7] = 0x02; // offset 16 bytes
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.frag_offset(), 16);
        assert!(p.is_fragment());
    }

    #[test]
    fn rejects() {
        let b = pkt();
        assert_eq!(
            Packet::new_checked(&b[..0]).unwrap_err(),
            DropReason::Truncated
        );
        assert_eq!(
            Packet::new_checked(&b[..19]).unwrap_err(),
            DropReason::Truncated
        );
        assert_eq!(
            Packet::new_checked(&b[..23]).unwrap_err(),
            DropReason::Truncated
        );
        let mut v = b;
        v[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap_err(),
            DropReason::BadInner
        );
        let mut v = b;
        v[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap_err(),
            DropReason::BadInner
        );
        let mut v = b;
        v[0] = 0x46; // 24-byte header claimed: fits the buffer but total length is 24, fine
        assert!(Packet::new_checked(&v[..]).is_ok());
        v[0] = 0x47; // 28-byte header: longer than the buffer
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap_err(),
            DropReason::Truncated
        );
        let mut v = b;
        v[3] = 19; // total length below header length
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap_err(),
            DropReason::BadInner
        );
        let mut v = b;
        v[10] ^= 1;
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(DropReason::BadInner));
        assert_eq!(ipv4_dst(&b[..19]), None);
        assert_eq!(ipv4_dst(&[0x60; 40]), None);
    }

    #[test]
    fn outer() {
        let mut b = [0u8; 20 + 8 + 3];
        Repr {
            src_addr: Ipv4Addr::new(192, 168, 77, 1),
            dst_addr: Ipv4Addr::new(192, 168, 77, 2),
            protocol: PROTO_GRE,
            payload_len: 8,
            ttl: 64,
            ident: 0,
        }
        .emit(&mut b);
        b[20..28].copy_from_slice(&[0x20, 0, 8, 0, 0, 0, 0, 1]);
        let (src, gre) = outer_payload(&b).unwrap();
        assert_eq!(src, Ipv4Addr::new(192, 168, 77, 1));
        assert_eq!(gre, &[0x20, 0, 8, 0, 0, 0, 0, 1]);
        b[9] = PROTO_UDP;
        assert_eq!(outer_payload(&b), Err(DropReason::BadHeader));
        b[0] = 0x60;
        assert_eq!(outer_payload(&b), Err(DropReason::BadHeader));
        assert_eq!(outer_payload(&b[..10]), Err(DropReason::BadHeader));
        b[0] = 0x45;
        assert_eq!(outer_payload(&b[..10]), Err(DropReason::Truncated));
    }

    fn repr() -> impl Strategy<Value = Repr> {
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u8>(),
            0u16..2000,
            any::<u8>(),
            any::<u16>(),
        )
            .prop_map(|(s, d, protocol, payload_len, ttl, ident)| Repr {
                src_addr: s.into(),
                dst_addr: d.into(),
                protocol,
                payload_len,
                ttl,
                ident,
            })
    }

    proptest! {
        #[test]
        fn round_trip(r in repr()) {
            let mut b = vec![0u8; HEADER_LEN + r.payload_len as usize];
            r.emit(&mut b);
            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p), Ok(r));
            prop_assert_eq!(p.packet().len(), b.len());
        }

        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&buf[..]) {
                let _ = Repr::parse(&p);
                prop_assert!(p.payload().len() + p.header_len() == p.total_len() as usize);
            }
            let _ = outer_payload(&buf);
            let _ = (ipv4_dst(&buf), ipv4_src(&buf));
        }
    }
}
