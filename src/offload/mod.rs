//! TUN offloads in userspace: TSO segmentation on transmit, GRO coalescing on receive.
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD` the kernel hands the daemon TCP super-packets of
//! up to 64 KiB (plus a [`VirtioNetHdr`](crate::wire::virtio::VirtioNetHdr)) and accepts
//! them back. This layer turns one such super-packet into MTU-sized segments laid out for
//! UDP GSO on the underlay ([`tso`]), and merges decapsulated inner TCP segments of one flow
//! back into super-packets for the TUN ([`gro`]).
//!
//! Pure functions and state over caller-owned byte buffers: no I/O, no clock, and no heap
//! allocation once a [`Coalescer`] exists. Untrusted bytes never panic; they give an
//! [`OffloadError`] (transmit) or are passed through unmerged for the kernel to judge
//! (receive).

pub mod gro;
pub mod tso;

pub use gro::{Coalescer, GroStats};
pub use tso::{finish_checksum, plan, segment, segment_headers, HeaderLayout, Layout};

use crate::drop::DropReason;

/// Largest IP packet either direction produces: the IPv4 total-length limit, also applied
/// to IPv6 so that one buffer size fits both and no jumbogram is ever built.
pub const MAX_IP_PACKET: usize = 65_535;

/// Why a transmit-side packet could not be segmented or finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The packet is shorter than the headers it claims to carry.
    #[error("packet truncated: headers need {needed} bytes, packet has {len}")]
    Truncated { needed: usize, len: usize },
    /// The first nibble is neither 4 nor 6.
    #[error("not an IP packet (version {0})")]
    NotIp(u8),
    /// IPv4 header length below 5 words, or a length field that cannot be right.
    #[error("malformed IP header")]
    BadIpHeader,
    /// A GSO packet that is an IPv4 fragment.
    #[error("GSO packet is an IP fragment")]
    Fragment,
    /// The GSO type does not match the IP version or the transport protocol.
    #[error("gso_type {gso_type} does not match IP version {version} / protocol {proto}")]
    GsoMismatch {
        gso_type: u8,
        version: u8,
        proto: u8,
    },
    /// A GSO type this module does not segment (UFO, unknown values).
    #[error("unsupported gso_type {0}")]
    UnsupportedGso(u8),
    /// A GSO packet with `gso_size` 0.
    #[error("gso_size is zero")]
    ZeroGsoSize,
    /// The TCP data offset is below 5 words.
    #[error("TCP data offset {0} below 5")]
    BadTcpHeader(u8),
    /// `csum_start`/`csum_offset` point outside the transport part of the packet.
    #[error("checksum offsets start {start} offset {offset} outside a packet of {len} bytes")]
    BadCsumOffsets { start: u16, offset: u16, len: usize },
    /// The caller's output buffer cannot hold all segments.
    #[error("output buffer too small: need {needed} bytes, have {have}")]
    OutTooSmall { needed: usize, have: usize },
}

impl OffloadError {
    /// The drop counter this error is accounted under.
    pub fn drop_reason(self) -> DropReason {
        match self {
            OffloadError::Truncated { .. } => DropReason::Truncated,
            OffloadError::OutTooSmall { .. } => DropReason::TooBig,
            _ => DropReason::BadInner,
        }
    }
}

/// IP protocol numbers used here.
pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;

/// TCP flag bits (byte 13 of the TCP header).
pub(crate) mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const URG: u8 = 0x20;
    pub const CWR: u8 = 0x80;
}

/// The parts of an IP header both directions need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpInfo {
    pub v6: bool,
    /// IP header length (IPv4 IHL·4; 40 for IPv6, extension headers are not walked).
    pub hdr_len: usize,
    /// Packet length according to the IP length field (≤ the buffer length).
    pub total: usize,
    /// IPv4 protocol or IPv6 next header.
    pub proto: u8,
}

/// Parses the IP header of `pkt` and checks that its lengths fit inside the buffer.
pub(crate) fn parse_ip(pkt: &[u8]) -> Result<IpInfo, OffloadError> {
    let first = *pkt
        .first()
        .ok_or(OffloadError::Truncated { needed: 1, len: 0 })?;
    match first >> 4 {
        4 => {
            need(pkt, 20)?;
            let hdr_len = usize::from(first & 0x0f) * 4;
            if hdr_len < 20 {
                return Err(OffloadError::BadIpHeader);
            }
            need(pkt, hdr_len)?;
            let total = usize::from(be16(pkt, 2));
            if total < hdr_len {
                return Err(OffloadError::BadIpHeader);
            }
            need(pkt, total)?;
            Ok(IpInfo {
                v6: false,
                hdr_len,
                total,
                proto: pkt[9],
            })
        }
        6 => {
            need(pkt, 40)?;
            let total = 40 + usize::from(be16(pkt, 4));
            need(pkt, total)?;
            Ok(IpInfo {
                v6: true,
                hdr_len: 40,
                total,
                proto: pkt[6],
            })
        }
        v => Err(OffloadError::NotIp(v)),
    }
}

/// `Ok` when `pkt` holds at least `needed` bytes.
pub(crate) fn need(pkt: &[u8], needed: usize) -> Result<(), OffloadError> {
    if pkt.len() < needed {
        return Err(OffloadError::Truncated {
            needed,
            len: pkt.len(),
        });
    }
    Ok(())
}

/// Pseudo-header sum for a transport segment of `l4_len` bytes in the IP packet `ip`
/// (whose header has been checked to be complete).
pub(crate) fn pseudo_sum(ip: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    use crate::wire::checksum::{pseudo_header_v4, pseudo_header_v6};
    if v6 {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&ip[8..24]);
        dst.copy_from_slice(&ip[24..40]);
        pseudo_header_v6(src.into(), dst.into(), proto, l4_len as u32)
    } else {
        let src = [ip[12], ip[13], ip[14], ip[15]];
        let dst = [ip[16], ip[17], ip[18], ip[19]];
        pseudo_header_v4(src.into(), dst.into(), proto, l4_len as u16)
    }
}

/// Whether `ip` is exactly one IPv4 or IPv6 packet: the length in its header covers the
/// whole buffer. A received datagram bigger than its GRO segment size is either a run of
/// merged datagrams or, when this holds, one whole tunnel-GSO frame from a peer kernel.
pub fn ip_len_covers(ip: &[u8]) -> bool {
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 => usize::from(be16(ip, 2)) == ip.len(),
        Some(6) if ip.len() >= 40 => 40 + usize::from(be16(ip, 4)) == ip.len(),
        _ => false,
    }
}

// Big-endian field access. Callers have checked the length first; the indexing is the
// invariant's assertion, not a data-dependent panic.
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn set_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn set_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Packet builders shared by the tests of both directions.
/// Recognises an IPv4 TCP or UDP packet whose transport checksum is only *partial*: the
/// field holds the folded pseudo-header sum that a sender with checksum offload leaves for
/// the NIC to finish (Linux `CHECKSUM_PARTIAL`). Over veth no NIC ever finishes it, and a
/// peer's kernel VXLAN hands such packets to our socket as they are; they must be finished
/// (or handed to the TUN with `NEEDS_CSUM`) before the kernel sees them, or it drops them.
///
/// Returns the virtio header that makes the kernel finish the checksum (and segment the
/// packet when it is longer than `gso_size` allows, for tunnelled GSO super-frames).
///
/// Only the checksum field is read, not the payload: a field equal to the pseudo-header
/// sum is taken as partial. A complete checksum that happens to equal it (1 in 65 536) is
/// then "finished" by the kernel into the value it already had (~(pseudo + data) is the
/// complete checksum by definition), so a second pass over the data to tell the two apart
/// would change no outcome; this is what lets a peer's whole 64 KiB tunnel-GSO frame go to
/// the device with no checksum work at all.
pub fn partial_checksum_hdr(
    pkt: &[u8],
    gso_size: usize,
) -> Option<crate::wire::virtio::VirtioNetHdr> {
    use crate::wire::{checksum, virtio};
    let ihl = (*pkt.first()? & 0x0f) as usize * 4;
    if pkt[0] >> 4 != 4 || ihl < 20 || pkt.len() < ihl + 8 {
        return None;
    }
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff;
    if total != pkt.len() || frag != 0 {
        return None;
    }
    let proto = pkt[9];
    let csum_offset = match proto {
        6 => 16,
        17 => 6,
        _ => return None,
    };
    let l4 = &pkt[ihl..];
    if l4.len() < csum_offset + 2 || (proto == 6 && l4.len() < 20) {
        return None;
    }
    let src = std::net::Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = std::net::Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let field = u16::from_be_bytes([l4[csum_offset], l4[csum_offset + 1]]);
    let pseudo = checksum::fold(checksum::pseudo_header_v4(src, dst, proto, l4.len() as u16));
    if field != pseudo {
        return None;
    }
    let mut hdr = virtio::VirtioNetHdr {
        flags: virtio::F_NEEDS_CSUM,
        csum_start: ihl as u16,
        csum_offset: csum_offset as u16,
        ..Default::default()
    };
    if proto == 6 && gso_size > 0 {
        let tcp_len = ((l4[12] >> 4) as usize) * 4;
        if l4.len() - tcp_len > gso_size {
            hdr.gso_type = virtio::GSO_TCPV4;
            hdr.gso_size = gso_size as u16;
            hdr.hdr_len = (ihl + tcp_len) as u16;
        }
    }
    Some(hdr)
}

/// The segment size that makes every segment of the IPv4 TCP packet `ip` fit `mtu`
/// (what is left after its IP and TCP headers); 0 when `ip` is not IPv4 TCP.
pub fn tcp_mss_for_mtu(ip: &[u8], mtu: usize) -> usize {
    let Ok(info) = parse_ip(ip) else {
        return 0;
    };
    let Some(doff) = ip.get(info.hdr_len + 12) else {
        return 0;
    };
    if info.v6 || info.proto != PROTO_TCP {
        return 0;
    }
    let tcp_len = usize::from(doff >> 4) * 4;
    mtu.saturating_sub(info.hdr_len + tcp_len).max(1)
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::wire::checksum;
    use crate::wire::virtio::{self, VirtioNetHdr};
    use etherparse::PacketBuilder;

    pub const SRC4: [u8; 4] = [10, 244, 1, 2];
    pub const DST4: [u8; 4] = [10, 244, 2, 3];
    pub const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02];
    pub const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x03];

    /// Deterministic payload bytes.
    pub fn payload(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
            .collect()
    }

    /// A complete TCP packet with valid checksums, built by etherparse.
    pub fn tcp(v6: bool, seq: u32, opts: &[u8], psh: bool, data: &[u8]) -> Vec<u8> {
        let b = if v6 {
            PacketBuilder::ipv6(SRC6, DST6, 64)
        } else {
            PacketBuilder::ipv4(SRC4, DST4, 64)
        };
        let mut b = b.tcp(40000, 5201, seq, 502).ack(0x1234_5678);
        if psh {
            b = b.psh();
        }
        let b = b
            .options_raw(opts)
            .expect("options are a multiple of 4, at most 40");
        let mut v = Vec::new();
        b.write(&mut v, data).expect("packet fits");
        v
    }

    /// The TCP checksum of `ip` verifies (pseudo-header + segment sums to 0xffff).
    pub fn tcp_csum_ok(ip: &[u8]) -> bool {
        let info = super::parse_ip(ip).expect("valid IP");
        let l4 = &ip[info.hdr_len..info.total];
        let s = super::pseudo_sum(ip, info.v6, info.proto, l4.len());
        checksum::fold(checksum::add(s, l4)) == 0xffff
    }

    /// What the kernel hands us for a TSO super-packet: the TCP checksum field holds the
    /// folded pseudo-header sum, and the virtio header describes the segmentation.
    pub fn as_tso(mut pkt: Vec<u8>, gso_size: u16) -> (VirtioNetHdr, Vec<u8>) {
        let info = super::parse_ip(&pkt).expect("valid IP");
        let l4_len = info.total - info.hdr_len;
        let partial = checksum::fold(super::pseudo_sum(&pkt, info.v6, info.proto, l4_len));
        super::set_be16(&mut pkt, info.hdr_len + 16, partial);
        let doff = usize::from(pkt[info.hdr_len + 12] >> 4) * 4;
        let hdr = VirtioNetHdr {
            flags: virtio::F_NEEDS_CSUM,
            gso_type: if info.v6 {
                virtio::GSO_TCPV6
            } else {
                virtio::GSO_TCPV4
            },
            hdr_len: (info.hdr_len + doff) as u16,
            gso_size,
            csum_start: info.hdr_len as u16,
            csum_offset: 16,
        };
        (hdr, pkt)
    }

    /// Finishes a CHECKSUM_PARTIAL packet the way the kernel does.
    pub fn kernel_finish(hdr: &VirtioNetHdr, pkt: &mut [u8]) {
        if hdr.needs_csum() {
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            let c = !checksum::fold(checksum::add(0, &pkt[start..]));
            super::set_be16(pkt, at, if c == 0 { 0xffff } else { c });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::tcp;
    use super::*;

    proptest::proptest! {
        /// A packet whose checksum field holds the pseudo-header sum is taken as partial
        /// without reading its payload, and finishing it (as the kernel does for
        /// NEEDS_CSUM) gives exactly the sender's complete packet; a complete checksum
        /// that is not the pseudo-header sum is left alone.
        #[test]
        fn partial_is_told_by_the_field_and_finishes_to_the_complete_packet(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            seq in proptest::prelude::any::<u32>(),
        ) {
            use crate::wire::checksum;
            let complete = tcp(false, seq, &[], false, &data);
            let l4_len = complete.len() - 20;
            let pseudo = checksum::fold(pseudo_sum(&complete, false, PROTO_TCP, l4_len));
            let mut partial = complete.clone();
            set_be16(&mut partial, 20 + 16, pseudo);
            let h = partial_checksum_hdr(&partial, 0).expect("taken as partial");
            proptest::prop_assert_eq!((h.csum_start, h.csum_offset), (20, 16));
            tso::finish_checksum(&h, &mut partial).unwrap();
            proptest::prop_assert_eq!(&partial, &complete);
            if be16(&complete, 20 + 16) != pseudo {
                proptest::prop_assert!(partial_checksum_hdr(&complete, 0).is_none());
            }
        }
    }

    #[test]
    fn ip_len_covers_whole_packets_only() {
        for v6 in [false, true] {
            let p = tcp(v6, 1, &[], false, &[7u8; 300]);
            assert!(ip_len_covers(&p), "v6 {v6}");
            // A run of merged datagrams is longer than the first packet says.
            let mut two = p.clone();
            two.extend_from_slice(&p);
            assert!(!ip_len_covers(&two), "v6 {v6}");
            assert!(!ip_len_covers(&p[..p.len() - 1]), "v6 {v6}");
        }
        assert!(!ip_len_covers(&[]));
        assert!(!ip_len_covers(&[0x45, 0, 0, 4]));
        assert!(!ip_len_covers(&[0x55; 64]));
    }
}
