//! Transmit side: split a TUN super-packet into segments, or finish its checksum.
//!
//! Input is what a read from a TUN opened with `IFF_VNET_HDR` gives, the header already
//! parsed: an IP packet that is either a TSO/USO super-packet (`gso_type` TCPV4, TCPV6 or
//! UDP_L4) or a single packet whose transport checksum may still be partial
//! (`NEEDS_CSUM`). Output goes into one caller buffer at a fixed stride, each segment
//! preceded by `headroom` bytes for the encapsulation header, so that the encapsulated
//! datagrams lie back to back: exactly the buffer UDP GSO (`UDP_SEGMENT` = stride) sends.
//!
//! Nothing in the virtio header is trusted beyond the GSO type and size: the header length
//! is recomputed from the IP header length and the TCP data offset, lengths come from the
//! IP header and are checked against the buffer, and GSO checksums are computed whole.
//! IPv6 extension headers are refused for GSO packets (Linux does not build such TSO
//! packets on a TUN; refusing keeps the pseudo-header exact). No allocation.

use super::{
    be16, be32, need, parse_ip, pseudo_sum, set_be16, set_be32, tcp_flags, IpInfo, OffloadError,
    PROTO_TCP, PROTO_UDP,
};
use crate::wire::checksum;
use crate::wire::virtio::{self, VirtioNetHdr};
use std::ops::Range;

/// Where [`segment`] put the segments in the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of segments (at least 1).
    pub count: usize,
    /// Bytes left free before each segment's IP packet.
    pub headroom: usize,
    /// Distance from one segment's headroom to the next: `headroom + seg_len`.
    pub stride: usize,
    /// IP packet length of every segment but the last.
    pub seg_len: usize,
    /// IP packet length of the last segment (≤ `seg_len`).
    pub last_len: usize,
}

impl Layout {
    /// Bytes of the output buffer used, from the first headroom to the end of the last
    /// segment.
    pub fn out_len(&self) -> usize {
        (self.count - 1) * self.stride + self.headroom + self.last_len
    }

    /// Range of segment `i`'s IP packet in the output buffer (`i < count`).
    pub fn packet(&self, i: usize) -> Range<usize> {
        let start = i * self.stride + self.headroom;
        let len = if i + 1 == self.count {
            self.last_len
        } else {
            self.seg_len
        };
        start..start + len
    }

    /// Range of segment `i` including its headroom: the datagram once encapsulated.
    pub fn datagram(&self, i: usize) -> Range<usize> {
        let p = self.packet(i);
        p.start - self.headroom..p.end
    }
}

/// Transport protocol of a GSO packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

/// What a packet needs, decided once by [`analyse`].
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// One packet of `total` bytes, copied as is, its checksum finished when `csum` is set.
    Single {
        total: usize,
        csum: Option<(usize, usize)>,
    },
    /// A super-packet: headers of `hdr_len` bytes, payload cut in `gso`-byte pieces.
    Gso {
        ip: IpInfo,
        l4: L4,
        hdr_len: usize,
        gso: usize,
    },
}

/// Checks `pkt` against `hdr` and decides what to do with it.
fn analyse(hdr: &VirtioNetHdr, pkt: &[u8]) -> Result<Plan, OffloadError> {
    let ip = parse_ip(pkt)?;
    let kind = hdr.gso_kind();
    if kind == virtio::GSO_NONE {
        if !hdr.needs_csum() {
            return Ok(Plan::Single {
                total: ip.total,
                csum: None,
            });
        }
        let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
        if start < ip.hdr_len || start + offset + 2 > ip.total {
            return Err(OffloadError::BadCsumOffsets {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
                len: ip.total,
            });
        }
        return Ok(Plan::Single {
            total: ip.total,
            csum: Some((start, start + offset)),
        });
    }

    let (l4, want_v6) = match kind {
        virtio::GSO_TCPV4 => (L4::Tcp, Some(false)),
        virtio::GSO_TCPV6 => (L4::Tcp, Some(true)),
        virtio::GSO_UDP_L4 => (L4::Udp, None),
        other => return Err(OffloadError::UnsupportedGso(other)),
    };
    let proto = if l4 == L4::Tcp { PROTO_TCP } else { PROTO_UDP };
    if ip.proto != proto || want_v6.is_some_and(|v6| v6 != ip.v6) {
        return Err(OffloadError::GsoMismatch {
            gso_type: hdr.gso_type,
            version: if ip.v6 { 6 } else { 4 },
            proto: ip.proto,
        });
    }
    if hdr.gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    // MF set or a fragment offset: a fragment cannot be segmented.
    if !ip.v6 && be16(pkt, 6) & 0x3fff != 0 {
        return Err(OffloadError::Fragment);
    }
    let l4_start = ip.hdr_len;
    let hdr_len = match l4 {
        L4::Tcp => {
            need(&pkt[..ip.total], l4_start + 20)?;
            let doff = pkt[l4_start + 12] >> 4;
            if doff < 5 {
                return Err(OffloadError::BadTcpHeader(doff));
            }
            l4_start + usize::from(doff) * 4
        }
        L4::Udp => l4_start + 8,
    };
    need(&pkt[..ip.total], hdr_len)?;
    Ok(Plan::Gso {
        ip,
        l4,
        hdr_len,
        gso: usize::from(hdr.gso_size),
    })
}

/// The shape of a checked GSO super-packet, for a sender that hands the kernel the whole
/// super-packet to segment (UDP-tunnel GSO): what its header must describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoShape {
    pub v6: bool,
    /// TCP (else UDP, USO).
    pub tcp: bool,
    /// IP header bytes: where the transport header starts.
    pub ip_hdr_len: usize,
    /// IP + transport header bytes.
    pub hdr_len: usize,
    /// Payload bytes per segment (the last may be shorter).
    pub gso: usize,
    /// The whole packet's length.
    pub total: usize,
    /// Number of segments.
    pub count: usize,
}

/// Checks `pkt` against `hdr` as [`segment`] would and, for a GSO super-packet, describes
/// it without writing anything; `Ok(None)` for a packet that needs no segmenting.
pub fn gso_shape(hdr: &VirtioNetHdr, pkt: &[u8]) -> Result<Option<GsoShape>, OffloadError> {
    let p = analyse(hdr, pkt)?;
    let Plan::Gso {
        ip,
        l4,
        hdr_len,
        gso,
    } = p
    else {
        return Ok(None);
    };
    Ok(Some(GsoShape {
        v6: ip.v6,
        tcp: l4 == L4::Tcp,
        ip_hdr_len: ip.hdr_len,
        hdr_len,
        gso,
        total: ip.total,
        count: layout(&p, 0).count,
    }))
}

/// Computes where [`segment`] would put the segments of `pkt`, without writing anything:
/// lets the caller size or pick its output buffer.
pub fn plan(hdr: &VirtioNetHdr, pkt: &[u8], headroom: usize) -> Result<Layout, OffloadError> {
    let p = analyse(hdr, pkt)?;
    Ok(layout(&p, headroom))
}

fn layout(p: &Plan, headroom: usize) -> Layout {
    match *p {
        Plan::Single { total, .. } => Layout {
            count: 1,
            headroom,
            stride: headroom + total,
            seg_len: total,
            last_len: total,
        },
        Plan::Gso {
            ip, hdr_len, gso, ..
        } => {
            let payload = ip.total - hdr_len;
            let count = payload.div_ceil(gso).max(1);
            let seg_len = hdr_len + gso.min(payload);
            Layout {
                count,
                headroom,
                stride: headroom + seg_len,
                seg_len,
                last_len: hdr_len + payload - (count - 1) * gso.min(payload),
            }
        }
    }
}

/// Segments `pkt` (an IP packet, no virtio header) as `hdr` asks.
///
/// Segment `i`'s IP packet is written at `out[layout.packet(i)]`; the `headroom` bytes
/// before each are left untouched for the caller's encapsulation header. All segments but
/// the last have the same length, as UDP GSO requires. A non-GSO packet gives one segment,
/// its checksum finished when `NEEDS_CSUM` is set.
///
/// TCP segments get their IPv4 total length, ID (+i) and header checksum (IPv6 payload
/// length), sequence number (+gso_size·i), FIN and PSH only on the last, CWR only on the
/// first, and a full checksum. UDP (USO) segments get their length and checksum.
///
/// The count is not capped: the kernel accepts at most 64 segments per `UDP_SEGMENT` send,
/// so a caller sending with UDP GSO splits `count` into runs of at most 64 (a small
/// `gso_size` gives hundreds). [`plan`] gives the layout beforehand.
pub fn segment(
    hdr: &VirtioNetHdr,
    pkt: &[u8],
    headroom: usize,
    out: &mut [u8],
) -> Result<Layout, OffloadError> {
    let p = analyse(hdr, pkt)?;
    let lay = layout(&p, headroom);
    let needed = (lay.count - 1)
        .checked_mul(lay.stride)
        .and_then(|n| n.checked_add(headroom))
        .and_then(|n| n.checked_add(lay.last_len));
    match needed {
        Some(n) if n <= out.len() => {}
        _ => {
            return Err(OffloadError::OutTooSmall {
                needed: needed.unwrap_or(usize::MAX),
                have: out.len(),
            })
        }
    }
    match p {
        Plan::Single { total, csum } => {
            let dst = &mut out[headroom..headroom + total];
            dst.copy_from_slice(&pkt[..total]);
            if let Some((start, at)) = csum {
                store_finished(dst, start, at);
            }
        }
        Plan::Gso {
            ip,
            l4,
            hdr_len,
            gso,
        } => write_segments(pkt, ip, l4, hdr_len, gso, &lay, out),
    }
    Ok(lay)
}

/// Finishes the partial checksum of a non-GSO packet in place (no copy), for callers that
/// encapsulate single packets where they were read. GSO packets must go through
/// [`segment`]; they give [`OffloadError::UnsupportedGso`] here.
pub fn finish_checksum(hdr: &VirtioNetHdr, pkt: &mut [u8]) -> Result<(), OffloadError> {
    if hdr.gso_kind() != virtio::GSO_NONE {
        return Err(OffloadError::UnsupportedGso(hdr.gso_type));
    }
    if let Plan::Single {
        total,
        csum: Some((start, at)),
    } = analyse(hdr, pkt)?
    {
        store_finished(&mut pkt[..total], start, at);
    }
    Ok(())
}

/// Sums `pkt[start..]` (the checksum field already holds the pseudo-header sum, as with
/// CHECKSUM_PARTIAL) and stores the result at `at`, 0 sent as 0xffff like the kernel's
/// `skb_checksum_help` (required for UDP, equivalent for the others).
fn store_finished(pkt: &mut [u8], start: usize, at: usize) {
    let c = !checksum::fold(checksum::add(0, &pkt[start..]));
    set_be16(pkt, at, if c == 0 { 0xffff } else { c });
}

fn write_segments(
    pkt: &[u8],
    ip: IpInfo,
    l4: L4,
    hdr_len: usize,
    gso: usize,
    lay: &Layout,
    out: &mut [u8],
) {
    let fix = SegmentFix::new(pkt, ip, l4, hdr_len, gso, lay.count);
    let payload = &pkt[hdr_len..ip.total];
    for i in 0..lay.count {
        let from = (i * gso).min(payload.len());
        let chunk = &payload[from..(from + gso).min(payload.len())];
        let (h, body) = out[lay.packet(i)].split_at_mut(hdr_len);
        body.copy_from_slice(chunk);
        fix.header(h, i, chunk);
    }
}

/// What every segment's header derives from: the super-packet's header fields that change
/// per segment, read once.
struct SegmentFix<'a> {
    headers: &'a [u8],
    ip: IpInfo,
    l4: L4,
    gso: usize,
    last: usize,
    id0: u16,
    seq0: u32,
    flags0: u8,
}

impl<'a> SegmentFix<'a> {
    fn new(pkt: &'a [u8], ip: IpInfo, l4: L4, hdr_len: usize, gso: usize, count: usize) -> Self {
        let t = ip.hdr_len;
        SegmentFix {
            headers: &pkt[..hdr_len],
            ip,
            l4,
            gso,
            last: count - 1,
            id0: if ip.v6 { 0 } else { be16(pkt, 4) },
            seq0: if l4 == L4::Tcp { be32(pkt, t + 4) } else { 0 },
            flags0: if l4 == L4::Tcp { pkt[t + 13] } else { 0 },
        }
    }

    /// Writes segment `i`'s IP + transport header into `h` (`hdr_len` bytes) for the payload
    /// `chunk`: lengths, IPv4 ID and header checksum, TCP sequence and flags, and the
    /// transport checksum over the header and `chunk` (which need not follow `h` in memory:
    /// the header's length is even, so the two sums add up).
    fn header(&self, h: &mut [u8], i: usize, chunk: &[u8]) {
        let (ip, t) = (self.ip, self.ip.hdr_len);
        h.copy_from_slice(self.headers);
        let len = h.len() + chunk.len();
        if ip.v6 {
            set_be16(h, 4, (len - 40) as u16);
        } else {
            set_be16(h, 2, len as u16);
            set_be16(h, 4, self.id0.wrapping_add(i as u16));
            set_be16(h, 10, 0);
            let c = checksum::checksum(&h[..t]);
            set_be16(h, 10, c);
        }
        let l4_len = len - t;
        let csum_at = match self.l4 {
            L4::Tcp => {
                set_be32(h, t + 4, self.seq0.wrapping_add((i * self.gso) as u32));
                let mut flags = self.flags0;
                if i != self.last {
                    flags &= !(tcp_flags::FIN | tcp_flags::PSH);
                }
                if i != 0 {
                    flags &= !tcp_flags::CWR;
                }
                h[t + 13] = flags;
                t + 16
            }
            L4::Udp => {
                set_be16(h, t + 4, l4_len as u16);
                t + 6
            }
        };
        set_be16(h, csum_at, 0);
        let proto = if self.l4 == L4::Tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let sum = checksum::add(pseudo_sum(h, ip.v6, proto, l4_len), &h[t..]);
        let c = !checksum::fold(checksum::add(sum, chunk));
        let c = if c == 0 && self.l4 == L4::Udp {
            0xffff
        } else {
            c
        };
        set_be16(h, csum_at, c);
    }
}

/// Where [`segment_headers`] put each segment's headers, and where its payload stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLayout {
    /// Number of segments (at least 2).
    pub count: usize,
    /// Bytes left free before each header block (for the encapsulation).
    pub headroom: usize,
    /// IP + transport header bytes of every segment.
    pub hdr_len: usize,
    /// Payload bytes of every segment but the last.
    pub gso: usize,
    /// Where the payload ends in the super-packet (it starts right after the headers,
    /// at `hdr_len`).
    pub payload_end: usize,
}

impl HeaderLayout {
    /// Segment `i`'s header block in the output, headroom included.
    pub fn header(&self, i: usize) -> Range<usize> {
        let start = i * (self.headroom + self.hdr_len);
        start..start + self.headroom + self.hdr_len
    }

    /// Segment `i`'s payload in the super-packet.
    pub fn chunk(&self, i: usize) -> Range<usize> {
        let from = self.hdr_len + i * self.gso;
        from..(from + self.gso).min(self.payload_end)
    }
}

/// Like [`segment`] for a GSO super-packet, but without copying its payload: only each
/// segment's headers are written to `out` (at [`HeaderLayout::header`], after `headroom`
/// bytes left for the encapsulation), complete with the checksums over their payload, which
/// stays in `pkt` at [`HeaderLayout::chunk`]. Header `i` followed by chunk `i` is exactly
/// the packet [`segment`] writes. For a sender that hands the kernel (header, payload)
/// pairs as an iovec.
///
/// `Ok(None)` for a packet that needs no segmenting (then use [`segment`]).
pub fn segment_headers(
    hdr: &VirtioNetHdr,
    pkt: &[u8],
    headroom: usize,
    out: &mut [u8],
) -> Result<Option<HeaderLayout>, OffloadError> {
    let plan = analyse(hdr, pkt)?;
    let Plan::Gso {
        ip,
        l4,
        hdr_len,
        gso,
    } = plan
    else {
        return Ok(None);
    };
    let count = layout(&plan, headroom).count;
    let hl = HeaderLayout {
        count,
        headroom,
        hdr_len,
        gso,
        payload_end: ip.total,
    };
    let needed = count * (headroom + hdr_len);
    if needed > out.len() {
        return Err(OffloadError::OutTooSmall {
            needed,
            have: out.len(),
        });
    }
    let fix = SegmentFix::new(pkt, ip, l4, hdr_len, gso, count);
    for i in 0..count {
        let r = hl.header(i);
        fix.header(&mut out[r.start + headroom..r.end], i, &pkt[hl.chunk(i)]);
    }
    Ok(Some(hl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testutil::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    const HEADROOM: usize = 50;

    /// Splits and checks every segment with etherparse against the original.
    fn split_and_check(v6: bool, payload_len: usize, gso: u16, opts: &[u8], psh: bool) {
        let data = payload(payload_len, 7);
        let seq0 = 0xffff_f000; // wraps during the split
        let (hdr, sp) = as_tso(tcp(v6, seq0, opts, psh, &data), gso);
        let mut out = vec![0xaau8; 200_000];
        let lay = segment(&hdr, &sp, HEADROOM, &mut out).expect("valid super-packet");
        let hdr_len = (if v6 { 40 } else { 20 }) + 20 + opts.len();
        assert_eq!(lay.count, payload_len.div_ceil(gso as usize).max(1));
        assert_eq!(lay.stride, HEADROOM + lay.seg_len);
        let mut stream = Vec::new();
        for i in 0..lay.count {
            let d = lay.datagram(i);
            assert!(
                out[d.start..d.start + HEADROOM].iter().all(|&b| b == 0xaa),
                "headroom kept"
            );
            let seg = &out[lay.packet(i)];
            let p = SlicedPacket::from_ip(seg).expect("segment parses");
            match p.net {
                Some(NetSlice::Ipv4(ref v4)) => {
                    let h = v4.header();
                    assert_eq!(usize::from(h.total_len()), seg.len());
                    assert_eq!(h.identification(), be16(&sp, 4).wrapping_add(i as u16));
                    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                }
                Some(NetSlice::Ipv6(ref v6h)) => {
                    assert_eq!(usize::from(v6h.header().payload_length()) + 40, seg.len());
                }
                _ => panic!("not IP"),
            }
            let Some(TransportSlice::Tcp(t)) = p.transport else {
                panic!("not TCP")
            };
            assert_eq!(
                t.sequence_number(),
                seq0.wrapping_add(i as u32 * u32::from(gso))
            );
            assert_eq!(t.acknowledgment_number(), 0x1234_5678);
            assert_eq!(t.options(), opts);
            assert_eq!(t.psh(), psh && i == lay.count - 1);
            let want = match p.net {
                Some(NetSlice::Ipv4(ref v4)) => {
                    let h = v4.header();
                    t.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
                }
                Some(NetSlice::Ipv6(ref v6h)) => {
                    let h = v6h.header();
                    t.calc_checksum_ipv6(h.source(), h.destination()).unwrap()
                }
                _ => unreachable!(),
            };
            assert_eq!(t.checksum(), want, "segment {i} checksum");
            assert!(tcp_csum_ok(seg));
            if i + 1 < lay.count {
                assert_eq!(seg.len(), hdr_len + gso as usize);
            }
            stream.extend_from_slice(t.payload());
        }
        assert_eq!(stream, data);
    }

    #[test]
    fn split_64k_ipv4() {
        split_and_check(
            false,
            65535 - 52,
            1398,
            &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            true,
        );
    }

    #[test]
    fn split_64k_ipv6() {
        split_and_check(
            true,
            65535 - 40 - 32,
            1386,
            &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            false,
        );
    }

    #[test]
    fn split_exact_multiple_and_single() {
        split_and_check(false, 1398 * 4, 1398, &[], true);
        split_and_check(false, 100, 1398, &[], true);
        split_and_check(true, 0, 1398, &[], false);
    }

    #[test]
    fn fin_and_cwr_placement() {
        let mut sp = tcp(false, 1, &[], true, &payload(3000, 1));
        sp[20 + 13] |= tcp_flags::FIN | tcp_flags::CWR;
        let (hdr, sp) = as_tso(sp, 1000);
        let mut out = vec![0u8; 8000];
        let lay = segment(&hdr, &sp, 0, &mut out).unwrap();
        assert_eq!(lay.count, 3);
        let flags: Vec<u8> = (0..3).map(|i| out[lay.packet(i)][33]).collect();
        assert_eq!(
            flags[0] & (tcp_flags::FIN | tcp_flags::PSH | tcp_flags::CWR),
            tcp_flags::CWR
        );
        assert_eq!(
            flags[1] & (tcp_flags::FIN | tcp_flags::PSH | tcp_flags::CWR),
            0
        );
        assert_eq!(
            flags[2] & (tcp_flags::FIN | tcp_flags::PSH | tcp_flags::CWR),
            tcp_flags::FIN | tcp_flags::PSH
        );
    }

    #[test]
    fn hdr_len_is_not_trusted() {
        let (mut hdr, sp) = as_tso(tcp(false, 1, &[1, 1, 1, 1], false, &payload(3000, 2)), 1000);
        hdr.hdr_len = 7;
        hdr.csum_start = 3;
        let mut out = vec![0u8; 8000];
        let lay = segment(&hdr, &sp, 0, &mut out).unwrap();
        assert_eq!(lay.seg_len, 44 + 1000);
        assert!(tcp_csum_ok(&out[lay.packet(0)]));
    }

    #[test]
    fn udp_needs_csum_not_gso() {
        for v6 in [false, true] {
            let b = if v6 {
                etherparse::PacketBuilder::ipv6(SRC6, DST6, 64)
            } else {
                etherparse::PacketBuilder::ipv4(SRC4, DST4, 64)
            };
            let mut good = Vec::new();
            b.udp(53, 5353).write(&mut good, &payload(333, 3)).unwrap();
            let ip_len = if v6 { 40 } else { 20 };
            // What the kernel writes: the pseudo-header sum in the checksum field.
            let mut partial = good.clone();
            let s = crate::wire::checksum::fold(pseudo_sum(&good, v6, PROTO_UDP, 8 + 333));
            set_be16(&mut partial, ip_len + 6, s);
            let hdr = VirtioNetHdr {
                flags: virtio::F_NEEDS_CSUM,
                csum_start: ip_len as u16,
                csum_offset: 6,
                ..Default::default()
            };
            let mut out = vec![0u8; 1000];
            let lay = segment(&hdr, &partial, 8, &mut out).unwrap();
            assert_eq!(lay.count, 1);
            assert_eq!(&out[lay.packet(0)], &good[..]);
            let mut inplace = partial.clone();
            finish_checksum(&hdr, &mut inplace).unwrap();
            assert_eq!(inplace, good);
        }
    }

    #[test]
    fn plain_packet_is_copied() {
        let p = tcp(false, 9, &[], false, b"hello");
        let mut out = vec![0u8; 100];
        let lay = segment(&VirtioNetHdr::default(), &p, 4, &mut out).unwrap();
        assert_eq!(lay, plan(&VirtioNetHdr::default(), &p, 4).unwrap());
        assert_eq!(&out[4..4 + p.len()], &p[..]);
        assert_eq!(lay.out_len(), 4 + p.len());
    }

    #[test]
    fn uso_split() {
        let mut sp = Vec::new();
        etherparse::PacketBuilder::ipv4(SRC4, DST4, 64)
            .udp(1000, 2000)
            .write(&mut sp, &payload(5000, 4))
            .unwrap();
        let hdr = VirtioNetHdr {
            flags: virtio::F_NEEDS_CSUM,
            gso_type: virtio::GSO_UDP_L4,
            gso_size: 1200,
            ..Default::default()
        };
        let mut out = vec![0u8; 8000];
        let lay = segment(&hdr, &sp, 0, &mut out).unwrap();
        assert_eq!(lay.count, 5);
        for i in 0..lay.count {
            let seg = &out[lay.packet(i)];
            let p = SlicedPacket::from_ip(seg).unwrap();
            let Some(TransportSlice::Udp(u)) = p.transport else {
                panic!()
            };
            assert_eq!(usize::from(u.length()), seg.len() - 20);
            let want = u
                .to_header()
                .calc_checksum_ipv4_raw(SRC4, DST4, u.payload())
                .unwrap();
            assert_eq!(u.checksum(), want);
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let (hdr, sp) = as_tso(tcp(false, 1, &[], false, &payload(3000, 5)), 1000);
        let mut out = vec![0u8; 10_000];
        let zero = VirtioNetHdr { gso_size: 0, ..hdr };
        assert_eq!(
            segment(&zero, &sp, 0, &mut out),
            Err(OffloadError::ZeroGsoSize)
        );
        assert!(matches!(
            segment(&hdr, &sp, 0, &mut out[..3000]),
            Err(OffloadError::OutTooSmall { .. })
        ));
        assert!(matches!(
            segment(&hdr, &sp[..30], 0, &mut out),
            Err(OffloadError::Truncated { .. })
        ));
        let v6 = VirtioNetHdr {
            gso_type: virtio::GSO_TCPV6,
            ..hdr
        };
        assert!(matches!(
            segment(&v6, &sp, 0, &mut out),
            Err(OffloadError::GsoMismatch { .. })
        ));
        let ufo = VirtioNetHdr {
            gso_type: virtio::GSO_UDP,
            ..hdr
        };
        assert_eq!(
            segment(&ufo, &sp, 0, &mut out),
            Err(OffloadError::UnsupportedGso(3))
        );
        let mut bad = sp.clone();
        bad[32] = 0x40; // data offset 4
        assert_eq!(
            segment(&hdr, &bad, 0, &mut out),
            Err(OffloadError::BadTcpHeader(4))
        );
        let mut bad = sp.clone();
        bad[0] = 0x44; // IHL 4
        assert_eq!(
            segment(&hdr, &bad, 0, &mut out),
            Err(OffloadError::BadIpHeader)
        );
        let mut bad = sp.clone();
        bad[6] |= 0x20; // MF
        assert_eq!(
            segment(&hdr, &bad, 0, &mut out),
            Err(OffloadError::Fragment)
        );
        let csum = VirtioNetHdr {
            flags: virtio::F_NEEDS_CSUM,
            csum_start: 10,
            csum_offset: 16,
            ..Default::default()
        };
        assert!(matches!(
            segment(&csum, &sp, 0, &mut out),
            Err(OffloadError::BadCsumOffsets { .. })
        ));
        let csum = VirtioNetHdr {
            csum_start: 3030,
            ..csum
        };
        assert!(matches!(
            segment(&csum, &sp, 0, &mut out),
            Err(OffloadError::BadCsumOffsets { .. })
        ));
        assert_eq!(
            segment(&hdr, &[0x10; 40], 0, &mut out),
            Err(OffloadError::NotIp(1))
        );
        assert!(segment(&hdr, &[], 0, &mut out).is_err());
    }

    #[test]
    fn ipv4_options_are_carried() {
        // IHL 6: one word of options (NOP NOP NOP EOL) copied into every segment.
        let base = tcp(false, 1, &[], false, &payload(2500, 6));
        let mut sp = Vec::with_capacity(base.len() + 4);
        sp.extend_from_slice(&base[..20]);
        sp.extend_from_slice(&[1, 1, 1, 0]);
        sp.extend_from_slice(&base[20..]);
        sp[0] = 0x46;
        let total = sp.len() as u16;
        set_be16(&mut sp, 2, total);
        let (hdr, sp) = as_tso(sp, 1000);
        let mut out = vec![0u8; 8000];
        let lay = segment(&hdr, &sp, 0, &mut out).unwrap();
        assert_eq!(lay.count, 3);
        for i in 0..3 {
            let seg = &out[lay.packet(i)];
            assert_eq!(checksum::checksum(&seg[..24]), 0);
            assert!(tcp_csum_ok(seg));
            assert_eq!(&seg[20..24], &[1, 1, 1, 0]);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(
            flags in any::<u8>(), gso_type in prop::sample::select(vec![0u8, 1, 3, 4, 5, 0x81, 9]),
            hdr_len in any::<u16>(), gso_size in any::<u16>(), csum_start in any::<u16>(),
            csum_offset in any::<u16>(), bytes in prop::collection::vec(any::<u8>(), 0..300),
            version in prop::sample::select(vec![0x45u8, 0x46, 0x60, 0x4f, 0x00]),
            headroom in 0usize..64,
        ) {
            let hdr = VirtioNetHdr { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset };
            let mut pkt = bytes;
            if let Some(b) = pkt.first_mut() { *b = version; }
            let mut out = vec![0u8; 4096];
            if let Ok(lay) = segment(&hdr, &pkt, headroom, &mut out) {
                prop_assert!(lay.out_len() <= out.len());
                prop_assert!(lay.last_len <= lay.seg_len);
            }
        }

        #[test]
        fn mutated_super_packet_never_panics(
            v6 in any::<bool>(), len in 0usize..4000, gso in 1u16..2000,
            edits in prop::collection::vec((0usize..120, any::<u8>()), 0..6),
            cut in 0usize..4200,
        ) {
            let (hdr, mut sp) = as_tso(tcp(v6, 5, &[], false, &payload(len, 8)), gso);
            for (at, b) in edits { if at < sp.len() { sp[at] = b; } }
            sp.truncate(cut);
            let mut out = vec![0u8; 16_384];
            let _ = segment(&hdr, &sp, 14, &mut out);
        }
    }

    /// Header i + chunk i from `segment_headers` is byte for byte segment i of `segment`,
    /// for TCP over IPv4 (with options) and over IPv6.
    #[test]
    fn headers_plus_chunks_equal_segments() {
        let cases = [
            as_tso(
                tcp(
                    false,
                    7,
                    &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
                    true,
                    &payload(65_000, 1),
                ),
                1398,
            ),
            as_tso(tcp(true, 9, &[], false, &payload(20_001, 2)), 1200),
            as_tso(tcp(false, 1, &[], true, &payload(3000, 3)), 1000),
        ];
        for (hdr, sp) in cases {
            let mut out = vec![0u8; 200_000];
            let lay = segment(&hdr, &sp, HEADROOM, &mut out).unwrap();
            let mut hbuf = vec![0u8; 20_000];
            let hl = segment_headers(&hdr, &sp, HEADROOM, &mut hbuf)
                .unwrap()
                .unwrap();
            assert_eq!(hl.count, lay.count);
            for i in 0..lay.count {
                let mut joined = hbuf[hl.header(i)][HEADROOM..].to_vec();
                joined.extend_from_slice(&sp[hl.chunk(i)]);
                assert_eq!(joined, &out[lay.packet(i)], "segment {i}");
                assert!(tcp_csum_ok(&joined));
            }
        }
        // A packet that needs no segmenting is left to `segment`.
        let plain = tcp(false, 1, &[], true, &payload(100, 4));
        let mut hbuf = vec![0u8; 200];
        assert_eq!(
            segment_headers(&VirtioNetHdr::default(), &plain, 8, &mut hbuf),
            Ok(None)
        );
        // Too small an output is an error, not a panic.
        let (hdr, sp) = as_tso(tcp(false, 1, &[], true, &payload(10_000, 5)), 1000);
        assert!(matches!(
            segment_headers(&hdr, &sp, 8, &mut hbuf),
            Err(OffloadError::OutTooSmall { .. })
        ));
    }
}
