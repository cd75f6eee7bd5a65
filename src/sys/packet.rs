//! gre's transmit past the kernel's IP output path: each GRE packet gets its outer IPv4
//! header written here and goes to the underlay device through an `AF_PACKET` `SOCK_DGRAM`
//! socket (the kernel adds the Ethernet header for the next hop's MAC) with
//! `PACKET_QDISC_BYPASS`. A raw IP socket routes every packet, builds it with a checksumming
//! copy and runs it through the IP output path and the qdisc; on gre's per-packet path that
//! was a fifth of the sending worker (docs/performance.md, "GRE: what can be had without
//! tunnel GSO").
//!
//! The next hops (device and MAC per destination) come from the kernel's routes and
//! neighbour table, refreshed by the control plane ([`LinkTx::set_hops`]); a destination
//! without one is left to the raw socket, whose sends make the kernel resolve it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket, Type};

use super::msg::{send_mmsg, setsockopt, Msg, MAX_BATCH};
use crate::wire::ipv4;

/// `SOL_PACKET` and its `PACKET_QDISC_BYPASS` option (linux/if_packet.h).
const SOL_PACKET: libc::c_int = 263;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// The outer header's TTL, as the kernel's default for a raw socket.
const TTL: u8 = 64;

/// Where a destination's packets leave: the device and the next hop's MAC (the gateway's,
/// or the destination's own on a shared link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The link-layer sender of one IPv4 underlay address.
#[derive(Debug)]
pub struct LinkTx {
    sock: Socket,
    src: Ipv4Addr,
    /// The outer headers' identification, one per packet, shared by the workers.
    ident: AtomicU16,
    hops: ArcSwap<Vec<(Ipv4Addr, NextHop)>>,
}

impl LinkTx {
    /// A sender for packets from `src` (the node's underlay address); it receives nothing
    /// (protocol 0) and knows no next hop yet.
    pub fn open(src: Ipv4Addr) -> io::Result<LinkTx> {
        let sock = Socket::new(Domain::PACKET, Type::DGRAM.cloexec(), None)?;
        let on: libc::c_int = 1;
        setsockopt(sock.as_raw_fd(), SOL_PACKET, PACKET_QDISC_BYPASS, &on)?;
        Ok(LinkTx {
            sock,
            src,
            ident: AtomicU16::new(1),
            hops: ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// Replaces the known next hops.
    pub fn set_hops(&self, hops: Vec<(Ipv4Addr, NextHop)>) {
        if **self.hops.load() != hops {
            self.hops.store(Arc::new(hops));
        }
    }

    /// The next hop toward `dst`, when known.
    pub fn hop(&self, dst: Ipv4Addr) -> Option<NextHop> {
        let hops = self.hops.load();
        hops.iter().find(|(ip, _)| *ip == dst).map(|(_, h)| *h)
    }

    /// Sends up to [`MAX_BATCH`] GRE packets (`msgs`, all to `dst`) behind IPv4 headers
    /// written here, with one `sendmmsg`; returns how many were sent.
    // Parallel C arrays are filled by index; iterators would obscure which entry is which.
    #[allow(clippy::needless_range_loop)]
    pub fn send(&self, hop: NextHop, dst: Ipv4Addr, msgs: &[Msg<'_>]) -> io::Result<usize> {
        let n = msgs.len().min(MAX_BATCH);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut to: libc::sockaddr_ll = unsafe { zeroed() };
        to.sll_family = libc::AF_PACKET as libc::c_ushort;
        to.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        to.sll_ifindex = hop.ifindex as libc::c_int;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&hop.mac);
        let first = self.ident.fetch_add(n as u16, Ordering::Relaxed);
        let mut heads = [[0u8; ipv4::HEADER_LEN]; MAX_BATCH];
        // SAFETY: all-zero is a valid bit pattern for these plain C structs.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [[libc::iovec; 3]; MAX_BATCH] = unsafe { zeroed() };
        for i in 0..n {
            let m = &msgs[i];
            ipv4::Repr {
                src_addr: self.src,
                dst_addr: dst,
                protocol: libc::IPPROTO_GRE as u8,
                payload_len: u16::try_from(m.bytes()).unwrap_or(u16::MAX),
                ttl: TTL,
                ident: first.wrapping_add(i as u16),
            }
            .emit(&mut heads[i]);
            let ([a, b], pieces) = m.iovecs();
            let ip = libc::iovec {
                iov_base: heads[i].as_mut_ptr().cast(),
                iov_len: ipv4::HEADER_LEN,
            };
            iovs[i] = [ip, a, b];
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut to as *mut libc::sockaddr_ll).cast();
            h.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            h.msg_iov = iovs[i].as_mut_ptr();
            h.msg_iovlen = 1 + pieces;
        }
        // SAFETY: hdrs[..n] point at the address, iovecs and headers above (and the
        // callers' buffers), all alive for the call.
        unsafe { send_mmsg(&self.sock, &mut hdrs[..n]) }
    }
}
