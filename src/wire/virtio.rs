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
/// Linux ≥ 6.17: the packet is a UDP tunnel (VXLAN, flannel udp) over IPv4 / IPv6 whose
/// *inner* TCP packet is to be segmented; OR-ed with the inner type (TCPV4, TCPV6).
pub const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
pub const GSO_UDP_TUNNEL_IPV6: u8 = 0x40;
/// `flags`: the outer UDP checksum is wanted (its field holds the pseudo-header sum).
pub const F_UDP_TUNNEL_CSUM: u8 = 8;

/// Length of `virtio_net_hdr_v1_hash_tunnel`: the 12-byte v1 header (with
/// `num_buffers`), the 4-byte hash value, the 2-byte hash report, 2 bytes of padding, then
/// `outer_th_offset` and `inner_nh_offset`. A device set to this size reads and writes it.
pub const TUNNEL_LEN: usize = 24;

/// The header of one UDP-tunnel GSO packet written to a TAP: offsets count from the start
/// of the outer Ethernet frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelHdr {
    /// flags, gso_type (tunnel | inner), hdr_len (end of the inner transport header),
    /// gso_size (inner MSS), csum_start/csum_offset (the inner transport checksum).
    pub base: VirtioNetHdr,
    /// Where the outer UDP header starts.
    pub outer_th_offset: u16,
    /// Where the inner IP header starts (an inner Ethernet header counts as tunnel header).
    pub inner_nh_offset: u16,
}

impl TunnelHdr {
    /// The 24 bytes, little-endian; hash fields and `num_buffers` zero.
    pub fn to_bytes(&self) -> [u8; TUNNEL_LEN] {
        let mut b = [0u8; TUNNEL_LEN];
        self.base.emit(&mut b);
        b[20..22].copy_from_slice(&self.outer_th_offset.to_le_bytes());
        b[22..24].copy_from_slice(&self.inner_nh_offset.to_le_bytes());
        b
    }
}

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
    fn tunnel_header_layout() {
        let h = TunnelHdr {
            base: VirtioNetHdr {
                flags: F_NEEDS_CSUM | F_UDP_TUNNEL_CSUM,
                gso_type: GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4,
                hdr_len: 96,
                gso_size: 1398,
                csum_start: 84,
                csum_offset: 16,
            },
            outer_th_offset: 34,
            inner_nh_offset: 64,
        };
        assert_eq!(
            h.to_bytes(),
            [9, 0x21, 96, 0, 0x76, 5, 84, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 34, 0, 64, 0]
        );
    }

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
