//! Transmit through the kernel's UDP-tunnel GSO (Linux ≥ 6.17): one write of one whole
//! encapsulated super-packet, which the kernel segments (or hands whole to a veth, or to a
//! NIC that segments tunnels) exactly as it does for its own VXLAN device.
//!
//! The packet is written to a TAP (set up by [`crate::gso_tap`]) as an Ethernet frame
//! addressed to the TAP itself, so the kernel routes it out of the underlay like a
//! forwarded packet: `[outer Ethernet][outer IPv4 or IPv6][outer UDP][encapsulation][link]
//! [inner IP super-packet]`, preceded by the 24-byte virtio header that names the tunnel
//! (`outer_th_offset`: 34 with IPv4, 54 with IPv6; `inner_nh_offset`) and the inner
//! segmentation (`gso_size`, the inner transport checksum left partial). Userspace writes
//! headers only: no segment layout, no inner checksum pass; the payload's one copy is the
//! kernel's.
//!
//! The outer headers are written in place in the read buffer's headroom, in front of the
//! encapsulation. A kernel that refuses the write (EINVAL/EIO) turns this way off for that
//! destination only (the caller's [`Fallback`](super::fallback::Fallback) table, until
//! its re-probe), which then takes the userspace-segmenting way. So does a destination in
//! [`NarrowPaths`]: the write succeeds, but the kernel cannot forward the segments of an
//! IPv6 super-packet over a path narrower than they are (a forwarded IPv6 packet is never
//! fragmented) and answers "packet too big" instead, which [`crate::gso_tap`] reads.

use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use super::fallback::{gso_refused, REPROBE};
use super::Sent;
use crate::offload::tso::GsoShape;
use crate::sys::tun::Queue;
use crate::wire::virtio::{self, TunnelHdr, VirtioNetHdr};
use crate::wire::{checksum, ether, ip, ipv4, ipv6, udp};

/// Outer bytes in front of the encapsulation: Ethernet, IPv4, UDP.
pub const OUTER_LEN: usize = ether::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;
/// The same with an IPv6 outer header.
pub const OUTER_LEN_V6: usize = ether::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN;
/// Outer TTL (hop limit) as written: forwarding from the TAP takes one, so the wire shows
/// 64 as the socket path's.
const OUTER_TTL: u8 = 65;

/// The tunnel-GSO TAP of a data plane: one queue per worker, and whether it is in use, per
/// outer family.
#[derive(Debug, Clone)]
pub struct Tunnel {
    pub queues: Vec<Arc<Queue>>,
    /// Our IPv4 underlay address: the outer source.
    pub src: Ipv4Addr,
    /// Our IPv6 underlay address, when IPv6 outer headers are in use.
    pub src6: Option<Ipv6Addr>,
    /// The TAP's MAC: the outer destination, so the kernel takes the frame as its own.
    pub mac: [u8; 6],
    /// IPv4 outer headers: on when the start-up probe found them taken (shared by every
    /// worker, L3 and L2; a later refusal is per destination, in the caller).
    pub on: Arc<AtomicBool>,
    /// IPv6 outer headers: the same (false without `src6`).
    pub on6: Arc<AtomicBool>,
    /// Destinations the kernel answered "packet too big" for.
    pub narrow: Arc<NarrowPaths>,
}

/// Underlay destinations a forwarded super-packet was too big for, each until [`REPROBE`]
/// after the last report: shared by every worker, written by one control-plane thread.
/// While it is empty (the usual case) a look-up is one relaxed load.
#[derive(Debug, Default)]
pub struct NarrowPaths {
    any: AtomicBool,
    /// (destination, reported at); replaced whole on each report.
    list: ArcSwap<Vec<(IpAddr, Instant)>>,
}

impl NarrowPaths {
    /// Records a report for `dst` at `now` (expired entries are dropped meanwhile); true
    /// when `dst` was not already held. Control plane only: it allocates.
    pub fn report(&self, dst: IpAddr, now: Instant) -> bool {
        let old = self.list.load();
        let mut list: Vec<_> = old
            .iter()
            .filter(|(d, at)| *d != dst && now < *at + REPROBE)
            .copied()
            .collect();
        let new = !old.iter().any(|(d, at)| *d == dst && now < *at + REPROBE);
        list.push((dst, now));
        self.list.store(Arc::new(list));
        self.any.store(true, Ordering::Release);
        new
    }

    /// Whether `dst` was reported less than [`REPROBE`] before `now()` (called only while
    /// some destination is held).
    pub fn holds(&self, dst: IpAddr, now: impl FnOnce() -> Instant) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let now = now();
        self.list
            .load()
            .iter()
            .any(|(d, at)| *d == dst && now < *at + REPROBE)
    }
}

impl Tunnel {
    /// What worker `i` writes through.
    pub fn for_worker(&self, i: usize) -> TunnelTx {
        TunnelTx {
            queue: self.queues[i % self.queues.len()].clone(),
            src: self.src,
            src6: self.src6,
            mac: self.mac,
            on: self.on.clone(),
            on6: self.on6.clone(),
            narrow: self.narrow.clone(),
            // Workers start a quarter of the ID space apart.
            ident: AtomicU16::new((i as u16).wrapping_mul(0x4000)),
        }
    }
}

/// One worker's handle on the tunnel-GSO TAP.
#[derive(Debug)]
pub struct TunnelTx {
    queue: Arc<Queue>,
    src: Ipv4Addr,
    src6: Option<Ipv6Addr>,
    mac: [u8; 6],
    on: Arc<AtomicBool>,
    on6: Arc<AtomicBool>,
    narrow: Arc<NarrowPaths>,
    /// The next outer IPv4 identification. The kernel numbers a super-packet's segments
    /// from the one written, so each write takes `count` of them: without it every
    /// super-packet's segments reuse the same IDs, and on a path that fragments them (DF
    /// is clear) fragments of different datagrams could be reassembled together.
    ident: AtomicU16,
}

/// Where the encapsulated frame lies in the buffer and what it carries.
#[derive(Debug, Clone, Copy)]
pub struct TunnelFrame {
    /// Start of the encapsulation (at least [`OUTER_LEN`] bytes of room before it, or
    /// [`OUTER_LEN_V6`] for an IPv6 outer header).
    pub at: usize,
    /// End of the inner packet.
    pub end: usize,
    /// Bytes from `at` to the inner IP header (encapsulation + link header).
    pub inner_ip: usize,
    /// The inner super-packet, checked.
    pub shape: GsoShape,
    /// The virtio header it was read with (for the GSO type's ECN bit and the MSS).
    pub vh: VirtioNetHdr,
}

impl TunnelTx {
    /// Whether this way is on for outer headers of the given family.
    pub fn on(&self, v6: bool) -> bool {
        match v6 {
            false => self.on.load(Ordering::Relaxed),
            true => self.src6.is_some() && self.on6.load(Ordering::Relaxed),
        }
    }

    /// Room the outer headers of the given family need in front of the encapsulation.
    pub const fn outer_len(v6: bool) -> usize {
        if v6 {
            OUTER_LEN_V6
        } else {
            OUTER_LEN
        }
    }

    /// Writes the frame once per destination (`dst`:`port`, from `src_port`), all of one
    /// family. `None`, having written nothing, when the kernel refuses the first write or a
    /// destination is in [`NarrowPaths`] (the caller then remembers the refusal for that
    /// destination), or when this TAP has no source address of the destinations' family:
    /// the caller sends another way.
    pub fn send<A: Copy + Into<IpAddr>>(
        &self,
        buf: &mut [u8],
        f: &TunnelFrame,
        dsts: &[A],
        port: u16,
        src_port: u16,
    ) -> Option<Sent> {
        let v6 = (*dsts.first()?).into().is_ipv6();
        if dsts.iter().any(|d| (*d).into().is_ipv6() != v6) || (v6 && self.src6.is_none()) {
            return None;
        }
        if dsts
            .iter()
            .any(|d| self.narrow.holds((*d).into(), Instant::now))
        {
            return None;
        }
        let (ip_len, ethertype, tunnel_type) = if v6 {
            (
                ipv6::HEADER_LEN,
                ether::ETHERTYPE_IPV6,
                virtio::GSO_UDP_TUNNEL_IPV6,
            )
        } else {
            (
                ipv4::HEADER_LEN,
                ether::ETHERTYPE_IPV4,
                virtio::GSO_UDP_TUNNEL_IPV4,
            )
        };
        let outer = ether::HEADER_LEN + ip_len + udp::HEADER_LEN;
        let o = f.at.checked_sub(outer)?;
        let udp_len = udp::HEADER_LEN + (f.end - f.at);
        let inner_nh = outer + f.inner_ip;
        let inner_type =
            f.vh.gso_type & !(virtio::GSO_UDP_TUNNEL_IPV4 | virtio::GSO_UDP_TUNNEL_IPV6);
        let hdr = TunnelHdr {
            base: VirtioNetHdr {
                flags: virtio::F_NEEDS_CSUM | virtio::F_UDP_TUNNEL_CSUM,
                gso_type: tunnel_type | inner_type,
                hdr_len: (inner_nh + f.shape.hdr_len) as u16,
                gso_size: f.shape.gso as u16,
                csum_start: (inner_nh + f.shape.ip_hdr_len) as u16,
                csum_offset: if f.shape.tcp { 16 } else { 6 },
            },
            outer_th_offset: (ether::HEADER_LEN + ip_len) as u16,
            inner_nh_offset: inner_nh as u16,
        }
        .to_bytes();
        // Each datagram repeats everything before the inner payload.
        let per_dgram_hdr = f.inner_ip + f.shape.hdr_len;
        let dgram_bytes = (f.end - f.at) as u64 + (f.shape.count as u64 - 1) * per_dgram_hdr as u64;
        let mut sent = Sent::default();
        ether::emit(&mut buf[o..], self.mac, self.mac, ethertype);
        let ip_at = o + ether::HEADER_LEN;
        let udp_at = ip_at + ip_len;
        for dst in dsts {
            // The pseudo-header sum, left for the kernel to finish per segment.
            let pseudo = match ((*dst).into(), self.src6) {
                (IpAddr::V4(dst), _) => {
                    ipv4::Repr {
                        src_addr: self.src,
                        dst_addr: dst,
                        protocol: ip::PROTO_UDP,
                        payload_len: udp_len as u16,
                        ttl: OUTER_TTL,
                        ident: self
                            .ident
                            .fetch_add(f.shape.count as u16, Ordering::Relaxed),
                    }
                    .emit(&mut buf[ip_at..]);
                    checksum::pseudo_header_v4(self.src, dst, ip::PROTO_UDP, udp_len as u16)
                }
                (IpAddr::V6(dst), Some(src6)) => {
                    ipv6::Repr {
                        src_addr: src6,
                        dst_addr: dst,
                        next_header: ip::PROTO_UDP,
                        payload_len: udp_len as u16,
                        hop_limit: OUTER_TTL,
                    }
                    .emit(&mut buf[ip_at..]);
                    checksum::pseudo_header_v6(src6, dst, ip::PROTO_UDP, udp_len as u32)
                }
                (IpAddr::V6(_), None) => return None,
            };
            udp::Repr {
                src_port,
                dst_port: port,
                payload_len: (udp_len - udp::HEADER_LEN) as u16,
            }
            .emit(&mut buf[udp_at..]);
            udp::Packet::new_unchecked(&mut buf[udp_at..udp_at + udp::HEADER_LEN])
                .set_checksum(checksum::fold(pseudo));
            let frame = &buf[o..f.end];
            match self
                .queue
                .write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)])
            {
                Ok(_) => {
                    sent.packets += f.shape.count as u64;
                    sent.bytes += dgram_bytes;
                    sent.calls += 1;
                }
                Err(e) if sent == Sent::default() && gso_refused(&e) => {
                    return None;
                }
                Err(_) => sent.dropped += f.shape.count as u64,
            }
        }
        sent.tunnel_writes = sent.calls;
        Some(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn narrow_paths_hold_a_reported_destination_until_the_reprobe_time() {
        let n = NarrowPaths::default();
        let (a, b): (IpAddr, IpAddr) = ("fd00::2".parse().unwrap(), "fd00::3".parse().unwrap());
        let t0 = Instant::now();
        assert!(!n.holds(a, || panic!("no clock read while empty")));
        assert!(n.report(a, t0));
        assert!(n.holds(a, || t0 + REPROBE - Duration::from_secs(1)));
        assert!(!n.holds(b, || t0), "only the reported destination");
        assert!(!n.report(a, t0 + Duration::from_secs(10)), "held already");
        let later = t0 + REPROBE + Duration::from_secs(5);
        assert!(n.holds(a, || later), "the last report counts");
        assert!(!n.holds(a, || later + REPROBE), "expired");
        assert!(n.report(b, later + REPROBE));
        assert_eq!(n.list.load().len(), 1, "the expired entry was dropped");
        assert!(n.report(a, later + REPROBE), "expired: new again");
    }
}
