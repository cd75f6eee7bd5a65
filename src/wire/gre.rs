//! The GRE header (RFC 2784 with the key and sequence extensions of RFC 2890).
//!
//! ```text
//!  0                   1                   2                   3
//! |C| |K|S| Reserved0       | Ver |         Protocol Type         |
//! |      Checksum (optional)      |       Reserved1 (Optional)    |
//! |                         Key (optional)                        |
//! |                 Sequence Number (Optional)                    |
//! ```
//!
//! Optional words appear in that order, each only when its flag is set, so the header is
//! 4, 8, 12 or 16 bytes. `ip link add type gre key N` (no `csum`, no `seq`) sends the
//! 8-byte form: flags 0x2000, protocol, key.
//!
//! Receive policy (RFC 2784 §2.5.1 and §2.3.1): a version other than 0 is rejected, and so
//! are bits 1, 4 and 5 of Reserved0 (RFC 1701's Routing, Strict-source-route and the top
//! Recursion bit): RFC 2784 says a receiver not implementing RFC 1701 MUST discard a packet
//! with any of bits 1–5 set, and bits 2 and 3 are K and S from RFC 2890. Bits 6–12 are
//! ignored on receipt (MUST be ignored) and zero on emit; Reserved1 likewise. Linux is
//! laxer (it rejects only Routing and a nonzero version) but never sends these bits, so
//! the stricter rule costs nothing in interoperation. A present checksum is verified.
//!
//! Pure: no I/O, no allocation, no accessor panics once [`Packet::new_checked`] passed.

use crate::drop::DropReason;
use crate::wire::checksum;

/// Length of the fixed part of the header (flags, version, protocol).
pub const BASE_LEN: usize = 4;
/// Longest header: base + checksum + key + sequence.
pub const MAX_HEADER_LEN: usize = 16;

/// Flag bit C: checksum and Reserved1 are present.
pub const FLAG_CHECKSUM: u16 = 0x8000;
/// Flag bit K: key present.
pub const FLAG_KEY: u16 = 0x2000;
/// Flag bit S: sequence number present.
pub const FLAG_SEQ: u16 = 0x1000;
/// Reserved0 bits 1, 4, 5 (RFC 1701 R, s, top of Recur) whose presence means discard.
pub const FLAGS_MUST_BE_ZERO: u16 = 0x4000 | 0x0800 | 0x0400;
/// The 3-bit version field.
pub const VERSION_MASK: u16 = 0x0007;

mod field {
    use std::ops::Range;

    pub const FLAGS: Range<usize> = 0..2;
    pub const PROTOCOL: Range<usize> = 2..4;
    /// The checksum, when C is set.
    pub const CHECKSUM: Range<usize> = 4..6;
}

/// Header length implied by a flags word.
#[inline]
pub const fn header_len_for(flags: u16) -> usize {
    BASE_LEN
        + 4 * ((flags & FLAG_CHECKSUM != 0) as usize)
        + 4 * ((flags & FLAG_KEY != 0) as usize)
        + 4 * ((flags & FLAG_SEQ != 0) as usize)
}

/// A read/write view of a GRE packet: header then payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`] passes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after checking it holds the whole header its flags announce.
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` unless the buffer holds the base header and every optional word the
    /// flags announce.
    pub fn check_len(&self) -> Result<(), DropReason> {
        let len = self.buffer.as_ref().len();
        if len < BASE_LEN || len < self.header_len() {
            Err(DropReason::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole first 16-bit word: flags, reserved bits and version.
    pub fn flags(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::FLAGS];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The version field (0 for RFC 2784 GRE).
    pub fn version(&self) -> u8 {
        (self.flags() & VERSION_MASK) as u8
    }

    /// The protocol type: the payload's EtherType.
    pub fn protocol(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PROTOCOL];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// C flag.
    pub fn checksum_present(&self) -> bool {
        self.flags() & FLAG_CHECKSUM != 0
    }

    /// K flag.
    pub fn key_present(&self) -> bool {
        self.flags() & FLAG_KEY != 0
    }

    /// S flag.
    pub fn seq_present(&self) -> bool {
        self.flags() & FLAG_SEQ != 0
    }

    /// Header length the flags announce.
    pub fn header_len(&self) -> usize {
        header_len_for(self.flags())
    }

    /// The checksum field, when present.
    pub fn checksum(&self) -> Option<u16> {
        self.checksum_present().then(|| {
            let b = &self.buffer.as_ref()[field::CHECKSUM];
            u16::from_be_bytes([b[0], b[1]])
        })
    }

    /// The key, when present.
    pub fn key(&self) -> Option<u32> {
        self.key_present().then(|| self.word_at(self.key_offset()))
    }

    /// The sequence number, when present.
    pub fn seq(&self) -> Option<u32> {
        self.seq_present()
            .then(|| self.word_at(self.key_offset() + 4 * self.key_present() as usize))
    }

    /// Whether the checksum (over the whole buffer: header and payload) verifies.
    /// True when no checksum is present.
    pub fn verify_checksum(&self) -> bool {
        !self.checksum_present() || checksum::checksum(self.buffer.as_ref()) == 0
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    fn key_offset(&self) -> usize {
        BASE_LEN + 4 * self.checksum_present() as usize
    }

    fn word_at(&self, off: usize) -> u32 {
        let b = &self.buffer.as_ref()[off..off + 4];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[h..]
    }
}

/// A validated GRE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The payload's EtherType.
    pub protocol: u16,
    /// Whether a checksum is present (on parse: present and verified).
    pub checksum: bool,
    /// The key, when present.
    pub key: Option<u32>,
    /// The sequence number, when present.
    pub seq: Option<u32>,
}

impl Repr {
    /// Validates a header: `BadHeader` for a nonzero version, any of Reserved0 bits 1, 4, 5
    /// set, or a checksum that does not verify over the whole buffer.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, DropReason> {
        let flags = packet.flags();
        if flags & (VERSION_MASK | FLAGS_MUST_BE_ZERO) != 0 {
            return Err(DropReason::BadHeader);
        }
        if !packet.verify_checksum() {
            return Err(DropReason::BadHeader);
        }
        Ok(Repr {
            protocol: packet.protocol(),
            checksum: packet.checksum_present(),
            key: packet.key(),
            seq: packet.seq(),
        })
    }

    /// The flags word this header is emitted with.
    pub const fn flags(&self) -> u16 {
        (if self.checksum { FLAG_CHECKSUM } else { 0 })
            | (if self.key.is_some() { FLAG_KEY } else { 0 })
            | (if self.seq.is_some() { FLAG_SEQ } else { 0 })
    }

    /// Bytes [`Self::emit`] writes: 4, plus 4 for each of checksum, key, sequence.
    pub const fn header_len(&self) -> usize {
        header_len_for(self.flags())
    }

    /// Same as [`Self::header_len`], by the crate-wide name.
    pub const fn buffer_len(&self) -> usize {
        self.header_len()
    }

    /// Writes the header at the start of `buf`, with the checksum field zero. When
    /// `checksum` is set, put the payload in place and call [`fill_checksum`] after.
    ///
    /// # Panics
    /// If `buf` is shorter than [`Self::header_len`]; callers reserve the room up front.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..self.header_len()];
        b[field::FLAGS].copy_from_slice(&self.flags().to_be_bytes());
        b[field::PROTOCOL].copy_from_slice(&self.protocol.to_be_bytes());
        let mut off = BASE_LEN;
        if self.checksum {
            b[off..off + 4].fill(0);
            off += 4;
        }
        if let Some(k) = self.key {
            b[off..off + 4].copy_from_slice(&k.to_be_bytes());
            off += 4;
        }
        if let Some(s) = self.seq {
            b[off..off + 4].copy_from_slice(&s.to_be_bytes());
        }
    }
}

/// Computes and stores the checksum of a whole GRE packet (header and payload) whose
/// header was written by [`Repr::emit`] with `checksum: true`. Does nothing when the C
/// flag is clear or the buffer is shorter than the header.
pub fn fill_checksum(packet: &mut [u8]) {
    let p = Packet::new_unchecked(&*packet);
    if p.check_len().is_err() || !p.checksum_present() {
        return;
    }
    packet[field::CHECKSUM].fill(0);
    let c = checksum::checksum(packet);
    packet[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `ip link add type gre key 0x01020304` puts in front of an IPv4 packet.
    const KEYED: [u8; 9] = [0x20, 0x00, 0x08, 0x00, 0x01, 0x02, 0x03, 0x04, 0x45];

    #[test]
    fn deconstruct_keyed() {
        let p = Packet::new_checked(&KEYED[..]).unwrap();
        assert_eq!(p.version(), 0);
        assert_eq!(p.protocol(), 0x0800);
        assert_eq!(p.header_len(), 8);
        assert_eq!(p.key(), Some(0x01020304));
        assert_eq!((p.checksum(), p.seq()), (None, None));
        assert_eq!(p.payload(), &[0x45]);
        let r = Repr::parse(&p).unwrap();
        assert_eq!(
            r,
            Repr {
                protocol: 0x0800,
                checksum: false,
                key: Some(0x01020304),
                seq: None
            }
        );
    }

    #[test]
    fn construct_keyed() {
        let r = Repr {
            protocol: 0x0800,
            checksum: false,
            key: Some(0x01020304),
            seq: None,
        };
        assert_eq!(r.header_len(), 8);
        let mut buf = [0xa5u8; 9];
        r.emit(&mut buf);
        buf[8] = 0x45;
        assert_eq!(buf, KEYED);
    }

    #[test]
    fn all_options() {
        let r = Repr {
            protocol: 0x86dd,
            checksum: true,
            key: Some(7),
            seq: Some(0x0a0b0c0d),
        };
        assert_eq!(r.header_len(), 16);
        let mut buf = [0u8; 16 + 5];
        r.emit(&mut buf);
        buf[16..].copy_from_slice(&[0x60, 1, 2, 3, 4]);
        fill_checksum(&mut buf);
        assert_eq!(&buf[..4], &[0xb0, 0x00, 0x86, 0xdd]);
        assert_eq!(&buf[6..16], &[0, 0, 0, 0, 0, 7, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(checksum::checksum(&buf), 0);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.seq(), Some(0x0a0b0c0d));
        assert_eq!(Repr::parse(&p), Ok(r));
        // One flipped payload bit breaks the checksum.
        buf[20] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Err(DropReason::BadHeader)
        );
    }

    #[test]
    fn checksum_only_and_seq_only() {
        let mut buf = [0x80, 0, 0x08, 0x00, 0, 0, 0, 0, 0x45, 0];
        fill_checksum(&mut buf);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(
            p.checksum(),
            Some(checksum::checksum(&[0x80, 0, 0x08, 0, 0x45, 0]))
        );
        assert!(Repr::parse(&p).unwrap().checksum);

        let buf = [0x10, 0, 0x08, 0x00, 0, 0, 0, 9];
        let r = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!((r.key, r.seq), (None, Some(9)));
    }

    #[test]
    fn rejects() {
        // Truncated: base header, then a key announced but missing.
        assert_eq!(
            Packet::new_checked(&KEYED[..3]).unwrap_err(),
            DropReason::Truncated
        );
        assert_eq!(
            Packet::new_checked(&KEYED[..7]).unwrap_err(),
            DropReason::Truncated
        );
        // Version 1 (PPTP's enhanced GRE).
        let v1 = [0x20, 0x01, 0x08, 0x00, 0, 0, 0, 1];
        assert_eq!(
            Repr::parse(&Packet::new_checked(&v1[..]).unwrap()),
            Err(DropReason::BadHeader)
        );
        // Routing present, strict source route, recursion bit 5.
        for f in [0x40u8, 0x08, 0x04] {
            let b = [f, 0, 0x08, 0x00];
            assert_eq!(
                Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
                Err(DropReason::BadHeader),
                "{f:#x}"
            );
        }
        // Bits 6-12 are ignored.
        let b = [0x03, 0xf8, 0x08, 0x00];
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_ok());
    }

    fn repr() -> impl Strategy<Value = Repr> {
        (
            any::<u16>(),
            any::<bool>(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
        )
            .prop_map(|(protocol, checksum, key, seq)| Repr {
                protocol,
                checksum,
                key,
                seq,
            })
    }

    proptest! {
        #[test]
        fn round_trip(r in repr(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = vec![0u8; r.header_len() + payload.len()];
            r.emit(&mut buf);
            buf[r.header_len()..].copy_from_slice(&payload);
            fill_checksum(&mut buf);
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p), Ok(r));
            prop_assert_eq!(p.payload(), &payload[..]);
        }

        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = Packet::new_checked(&buf[..]) {
                let _ = Repr::parse(&p);
                let _ = (p.key(), p.seq(), p.checksum(), p.payload().len());
            }
            let mut b = buf.clone();
            fill_checksum(&mut b);
        }
    }
}
