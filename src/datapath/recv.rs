//! Receive: what an underlay socket hands over, split into datagrams, and the delivery of
//! accepted inner packets into a device, for the routed and the L2 data planes alike.
//!
//! With UDP GRO the kernel hands over a run of equal-size datagrams in one buffer, or — from
//! a peer kernel's VXLAN over veth — one whole tunnel-GSO frame longer than any datagram;
//! [`split`] tells which. [`Delivery`] then writes accepted packets: TCP segments of one flow
//! are coalesced into super-packets ([`Coalescer`]) when the device takes a virtio header,
//! also those whose transport checksum a sending kernel left partial (each datagram alone,
//! from a peer that segments with checksum offload); a whole partial super-packet is handed
//! over with `NEEDS_CSUM` and a GSO size; on a device without a virtio header partial
//! checksums are finished here. The link header a packet is written with ([`Link`]: nothing on
//! a TUN; an Ethernet header and maybe a VLAN tag on a TAP) goes in front through the
//! `writev`, never by copying the packet.

use std::io::{self, IoSlice};
use std::sync::Arc;

use super::spin::Turn;
use super::{would_block, SEG_BUF};
use crate::counters::{count_drop, DropCounters};
use crate::drop::DropReason;
use crate::offload::{tso, Coalescer};
use crate::sys::tun::Queue;
use crate::wire::{
    ether,
    virtio::{self, VirtioNetHdr},
};

/// How to walk one received buffer: datagrams of `chunk` bytes; `whole` when it is a peer
/// kernel's whole tunnel-GSO frame (one datagram whose inner packet is a super-packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub chunk: usize,
    pub whole: bool,
}

/// Splits a buffer of `len` bytes received with GRO segment size `seg` (0 = one datagram).
/// A buffer longer than `seg` whose inner IP packet, at `inner_ip_at` when the format has
/// one at a fixed offset, covers the rest exactly is one whole frame, not a run.
pub fn split(data: &[u8], seg: usize, inner_ip_at: Option<usize>) -> Split {
    let whole = seg > 0
        && data.len() > seg
        && inner_ip_at
            .and_then(|at| data.get(at..))
            .is_some_and(crate::wire::ip::len_covers);
    let chunk = if seg == 0 || whole {
        data.len().max(1)
    } else {
        seg
    };
    Split { chunk, whole }
}

/// Inner packets at least this long are full-size segments (a TCP sender segments at its
/// MSS, at least 1 220 bytes on any path IPv6 can use); shorter ones are ACKs and small
/// writes, which arrive alone on any wire.
pub const FULL_SEGMENT: usize = 1024;

/// Whether a received datagram is a full-size segment the kernel's UDP GRO left alone
/// (`seg` = 0: not part of a run) although its sender left its checksum `partial`: the
/// sign of segments encapsulated by this same kernel (peers in one host, behind a bridge
/// that segments with checksum offload on), which Linux never merges at the UDP level
/// (`udp_gro_receive` refuses any skb with `encapsulation` set since 6.9). Counted, so that
/// an operator can tell that cliff from a slow peer (docs/operations.md). Pure.
pub fn unmerged_partial(seg: usize, inner: &[u8], partial: Option<&VirtioNetHdr>) -> bool {
    seg == 0
        && inner.len() >= FULL_SEGMENT
        && partial.is_some_and(|h| h.gso_kind() == virtio::GSO_NONE)
}

/// Most `recvmmsg` batches one turn takes from a socket before the worker polls again.
pub const MAX_BATCHES: usize = 16;

/// A receive side as [`drain`] drives it: one underlay socket, its batch, and what to do
/// with each message. The routed and the L2 data planes implement it; the loop is here once.
pub trait Receive {
    /// One `recvmmsg` into the batch: how many messages came.
    fn receive(&mut self) -> io::Result<usize>;
    /// Messages one batch holds.
    fn capacity(&self) -> usize;
    /// Bytes in the largest of the first `n` messages.
    fn largest(&self, n: usize) -> usize;
    /// Handles message `i` of the batch just received.
    fn handle(&mut self, i: usize);
    /// A receive failed with something else than "nothing more" (counted by the caller).
    fn failed(&mut self);
    /// Writes what the coalescer holds.
    fn flush(&mut self);
}

/// Receives and handles up to [`MAX_BATCHES`] batches, then flushes the coalescer once:
/// segments merge across batches (a batch holds 8 or 16 datagrams, one 1 400-byte segment
/// each when the kernel's GRO did not merge them), and the hold ends when the socket is
/// empty. A batch that did not fill means it was: no further `recvmmsg` to be told so (one
/// system call less per hop of a ping; what arrives meanwhile makes the next `poll` return
/// at once).
pub fn drain(r: &mut impl Receive) -> Turn {
    let mut turn = Turn::default();
    for _ in 0..MAX_BATCHES {
        let n = match r.receive() {
            Ok(n) => n,
            Err(e) if would_block(&e) => break,
            Err(_) => {
                r.failed();
                break;
            }
        };
        turn.add(n, r.largest(n));
        for i in 0..n {
            r.handle(i);
        }
        if n < r.capacity() {
            break;
        }
    }
    r.flush();
    turn
}

/// The link-layer header a packet is written to its device with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// None: an IP packet on a TUN device.
    Ip,
    /// An Ethernet header, and the 802.1Q tag to restore between its addresses and its
    /// EtherType on a trunk.
    Eth {
        hdr: [u8; ether::HEADER_LEN],
        vid: Option<u16>,
    },
}

impl Link {
    /// Bytes it puts in front of the IP packet.
    pub fn len(&self) -> usize {
        match self {
            Link::Ip => 0,
            Link::Eth { vid: None, .. } => ether::HEADER_LEN,
            Link::Eth { vid: Some(_), .. } => ether::HEADER_LEN + ether::VLAN_TAG_LEN,
        }
    }

    /// Whether it puts nothing in front.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes one packet to `q`: the virtio header `vh` when the device takes one (its offsets,
/// relative to the IP packet, moved by the link header's length), the link header, then
/// `ip`, in one `writev`.
pub fn write_packet(
    q: &Queue,
    vh: Option<&VirtioNetHdr>,
    link: &Link,
    ip: &[u8],
) -> io::Result<usize> {
    let mut hb = [0u8; virtio::LEN];
    let h: &[u8] = match vh {
        Some(vh) => {
            let mut h = *vh;
            let shift = link.len() as u16;
            if h.needs_csum() {
                h.csum_start += shift;
            }
            if h.gso_kind() != virtio::GSO_NONE {
                h.hdr_len += shift;
            }
            h.emit(&mut hb);
            &hb
        }
        None => &[],
    };
    match link {
        Link::Ip => q.write_vectored(&[IoSlice::new(h), IoSlice::new(ip)]),
        Link::Eth { hdr, vid: None } => {
            q.write_vectored(&[IoSlice::new(h), IoSlice::new(hdr), IoSlice::new(ip)])
        }
        Link::Eth {
            hdr,
            vid: Some(vid),
        } => {
            let tag = ether::vlan_tag(*vid);
            q.write_vectored(&[
                IoSlice::new(h),
                IoSlice::new(&hdr[..12]),
                IoSlice::new(&tag),
                IoSlice::new(&hdr[12..]),
                IoSlice::new(ip),
            ])
        }
    }
}

/// Where an accepted packet goes: a device queue (by index into the worker's queues) and
/// the link header it is written with. What the coalescer holds belongs to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub queue: usize,
    pub link: Link,
}

/// One receive worker's delivery state: the coalescer (devices with a virtio header) and
/// the scratch space where partial checksums are finished (devices without).
pub struct Delivery {
    vnet: bool,
    coal: Option<Coalescer>,
    held: Option<Target>,
    scratch: Vec<u8>,
}

impl Delivery {
    /// For devices opened with a virtio header (`vnet`: coalescing on) or without.
    pub fn new(vnet: bool) -> Self {
        Self {
            vnet,
            coal: vnet.then(Coalescer::new),
            held: None,
            scratch: if vnet { Vec::new() } else { vec![0; SEG_BUF] },
        }
    }

    /// Delivers an accepted IP packet. `partial`: the virtio header for a packet whose
    /// transport checksum was left partial by its sender ([`offload::partial_checksum_hdr`]).
    pub fn ip(
        &mut self,
        qs: &[Arc<Queue>],
        t: Target,
        ip: &[u8],
        partial: Option<VirtioNetHdr>,
        drops: &DropCounters,
    ) {
        let q = &qs[t.queue];
        match (partial, self.coal.is_some()) {
            // One segment with a partial checksum (a peer segmenting with checksum offload,
            // which the kernel's UDP GRO leaves uncoalesced): merged like any other.
            (Some(h), true) if h.gso_kind() == virtio::GSO_NONE => {
                self.coalesce(qs, t, ip, h, drops)
            }
            (Some(h), true) => {
                // A whole super-packet. Keep the flow's order: anything held goes first.
                self.flush(qs, drops);
                counted(write_packet(q, Some(&h), &t.link, ip), drops);
            }
            (Some(h), false) => match tso::segment(&h, ip, 0, &mut self.scratch) {
                Ok(l) => {
                    for i in 0..l.count {
                        let p = &self.scratch[l.packet(i)];
                        counted(write_packet(q, None, &t.link, p), drops);
                    }
                }
                Err(e) => count_drop(drops, e.drop_reason(), 1),
            },
            (None, true) => self.coalesce(qs, t, ip, VirtioNetHdr::default(), drops),
            (None, false) => counted(write_packet(q, None, &t.link, ip), drops),
        }
    }

    /// Offers `ip` to the coalescer for target `t` (what is held for another target leaves
    /// first); `alone` is its header should it leave unmerged (see [`Coalescer::push_with`]).
    fn coalesce(
        &mut self,
        qs: &[Arc<Queue>],
        t: Target,
        ip: &[u8],
        alone: VirtioNetHdr,
        drops: &DropCounters,
    ) {
        let Some(c) = self.coal.as_mut() else {
            return;
        };
        if self.held != Some(t) {
            if let Some(prev) = self.held.take() {
                let pq = &qs[prev.queue];
                c.flush(&mut |p| emit(pq, &prev.link, p, drops));
            }
            self.held = Some(t);
        }
        let q = &qs[t.queue];
        c.push_with(ip, alone, &mut |p| emit(q, &t.link, p, drops));
    }

    /// Delivers anything that is not coalesced (ARP, other EtherTypes) as it is, after
    /// what is held.
    pub fn other(&mut self, qs: &[Arc<Queue>], t: Target, payload: &[u8], drops: &DropCounters) {
        self.flush(qs, drops);
        let vh = VirtioNetHdr::default();
        let vh = self.vnet.then_some(&vh);
        counted(write_packet(&qs[t.queue], vh, &t.link, payload), drops);
    }

    /// Writes whatever the coalescer holds (at the end of every receive batch).
    pub fn flush(&mut self, qs: &[Arc<Queue>], drops: &DropCounters) {
        if let (Some(c), Some(t)) = (self.coal.as_mut(), self.held.take()) {
            let q = &qs[t.queue];
            c.flush(&mut |p| emit(q, &t.link, p, drops));
        }
    }
}

/// Writes what the coalescer emitted (its virtio header, then the IP packet).
fn emit(q: &Queue, link: &Link, p: &[u8], drops: &DropCounters) {
    match VirtioNetHdr::parse(p) {
        Some(h) => counted(write_packet(q, Some(&h), link, &p[virtio::LEN..]), drops),
        None => count_drop(drops, DropReason::Truncated, 1),
    }
}

fn counted(r: io::Result<usize>, drops: &DropCounters) {
    if r.is_err() {
        count_drop(drops, DropReason::IoError, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(total: u16) -> Vec<u8> {
        let mut p = vec![0u8; total as usize];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p
    }

    #[test]
    fn only_full_partial_segments_that_came_alone_are_unmerged() {
        let seg = ipv4(1440);
        let partial = VirtioNetHdr {
            flags: virtio::F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        assert!(unmerged_partial(0, &seg, Some(&partial)));
        // Part of a GRO run: merged.
        assert!(!unmerged_partial(1440, &seg, Some(&partial)));
        // A complete checksum: nothing a kernel left for us.
        assert!(!unmerged_partial(0, &seg, None));
        // An ACK or a small write arrives alone on any wire.
        assert!(!unmerged_partial(0, &ipv4(52), Some(&partial)));
        // A whole super-packet is not a segment.
        let sup = VirtioNetHdr {
            gso_type: virtio::GSO_TCPV4,
            gso_size: 1400,
            ..partial
        };
        assert!(!unmerged_partial(0, &ipv4(9000), Some(&sup)));
    }

    #[test]
    fn split_tells_runs_from_whole_frames() {
        // A run of three 1000-byte datagrams.
        let run = vec![0u8; 3000];
        assert_eq!(
            split(&run, 1000, Some(22)),
            Split {
                chunk: 1000,
                whole: false
            }
        );
        // No GRO: one datagram.
        assert_eq!(
            split(&run, 0, Some(22)),
            Split {
                chunk: 3000,
                whole: false
            }
        );
        // One frame whose inner IPv4 packet (at 22) covers the rest.
        let mut whole = vec![0u8; 22];
        whole.extend(ipv4(2978));
        assert_eq!(
            split(&whole, 1000, Some(22)),
            Split {
                chunk: 3000,
                whole: true
            }
        );
        // The same bytes where the format has no inner packet at a fixed offset.
        assert_eq!(
            split(&whole, 1000, None),
            Split {
                chunk: 1000,
                whole: false
            }
        );
        // Inner length one short: a run after all.
        let mut short = vec![0u8; 22];
        short.extend(ipv4(2977));
        short.push(0);
        assert!(!split(&short, 1000, Some(22)).whole);
        assert_eq!(split(&[], 0, None).chunk, 1, "never a zero chunk");
    }

    #[test]
    fn link_lengths() {
        assert_eq!(Link::Ip.len(), 0);
        assert!(Link::Ip.is_empty());
        let hdr = [0u8; 14];
        assert_eq!(Link::Eth { hdr, vid: None }.len(), 14);
        assert_eq!(Link::Eth { hdr, vid: Some(10) }.len(), 18);
    }
}
