//! The `virtio_net_hdr` that prefixes every packet on a TUN/TAP opened with `IFF_VNET_HDR`.
//!
//! Ten bytes, little-endian (the TUN device is set to little-endian headers explicitly in
//! `sys::tun`). It tells the reader whether the packet is a TSO/USO super-packet that still
//! needs segmenting (`gso_type`, `gso_size`) and whether its transport checksum is only
//! partial (`NEEDS_CSUM`, `csum_start`, `csum_offset`). Pure parsing and emitting only.

/// Length of the header without the `num_buffers` field (what TUN uses).
pub const LEN: usize = 10;

/// `flags`: the checksum from `csum_start` to the end still has to be finished, and the
/// result stored at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum is known good (receive side hint).
pub const F_DATA_VALID: u8 = 2;

/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// ECN bit OR-ed into `gso_type`.
pub const GSO_ECN: u8 = 0x80;

/// A decoded virtio net header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Parses the first [`LEN`] bytes; `None` when the buffer is shorter.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..LEN)?;
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        })
    }

    /// Writes the header into the first [`LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`LEN`]; callers reserve the room up front.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; LEN];
        h.emit(&mut b);
        assert_eq!(b, [1, 0x81, 52, 0, 0x76, 0x05, 20, 0, 16, 0]);
        assert_eq!(VirtioNetHdr::parse(&b), Some(h));
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        assert!(VirtioNetHdr::parse(&b[..9]).is_none());
    }
}
