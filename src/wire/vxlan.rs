//! The VXLAN header (RFC 7348 §5): 8 bytes in front of an inner Ethernet frame.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! On receipt only the I flag (0x08) is required; the other flag bits and the reserved
//! fields are ignored, as RFC 7348 says. On emit they are all zero. Pure: no I/O, no
//! allocation, and no accessor panics once [`Packet::new_checked`] has accepted a buffer.

use crate::drop::DropReason;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid. Must be set.
pub const FLAG_I: u8 = 0x08;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

mod field {
    use std::ops::Range;

    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
    pub const PAYLOAD: usize = 8;
}

/// A read/write view of a VXLAN packet: header followed by the inner Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`] passes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` unless the buffer holds the 8-byte header.
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

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I (valid VNI) flag is set.
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI; bits above the low 24 are dropped.
    pub fn set_vni(&mut self, vni: u32) {
        let b = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }

    /// The inner Ethernet frame, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// A validated VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// VXLAN network identifier, 0..=[`VNI_MAX`].
    pub vni: u32,
}

impl Repr {
    /// Validates a header: `BadHeader` unless the I flag is set. Reserved bits are ignored.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, DropReason> {
        if !packet.vni_valid() {
            return Err(DropReason::BadHeader);
        }
        Ok(Repr { vni: packet.vni() })
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`: I flag set, every
    /// reserved bit zero, the VNI masked to 24 bits.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`]; callers reserve the room up front.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let v = self.vni.to_be_bytes();
        buf[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The VXLAN header of kernel-vxlan-arp-vni11259375.pcap, plus two payload bytes.
    const PACKET: [u8; 10] = [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0, 0xff, 0xff];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.flags(), FLAG_I);
        assert!(p.vni_valid());
        assert_eq!(p.vni(), 11_259_375);
        assert_eq!(p.payload(), &[0xff, 0xff]);
        assert_eq!(Repr::parse(&p), Ok(Repr { vni: 0xabcdef }));
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 10];
        Repr { vni: 0xabcdef }.emit(&mut buf);
        buf[8..].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(buf, PACKET);

        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_flags(0);
        p.set_vni(0x0100_0001);
        p.payload_mut()[0] = 1;
        assert_eq!(&buf[..9], &[0, 0, 0, 0, 0, 0, 1, 0, 1]);
    }

    #[test]
    fn flannel_vni_1() {
        let buf = [0x08, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Ok(Repr { vni: 1 })
        );
    }

    #[test]
    fn reserved_bits_ignored_on_receipt() {
        let buf = [0xff, 0xff, 0xff, 0xff, 0, 0, 7, 0xff];
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Ok(Repr { vni: 7 })
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&PACKET[..7]).unwrap_err(),
            DropReason::Truncated
        );
        let no_i = [0xf7, 0, 0, 0, 0, 0, 1, 0];
        let p = Packet::new_checked(&no_i[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(DropReason::BadHeader));
    }

    proptest! {
        #[test]
        fn round_trip(vni in 0..=VNI_MAX) {
            let r = Repr { vni };
            let mut buf = [0u8; HEADER_LEN];
            r.emit(&mut buf);
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()), Ok(r));
        }

        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(p) = Packet::new_checked(&buf[..]) {
                if let Ok(r) = Repr::parse(&p) {
                    prop_assert!(r.vni <= VNI_MAX);
                }
                prop_assert_eq!(p.payload().len(), buf.len() - HEADER_LEN);
            }
        }
    }
}
