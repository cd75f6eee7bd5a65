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
//! (receive). Headers are read and rewritten only through the `wire` views
//! ([`ip::parse`], [`ipv4`], [`ipv6`](crate::wire::ipv6), [`tcp`], [`udp`]); this layer
//! holds the offload rules, not header layouts.

pub mod gro;
pub mod tso;

pub use gro::{Coalescer, GroStats};
pub use tso::{finish_checksum, plan, segment, segment_headers, HeaderLayout, Layout};

use crate::drop::DropReason;
use crate::wire::virtio::{self, VirtioNetHdr};
use crate::wire::{checksum, ip, ipv4, tcp, udp};

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

impl From<ip::Error> for OffloadError {
    fn from(e: ip::Error) -> Self {
        match e {
            ip::Error::Truncated { needed, len } => OffloadError::Truncated { needed, len },
            ip::Error::NotIp(v) => OffloadError::NotIp(v),
            ip::Error::BadHeader => OffloadError::BadIpHeader,
        }
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

/// Recognises an IPv4 or IPv6 TCP or UDP packet whose transport checksum is only
/// *partial*: the field holds the folded pseudo-header sum that a sender with checksum
/// offload leaves for the NIC to finish (Linux `CHECKSUM_PARTIAL`). Over veth no NIC ever
/// finishes it, and a peer's kernel VXLAN hands such packets to our socket as they are;
/// they must be finished (or handed to the TUN with `NEEDS_CSUM`) before the kernel sees
/// them, or it drops them.
///
/// Returns the virtio header that makes the kernel finish the checksum (and segment the
/// packet, `TCPV4` or `TCPV6`, when its TCP payload is longer than `gso_size` allows, for
/// tunnelled GSO super-frames).
///
/// Only the checksum field is read, not the payload: a field equal to the pseudo-header
/// sum is taken as partial. A complete checksum that happens to equal it (1 in 65 536) is
/// then "finished" by the kernel into the value it already had (~(pseudo + data) is the
/// complete checksum by definition), so a second pass over the data to tell the two apart
/// would change no outcome; this is what lets a peer's whole 64 KiB tunnel-GSO frame go to
/// the device with no checksum work at all.
///
/// IPv4 packets must be whole (not fragments) and exactly as long as their total length;
/// IPv6 packets exactly as long as their payload length says, with TCP or UDP right after
/// the fixed header (extension headers are not walked: such packets are left alone).
pub fn partial_checksum_hdr(pkt: &[u8], gso_size: usize) -> Option<VirtioNetHdr> {
    let h = ip::parse(pkt).ok()?;
    if h.total_len != pkt.len() {
        return None;
    }
    if !h.is_v6() && ipv4::Packet::new_unchecked(pkt).is_fragment() {
        return None;
    }
    let ihl = h.header_len;
    let proto = h.protocol;
    let l4 = &pkt[ihl..];
    let (csum_offset, field) = match proto {
        ip::PROTO_TCP if l4.len() >= tcp::HEADER_LEN => (
            tcp::CHECKSUM_OFFSET,
            tcp::Packet::new_unchecked(l4).checksum(),
        ),
        ip::PROTO_UDP if l4.len() >= udp::HEADER_LEN => (
            udp::CHECKSUM_OFFSET,
            udp::Packet::new_unchecked(l4).checksum(),
        ),
        _ => return None,
    };
    let pseudo = checksum::fold(ip::pseudo_header_sum(pkt, h.version, proto, l4.len()));
    if field != pseudo {
        return None;
    }
    let mut hdr = VirtioNetHdr {
        flags: virtio::F_NEEDS_CSUM,
        csum_start: ihl as u16,
        csum_offset: csum_offset as u16,
        ..Default::default()
    };
    if proto == ip::PROTO_TCP && gso_size > 0 {
        let tcp_len = tcp::Packet::new_unchecked(l4).header_len();
        // A data offset beyond the segment leaves nothing to segment (and must not wrap).
        if l4.len().checked_sub(tcp_len).is_some_and(|n| n > gso_size) {
            hdr.gso_type = if h.is_v6() {
                virtio::GSO_TCPV6
            } else {
                virtio::GSO_TCPV4
            };
            hdr.gso_size = gso_size as u16;
            hdr.hdr_len = (ihl + tcp_len) as u16;
        }
    }
    Some(hdr)
}

/// The segment size that makes every segment of the TCP packet `ip` (IPv4, or IPv6 with
/// TCP right after the fixed header) fit `mtu` (what is left after its IP and TCP
/// headers); 0 when `ip` is not such a TCP packet.
pub fn tcp_mss_for_mtu(pkt: &[u8], mtu: usize) -> usize {
    let Ok(h) = ip::parse(pkt) else {
        return 0;
    };
    if h.protocol != ip::PROTO_TCP {
        return 0;
    }
    let Some(l4) = pkt
        .get(h.header_len..)
        .filter(|l| l.len() >= tcp::HEADER_LEN)
    else {
        return 0;
    };
    let tcp_len = tcp::Packet::new_unchecked(l4).header_len();
    mtu.saturating_sub(h.header_len + tcp_len).max(1)
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::wire::virtio::{self, VirtioNetHdr};
    use crate::wire::{checksum, ip, tcp};
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
    pub fn tcp_csum_ok(pkt: &[u8]) -> bool {
        let h = ip::parse(pkt).expect("valid IP");
        let l4 = &pkt[h.header_len..h.total_len];
        let s = ip::pseudo_header_sum(pkt, h.version, h.protocol, l4.len());
        checksum::fold(checksum::add(s, l4)) == 0xffff
    }

    /// What the kernel hands us for a TSO super-packet: the TCP checksum field holds the
    /// folded pseudo-header sum, and the virtio header describes the segmentation.
    pub fn as_tso(mut pkt: Vec<u8>, gso_size: u16) -> (VirtioNetHdr, Vec<u8>) {
        let h = ip::parse(&pkt).expect("valid IP");
        let l4_len = h.total_len - h.header_len;
        let partial = checksum::fold(ip::pseudo_header_sum(&pkt, h.version, h.protocol, l4_len));
        let mut t = tcp::Packet::new_unchecked(&mut pkt[h.header_len..]);
        t.set_checksum(partial);
        let doff = t.header_len();
        let hdr = VirtioNetHdr {
            flags: virtio::F_NEEDS_CSUM,
            gso_type: if h.is_v6() {
                virtio::GSO_TCPV6
            } else {
                virtio::GSO_TCPV4
            },
            hdr_len: (h.header_len + doff) as u16,
            gso_size,
            csum_start: h.header_len as u16,
            csum_offset: tcp::CHECKSUM_OFFSET as u16,
        };
        (hdr, pkt)
    }

    /// Finishes a CHECKSUM_PARTIAL packet the way the kernel does.
    pub fn kernel_finish(hdr: &VirtioNetHdr, pkt: &mut [u8]) {
        if hdr.needs_csum() {
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            let c = !checksum::fold(checksum::add(0, &pkt[start..]));
            let c = if c == 0 { 0xffff } else { c };
            pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{payload, tcp as tcp_pkt, SRC4};
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
            let complete = super::testutil::tcp(false, seq, &[], false, &data);
            let l4_len = complete.len() - 20;
            let v4 = ipv4::Packet::new_unchecked(&complete[..]);
            let pseudo = checksum::fold(checksum::pseudo_header_v4(
                v4.src_addr(), v4.dst_addr(), ip::PROTO_TCP, l4_len as u16));
            let mut partial = complete.clone();
            tcp::Packet::new_unchecked(&mut partial[20..]).set_checksum(pseudo);
            let h = partial_checksum_hdr(&partial, 0).expect("taken as partial");
            proptest::prop_assert_eq!((h.csum_start, h.csum_offset), (20, 16));
            tso::finish_checksum(&h, &mut partial).unwrap();
            proptest::prop_assert_eq!(&partial, &complete);
            if tcp::Packet::new_unchecked(&complete[20..]).checksum() != pseudo {
                proptest::prop_assert!(partial_checksum_hdr(&complete, 0).is_none());
            }
        }
    }

    #[test]
    fn ip_errors_keep_their_offload_names() {
        assert_eq!(
            OffloadError::from(ip::parse(&[0x45; 10]).unwrap_err()),
            OffloadError::Truncated {
                needed: 20,
                len: 10
            }
        );
        assert_eq!(
            OffloadError::from(ip::parse(&[0x20; 40]).unwrap_err()),
            OffloadError::NotIp(2)
        );
        assert_eq!(
            OffloadError::from(ip::parse(&[0x44; 40]).unwrap_err()),
            OffloadError::BadIpHeader
        );
    }

    /// A TCPv4 packet whose checksum field holds the pseudo-header sum, as a sender with
    /// checksum offload leaves it.
    fn partial(data: &[u8]) -> Vec<u8> {
        let mut p = tcp_pkt(false, 1, &[], false, data);
        let h = ip::parse(&p).unwrap();
        let s = ip::pseudo_header_sum(&p, h.version, h.protocol, h.total_len - h.header_len);
        tcp::Packet::new_unchecked(&mut p[20..]).set_checksum(checksum::fold(s));
        p
    }

    #[test]
    fn partial_checksum_recognised() {
        let p = partial(&payload(3000, 1));
        let h = partial_checksum_hdr(&p, 0).unwrap();
        assert_eq!(
            (h.flags, h.csum_start, h.csum_offset, h.gso_type),
            (virtio::F_NEEDS_CSUM, 20, 16, virtio::GSO_NONE)
        );
        let h = partial_checksum_hdr(&p, 1400).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size, h.hdr_len),
            (virtio::GSO_TCPV4, 1400, 40)
        );
        // Short enough for one segment: no GSO.
        assert_eq!(
            partial_checksum_hdr(&p, 3000).unwrap().gso_type,
            virtio::GSO_NONE
        );
        // A complete checksum, padding, a fragment, another protocol: nothing to do.
        let full = tcp_pkt(false, 1, &[], false, &payload(3000, 1));
        assert_eq!(partial_checksum_hdr(&full, 1400), None);
        let mut padded = p.clone();
        padded.push(0);
        assert_eq!(partial_checksum_hdr(&padded, 1400), None);
        let mut frag = p.clone();
        frag[6] |= 0x20;
        assert_eq!(partial_checksum_hdr(&frag, 1400), None);
        let mut udp_pkt = Vec::new();
        etherparse::PacketBuilder::ipv4(SRC4, [10, 244, 2, 3], 64)
            .udp(1, 2)
            .write(&mut udp_pkt, &payload(100, 2))
            .unwrap();
        let s = checksum::fold(checksum::pseudo_header_v4(
            SRC4.into(),
            [10, 244, 2, 3].into(),
            ip::PROTO_UDP,
            108,
        ));
        udp::Packet::new_unchecked(&mut udp_pkt[20..]).set_checksum(s);
        let h = partial_checksum_hdr(&udp_pkt, 1400).unwrap();
        assert_eq!((h.csum_offset, h.gso_type), (6, virtio::GSO_NONE));
        assert_eq!(partial_checksum_hdr(&[], 1400), None);
        assert_eq!(partial_checksum_hdr(&[0x45; 27], 1400), None);
    }

    /// IPv6: a partial TCP or UDP checksum is told by the field alone too, finishes to the
    /// sender's complete packet, and a long one is segmented as TCPV6; the MSS that fits an
    /// MTU counts the 40-byte header.
    #[test]
    fn partial_checksum_recognised_for_ipv6() {
        let complete = tcp_pkt(true, 9, &[], false, &payload(3000, 4));
        let mut p = complete.clone();
        let s = ip::pseudo_header_sum(&p, ip::Version::Ipv6, ip::PROTO_TCP, p.len() - 40);
        tcp::Packet::new_unchecked(&mut p[40..]).set_checksum(checksum::fold(s));
        let h = partial_checksum_hdr(&p, 1400).unwrap();
        assert_eq!(
            (
                h.csum_start,
                h.csum_offset,
                h.gso_type,
                h.gso_size,
                h.hdr_len
            ),
            (40, 16, virtio::GSO_TCPV6, 1400, 60)
        );
        let h = partial_checksum_hdr(&p, 0).unwrap();
        assert_eq!(h.gso_type, virtio::GSO_NONE);
        tso::finish_checksum(&h, &mut p).unwrap();
        assert_eq!(p, complete);
        assert_eq!(partial_checksum_hdr(&complete, 1400), None);
        // Padding, a truncated payload length, an extension header: left alone.
        let mut padded = p.clone();
        tcp::Packet::new_unchecked(&mut padded[40..]).set_checksum(checksum::fold(s));
        padded.push(0);
        assert_eq!(partial_checksum_hdr(&padded, 0), None);
        let mut hop = padded[..padded.len() - 1].to_vec();
        hop[6] = 0; // hop-by-hop options first
        assert_eq!(partial_checksum_hdr(&hop, 0), None);
        // UDP.
        let mut u = Vec::new();
        etherparse::PacketBuilder::ipv6(testutil::SRC6, testutil::DST6, 64)
            .udp(1, 2)
            .write(&mut u, &payload(100, 2))
            .unwrap();
        let s = ip::pseudo_header_sum(&u, ip::Version::Ipv6, ip::PROTO_UDP, 108);
        udp::Packet::new_unchecked(&mut u[40..]).set_checksum(checksum::fold(s));
        let h = partial_checksum_hdr(&u, 1400).unwrap();
        assert_eq!(
            (h.csum_start, h.csum_offset, h.gso_type),
            (40, 6, virtio::GSO_NONE)
        );
        assert_eq!(tcp_mss_for_mtu(&complete, 1450), 1450 - 60);
        assert_eq!(
            tcp_mss_for_mtu(&tcp_pkt(false, 1, &[], false, &[]), 1450),
            1410
        );
        assert_eq!(tcp_mss_for_mtu(&u, 1450), 0);
    }

    /// A data offset that claims more header than the segment holds must not wrap the
    /// payload length (it panicked with overflow checks on).
    #[test]
    fn partial_checksum_bad_data_offset() {
        let mut p = partial(&[]);
        tcp::Packet::new_unchecked(&mut p[20..]).set_header_len(60);
        let h = ip::parse(&p).unwrap();
        let s = ip::pseudo_header_sum(&p, h.version, h.protocol, 20);
        tcp::Packet::new_unchecked(&mut p[20..]).set_checksum(checksum::fold(s));
        let h = partial_checksum_hdr(&p, 1).unwrap();
        assert_eq!(h.gso_type, virtio::GSO_NONE);
    }
}
