//! UDP headers (RFC 768), as the offloads read and rewrite them.
//!
//! A checked, zero-copy [`Packet`] view over a UDP datagram and a [`Repr`] for headers
//! overlayd writes. The underlay's own UDP headers are written by the kernel's sockets;
//! this view is for inner datagrams: USO segments get their length and checksum here, and
//! partial checksums are recognised by reading the checksum field. Checksums need the IP
//! pseudo-header and are summed by the caller. Pure: no I/O, no allocation.

use crate::drop::DropReason;

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;
/// Offset of the checksum field in the UDP header (the virtio `csum_offset` for UDP).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

mod field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`]
    /// passes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` unless the buffer holds the 8-byte header. The length field is not
    /// checked here (a USO super-packet's is rewritten per segment); [`Repr::parse`] checks
    /// it.
    pub fn check_len(&self) -> Result<(), DropReason> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(DropReason::Truncated)
        } else {
            Ok(())
        }
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

    /// Length field: header and payload.
    pub fn length(&self) -> u16 {
        self.u16_at(field::LENGTH.start)
    }

    /// Checksum field (0: none, IPv4 only).
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM.start)
    }

    /// Everything after the header (the length field is not applied).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    fn u16_at(&self, off: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[off], b[off + 1]])
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

    /// Sets the length field.
    pub fn set_length(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// A UDP header. The checksum is left to the caller, who has the pseudo-header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    /// Payload bytes after the 8-byte header.
    pub payload_len: u16,
}

impl Repr {
    /// Reads a checked datagram: `BadInner` when the length field is below 8 or beyond the
    /// buffer.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, DropReason> {
        let len = usize::from(p.length());
        if len < HEADER_LEN || len > p.buffer.as_ref().len() {
            return Err(DropReason::BadInner);
        }
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: (len - HEADER_LEN) as u16,
        })
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 8-byte header at the start of `buf`, checksum 0.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let mut p = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_length((HEADER_LEN as u16).saturating_add(self.payload_len));
        p.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 1000 → 53, 3 payload bytes, checksum 0x1234, one byte of trailing padding.
    const DGRAM: [u8; 12] = [
        0x03, 0xe8, 0x00, 0x35, 0x00, 0x0b, 0x12, 0x34, 1, 2, 3, 0xee,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&DGRAM[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (1000, 53));
        assert_eq!((p.length(), p.checksum()), (11, 0x1234));
        assert_eq!(p.payload(), &[1, 2, 3, 0xee]);
        assert_eq!(
            Repr::parse(&p),
            Ok(Repr {
                src_port: 1000,
                dst_port: 53,
                payload_len: 3
            })
        );
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 12];
        Repr {
            src_port: 1000,
            dst_port: 53,
            payload_len: 3,
        }
        .emit(&mut b);
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_checksum(0x1234);
        p.payload_mut().copy_from_slice(&[1, 2, 3, 0xee]);
        assert_eq!(b, DGRAM);
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_length(8);
        p.set_src_port(1);
        p.set_dst_port(2);
        assert_eq!(&b[..6], &[0, 1, 0, 2, 0, 8]);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&DGRAM[..7]).unwrap_err(),
            DropReason::Truncated
        );
        let mut v = DGRAM;
        v[5] = 7;
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(DropReason::BadInner));
        v[5] = 13;
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(DropReason::BadInner));
    }

    proptest! {
        #[test]
        fn round_trip(sp in any::<u16>(), dp in any::<u16>(), len in 0u16..100) {
            let r = Repr { src_port: sp, dst_port: dp, payload_len: len };
            let mut b = vec![0u8; HEADER_LEN + usize::from(len)];
            r.emit(&mut b);
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()), Ok(r));
        }

        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = Packet::new_checked(&buf[..]) {
                let _ = (Repr::parse(&p), p.checksum(), p.payload().len());
            }
        }
    }
}
