//! IPv6 fixed headers (RFC 8200 §3).
//!
//! A checked, zero-copy [`Packet`] view over the 40-byte fixed header and its payload, and
//! a [`Repr`] for the headers overlayd writes itself (ICMPv6 errors). Extension headers are
//! not walked: [`Packet::next_header`] is the first next-header value. Pure: no I/O, no
//! allocation.
//!
//! Errors use the inner-packet vocabulary, as [`ipv4`](super::ipv4) does: `Truncated` when
//! the buffer is shorter than the header or its payload length claims, `BadInner` when the
//! version is not 6.

use std::net::Ipv6Addr;

use crate::drop::DropReason;

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

mod field {
    use std::ops::Range;

    /// Version (4 bits), traffic class (8), flow label (20).
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`]
    /// passes (those of the fixed header need only its 40 bytes).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks what every accessor relies on: the fixed header and the payload length it
    /// claims fit the buffer (`Truncated` if not), and the version is 6 (`BadInner`).
    /// Trailing bytes past the payload (link padding) are allowed and ignored.
    pub fn check_len(&self) -> Result<(), DropReason> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        if self.version() != 6 {
            return Err(DropReason::BadInner);
        }
        if self.total_len() > b.len() {
            return Err(DropReason::Truncated);
        }
        Ok(())
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (6 once checked).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Traffic class (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        ((self.word0() >> 20) & 0xff) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    /// Payload length: everything after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PAYLOAD_LEN];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Length of the whole packet: the fixed header plus the payload length.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// The first next-header value (the transport protocol when there are no extension
    /// headers).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::SRC.start)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::DST.start)
    }

    /// The packet without link padding: the first [`Self::total_len`] bytes.
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len()]
    }

    /// The payload: from the end of the fixed header to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }

    fn word0(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, the traffic class and the flow label (the first four bytes).
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let w = (6 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, next_header: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = next_header;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }
}

/// Whether `next_header` names an IPv6 extension header (RFC 8200 §4 and the IANA
/// registry): hop-by-hop (0), routing (43), fragment (44), authentication (51),
/// destination options (60), mobility (135), HIP (139), shim6 (140). A packet whose first
/// next header is one of these may still carry any transport behind them.
pub fn is_extension_header(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

/// A fixed IPv6 header overlayd writes itself (traffic class and flow label 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: u8,
    /// Payload bytes after the 40-byte header.
    pub payload_len: u16,
    pub hop_limit: u8,
}

impl Repr {
    /// Reads the fields of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Repr {
        Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: p.payload_len(),
            hop_limit: p.hop_limit(),
        }
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 40-byte header at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let mut p = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        p.set_version_tc_flow(0, 0);
        p.set_payload_len(self.payload_len);
        p.set_next_header(self.next_header);
        p.set_hop_limit(self.hop_limit);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
    }
}

fn addr_at(b: &[u8], off: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::PROTO_UDP;
    use proptest::prelude::*;

    /// UDP fd00::1 → fd00::2, traffic class 0xb8 (EF), flow label 0x12345, hop limit 64,
    /// 8 payload bytes, then 2 bytes of link padding.
    const PKT: [u8; 50] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x08, 17, 64, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, //
        0x03, 0xe8, 0, 53, 0, 8, 0, 0, //
        0xee, 0xee,
    ];

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PKT[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!((p.traffic_class(), p.flow_label()), (0xb8, 0x12345));
        assert_eq!((p.payload_len(), p.total_len()), (8, 48));
        assert_eq!((p.next_header(), p.hop_limit()), (PROTO_UDP, 64));
        assert_eq!(p.src_addr(), a("fd00::1"));
        assert_eq!(p.dst_addr(), a("fd00::2"));
        assert_eq!(p.payload(), &PKT[40..48]);
        assert_eq!(p.packet().len(), 48);
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 50];
        b[40..].copy_from_slice(&PKT[40..]);
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_version_tc_flow(0xb8, 0x12345);
        p.set_payload_len(8);
        p.set_next_header(PROTO_UDP);
        p.set_hop_limit(64);
        p.set_src_addr(a("fd00::1"));
        p.set_dst_addr(a("fd00::2"));
        assert_eq!(b, PKT);
    }

    #[test]
    fn emit_and_parse() {
        let r = Repr {
            src_addr: a("fd00::1"),
            dst_addr: a("fd00::2"),
            next_header: PROTO_UDP,
            payload_len: 8,
            hop_limit: 64,
        };
        let mut b = [0xffu8; 48];
        r.emit(&mut b);
        assert_eq!(&b[..4], &[0x60, 0, 0, 0]);
        assert_eq!(&b[4..40], &PKT[4..40]);
        assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()), r);
        assert_eq!(r.buffer_len(), HEADER_LEN);
    }

    #[test]
    fn extension_headers() {
        for nh in [0, 43, 44, 51, 60, 135, 139, 140] {
            assert!(is_extension_header(nh), "{nh}");
        }
        for nh in [6, 17, 58, 59, 50] {
            assert!(!is_extension_header(nh), "{nh}");
        }
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&PKT[..39]).unwrap_err(),
            DropReason::Truncated
        );
        assert_eq!(
            Packet::new_checked(&PKT[..47]).unwrap_err(),
            DropReason::Truncated
        );
        assert!(Packet::new_checked(&PKT[..48]).is_ok());
        let mut v = PKT;
        v[0] = 0x45;
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap_err(),
            DropReason::BadInner
        );
    }

    proptest! {
        #[test]
        fn round_trip(s in any::<[u8; 16]>(), d in any::<[u8; 16]>(), nh in any::<u8>(),
                      len in 0u16..200, hl in any::<u8>()) {
            let r = Repr {
                src_addr: s.into(),
                dst_addr: d.into(),
                next_header: nh,
                payload_len: len,
                hop_limit: hl,
            };
            let mut b = vec![0u8; HEADER_LEN + usize::from(len)];
            r.emit(&mut b);
            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p), r);
            prop_assert_eq!(p.packet().len(), b.len());
        }

        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&buf[..]) {
                let _ = (p.traffic_class(), p.flow_label(), p.src_addr(), p.dst_addr());
                prop_assert_eq!(p.payload().len() + HEADER_LEN, p.total_len());
            }
        }
    }
}
