//! TCP headers (RFC 9293 §3.1), as the offloads read and rewrite them.
//!
//! A checked, zero-copy [`Packet`] view over a TCP segment (header, options, payload), the
//! [`flags`] bit names, and a small [`Repr`] for option-less headers. overlayd never
//! terminates TCP: it splits super-packets into segments and merges segments back, so the
//! view exposes exactly the fields those rewrite (sequence number, flags, checksum) and
//! compare (ports, ACK number, data offset, options). Checksums need the IP pseudo-header
//! and are summed by the caller ([`ip::pseudo_header_sum`](super::ip::pseudo_header_sum)).
//! Pure: no I/O, no allocation.

use crate::drop::DropReason;

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;
/// Offset of the checksum field in the TCP header (the virtio `csum_offset` for TCP).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// Bits of the flags byte (byte 13 of the header).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

mod field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset (high nibble) and four reserved bits (the lowest is the old NS/AE bit).
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// A read/write view of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`]
    /// passes. The fixed-header accessors need only the bytes of their field (the ports
    /// only the first four).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks what every accessor relies on: the fixed header fits (`Truncated`), the data
    /// offset is at least 5 words (`BadInner`), and the header with its options fits
    /// (`Truncated`).
    pub fn check_len(&self) -> Result<(), DropReason> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        if self.header_len() < HEADER_LEN {
            return Err(DropReason::BadInner);
        }
        if self.header_len() > len {
            return Err(DropReason::Truncated);
        }
        Ok(())
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT.start)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ_NUM.start)
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK_NUM.start)
    }

    /// Data offset in 32-bit words, as on the wire (at least 5 once checked).
    pub fn data_offset(&self) -> u8 {
        self.buffer.as_ref()[field::DATA_OFF] >> 4
    }

    /// Header length in bytes, options included (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset()) * 4
    }

    /// The four reserved bits after the data offset (the lowest is the old NS, now AE, bit).
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::DATA_OFF] & 0x0f
    }

    /// The flags byte: FIN to CWR, see [`flags`].
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Window size.
    pub fn window_len(&self) -> u16 {
        self.u16_at(field::WIN_SIZE.start)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM.start)
    }

    /// Urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        self.u16_at(field::URGENT.start)
    }

    /// The options: the header past its first 20 bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    fn u16_at(&self, off: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[off], b[off + 1]])
    }

    fn u32_at(&self, off: usize) -> u32 {
        let b = &self.buffer.as_ref()[off..off + 4];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, seq: u32) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&seq.to_be_bytes());
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, ack: u32) {
        self.buffer.as_mut()[field::ACK_NUM].copy_from_slice(&ack.to_be_bytes());
    }

    /// Sets the header length in bytes (a multiple of 4, 20 to 60); the reserved bits
    /// become 0.
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the window size.
    pub fn set_window_len(&mut self, window: u16) {
        self.buffer.as_mut()[field::WIN_SIZE].copy_from_slice(&window.to_be_bytes());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, at: u16) {
        self.buffer.as_mut()[field::URGENT].copy_from_slice(&at.to_be_bytes());
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[h..]
    }
}

/// An option-less TCP header. The checksum is left to the caller, who has the pseudo-header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: u8,
    pub window_len: u16,
}

impl Repr {
    /// Reads the fields of a checked segment (its options are not part of the `Repr`).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Repr {
        Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq_number: p.seq_number(),
            ack_number: p.ack_number(),
            flags: p.flags(),
            window_len: p.window_len(),
        }
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header at the start of `buf`, checksum and urgent pointer 0.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let mut p = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq_number);
        p.set_ack_number(self.ack_number);
        p.set_header_len(HEADER_LEN);
        p.set_flags(self.flags);
        p.set_window_len(self.window_len);
        p.set_checksum(0);
        p.set_urgent_at(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// 10.244.1.2:40000 → 10.244.2.3:5201, seq 1, ack 7, ACK|PSH, window 502, a 12-byte
    /// timestamp option block, 3 payload bytes; checksum computed by etherparse.
    fn segment() -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
            .tcp(40000, 5201, 1, 502)
            .ack(7)
            .psh()
            .options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
            .unwrap()
            .write(&mut v, b"abc")
            .unwrap();
        v.drain(..20);
        v
    }

    #[test]
    fn deconstruct() {
        let b = segment();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (40000, 5201));
        assert_eq!((p.seq_number(), p.ack_number()), (1, 7));
        assert_eq!((p.data_offset(), p.header_len(), p.reserved()), (8, 32, 0));
        assert_eq!(p.flags(), flags::ACK | flags::PSH);
        assert_eq!((p.window_len(), p.urgent_at()), (502, 0));
        assert_eq!(p.options(), &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(p.payload(), b"abc");
        assert!(checksum::checksum_ok(
            &b,
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 2, 3),
            crate::wire::ip::PROTO_TCP
        ));
        assert_eq!(p.checksum(), u16::from_be_bytes([b[16], b[17]]));
    }

    #[test]
    fn construct() {
        let want = segment();
        let mut b = vec![0u8; want.len()];
        b[HEADER_LEN..].copy_from_slice(&want[HEADER_LEN..]);
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_src_port(40000);
        p.set_dst_port(5201);
        p.set_seq_number(1);
        p.set_ack_number(7);
        p.set_header_len(32);
        p.set_flags(flags::ACK | flags::PSH);
        p.set_window_len(502);
        p.set_checksum(u16::from_be_bytes([want[16], want[17]]));
        p.set_urgent_at(0);
        p.payload_mut()[0] = b'a';
        assert_eq!(b, want);
    }

    #[test]
    fn emit_and_parse() {
        let r = Repr {
            src_port: 1,
            dst_port: 2,
            seq_number: 0xdead_beef,
            ack_number: 0x0102_0304,
            flags: flags::SYN | flags::ECE | flags::CWR,
            window_len: 65535,
        };
        let mut b = [0xaau8; 24];
        r.emit(&mut b);
        assert_eq!(
            &b[..20],
            &[0, 1, 0, 2, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 0x50, 0xc2, 0xff, 0xff, 0, 0, 0, 0]
        );
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p), r);
        assert_eq!(p.payload(), &[0xaa; 4]);
        assert!(p.options().is_empty());
        assert_eq!(r.buffer_len(), HEADER_LEN);
    }

    #[test]
    fn rejects() {
        let b = segment();
        assert_eq!(
            Packet::new_checked(&b[..19]).unwrap_err(),
            DropReason::Truncated
        );
        // Data offset 8: the options do not fit in 31 bytes.
        assert_eq!(
            Packet::new_checked(&b[..31]).unwrap_err(),
            DropReason::Truncated
        );
        assert!(Packet::new_checked(&b[..32]).is_ok());
        let mut v = b.clone();
        v[12] = 0x4f;
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap_err(),
            DropReason::BadInner
        );
        let p = Packet::new_unchecked(&v[..]);
        assert_eq!((p.data_offset(), p.reserved()), (4, 0x0f));
    }

    proptest! {
        #[test]
        fn round_trip(sp in any::<u16>(), dp in any::<u16>(), seq in any::<u32>(),
                      ack in any::<u32>(), fl in any::<u8>(), win in any::<u16>()) {
            let r = Repr { src_port: sp, dst_port: dp, seq_number: seq, ack_number: ack,
                           flags: fl, window_len: win };
            let mut b = [0u8; HEADER_LEN];
            r.emit(&mut b);
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()), r);
        }

        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&buf[..]) {
                let _ = (Repr::parse(&p), p.checksum(), p.urgent_at(), p.reserved());
                prop_assert_eq!(HEADER_LEN + p.options().len() + p.payload().len(), buf.len());
            }
        }
    }
}
