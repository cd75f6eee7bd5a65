//! Ethernet II frames (the inner frame of VXLAN) and MAC addresses.
//!
//! A checked, zero-copy [`Frame`] view over a byte buffer, an [`emit`] helper that writes
//! the 14-byte header in place, and [`MacAddr`] for formatting and parsing the
//! `aa:bb:cc:dd:ee:ff` form flannel stores in etcd (`VtepMAC`). Pure: no I/O, no allocation.

use std::fmt;
use std::str::FromStr;

use crate::drop::DropReason;

/// Length of the Ethernet II header: destination, source, EtherType.
pub const HEADER_LEN: usize = 14;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
/// Transparent Ethernet Bridging: an Ethernet frame carried inside GRE.
pub const ETHERTYPE_TEB: u16 = 0x6558;

mod field {
    use std::ops::Range;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`] passes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    /// Wraps a buffer after checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// `Truncated` unless the buffer holds the 14-byte header.
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

    /// Destination MAC address.
    pub fn dst_addr(&self) -> MacAddr {
        MacAddr(mac_at(self.buffer.as_ref(), field::DST.start))
    }

    /// Source MAC address.
    pub fn src_addr(&self) -> MacAddr {
        MacAddr(mac_at(self.buffer.as_ref(), field::SRC.start))
    }

    /// EtherType of the payload.
    pub fn ethertype(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// The VLAN ID of an 802.1Q-tagged frame (EtherType 0x8100 and a whole tag after it);
    /// `None` for an untagged or cut-short frame.
    pub fn vlan_id(&self) -> Option<u16> {
        if self.ethertype() != ETHERTYPE_VLAN {
            return None;
        }
        let tci = self.payload().get(..2)?;
        Some(u16::from_be_bytes([tci[0], tci[1]]) & 0x0fff)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC address.
    pub fn set_src_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// Writes a 14-byte Ethernet II header at the start of `buf`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`]; callers reserve the room up front.
#[inline]
pub fn emit(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    let b = &mut buf[..HEADER_LEN];
    b[field::DST].copy_from_slice(&dst);
    b[field::SRC].copy_from_slice(&src);
    b[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
}

/// Length of an 802.1Q tag (TPID + TCI).
pub const VLAN_TAG_LEN: usize = 4;

/// The 802.1Q tag for `vid` (PCP and DEI 0), as it sits between a frame's source address
/// and its EtherType.
#[inline]
pub fn vlan_tag(vid: u16) -> [u8; VLAN_TAG_LEN] {
    let [a, b] = ETHERTYPE_VLAN.to_be_bytes();
    let [c, d] = (vid & 0x0fff).to_be_bytes();
    [a, b, c, d]
}

/// The six bytes at `off`; the caller has checked the length.
fn mac_at(b: &[u8], off: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[off..off + 6]);
    m
}

/// A 48-bit IEEE 802 MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The all-ones broadcast address.
    pub fn is_broadcast(&self) -> bool {
        self.0 == [0xff; 6]
    }

    /// Group address (the I/G bit of the first octet), broadcast included.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// A unicast address (not a group address).
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Locally administered (the U/L bit), as flannel's generated VTEP MACs are.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// Parses `aa:bb:cc:dd:ee:ff` (also `-` separated), hex digits in either case.
    pub fn parse(s: &str) -> Option<MacAddr> {
        let b = s.as_bytes();
        if b.len() != 17 {
            return None;
        }
        let sep = b[2];
        if sep != b':' && sep != b'-' {
            return None;
        }
        let mut out = [0u8; 6];
        for (i, o) in out.iter_mut().enumerate() {
            let p = i * 3;
            if i > 0 && b[p - 1] != sep {
                return None;
            }
            *o = (hex_val(b[p])? << 4) | hex_val(b[p + 1])?;
        }
        Some(MacAddr(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The string is not a MAC address in `aa:bb:cc:dd:ee:ff` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address (want aa:bb:cc:dd:ee:ff)")]
pub struct ParseMacError;

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MacAddr::parse(s).ok_or(ParseMacError)
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(m: MacAddr) -> Self {
        m.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // An ARP request as captured inside VXLAN: broadcast dst, e6:a2:bb:28:cb:02 src.
    const FRAME: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xe6, 0xa2, 0xbb, 0x28, 0xcb, 0x02, 0x08, 0x06, 0x00,
        0x01,
    ];

    #[test]
    fn deconstruct() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        assert!(f.dst_addr().is_broadcast());
        assert!(f.dst_addr().is_multicast());
        assert_eq!(f.src_addr(), MacAddr([0xe6, 0xa2, 0xbb, 0x28, 0xcb, 0x02]));
        assert!(f.src_addr().is_unicast());
        assert!(f.src_addr().is_local());
        assert_eq!(f.ethertype(), ETHERTYPE_ARP);
        assert_eq!(f.payload(), &[0x00, 0x01]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 16];
        emit(
            &mut buf,
            [0xff; 6],
            [0xe6, 0xa2, 0xbb, 0x28, 0xcb, 0x02],
            ETHERTYPE_ARP,
        );
        buf[14..].copy_from_slice(&[0, 1]);
        assert_eq!(buf, FRAME);

        let mut f = Frame::new_checked(&mut buf[..]).unwrap();
        f.set_dst_addr(MacAddr([1, 2, 3, 4, 5, 6]));
        f.set_src_addr(MacAddr([7, 8, 9, 10, 11, 12]));
        f.set_ethertype(ETHERTYPE_IPV6);
        f.payload_mut()[0] = 0x60;
        assert_eq!(
            &buf[..15],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x86, 0xdd, 0x60]
        );
    }

    #[test]
    fn rejects_short() {
        assert_eq!(
            Frame::new_checked(&FRAME[..13]).unwrap_err(),
            DropReason::Truncated
        );
        assert!(Frame::new_checked(&FRAME[..14])
            .unwrap()
            .payload()
            .is_empty());
    }

    #[test]
    fn mac_text() {
        let m: MacAddr = "02:42:0a:F4:01:00".parse().unwrap();
        assert_eq!(m, MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x00]));
        assert_eq!(m.to_string(), "02:42:0a:f4:01:00");
        assert_eq!(MacAddr::parse("02-42-0a-f4-01-00"), Some(m));
        for bad in [
            "",
            "02:42:0a:f4:01",
            "02:42:0a:f4:01:0g",
            "02:42-0a:f4:01:00",
            "02:42:0a:f4:01:000",
            "0242.0af4.0100..",
        ] {
            assert_eq!(MacAddr::parse(bad), None, "{bad}");
        }
        assert_eq!("x".parse::<MacAddr>(), Err(ParseMacError));
    }

    proptest! {
        #[test]
        fn mac_text_round_trip(b in any::<[u8; 6]>()) {
            let m = MacAddr(b);
            prop_assert_eq!(MacAddr::parse(&m.to_string()), Some(m));
        }

        #[test]
        fn mac_parse_never_panics(s in ".{0,20}") {
            let _ = MacAddr::parse(&s);
        }

        #[test]
        fn emit_parse_round_trip(dst in any::<[u8; 6]>(), src in any::<[u8; 6]>(), et in any::<u16>()) {
            let mut buf = [0u8; HEADER_LEN];
            emit(&mut buf, dst, src, et);
            let f = Frame::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(f.dst_addr().0, dst);
            prop_assert_eq!(f.src_addr().0, src);
            prop_assert_eq!(f.ethertype(), et);
        }

        #[test]
        fn view_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(f) = Frame::new_checked(&buf[..]) {
                let _ = (f.dst_addr(), f.src_addr(), f.ethertype(), f.payload().len());
            }
        }
    }
}
