//! The routed (L3) data plane: per-queue workers moving IP packets between the overlay
//! TUN device and the underlay sockets, on the shared [`datapath`](crate::datapath).
//!
//! What is routed-specific lives here, and only that: which peer a packet goes to (the
//! current [`Fib`] snapshot, looked up without a lock), the backend's encapsulation
//! ([`Encap`]), the receive-side checks (a known sender, an inner source inside that
//! sender's subnet, a destination inside ours), ICMP net-unreachable for destinations
//! without a lease, and ARP answers for a plain kernel VXLAN peer.
//!
//! One thread per queue index `i` carries both directions: it polls device queue `i` and
//! receive socket `i` together. A receive socket writes into the queue of the same index,
//! and the device hands a flow's return packets to the queue it was last written on
//! (symmetric flow hash), so a request and its reply meet in the same thread, which the
//! busy-poll window then catches without a wakeup.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Decapsulated, Encap};
use crate::counters::{bump, totals, DirCounters, Totals, WorkerStats};
use crate::datapath::recv::{self, Delivery, Link, Target};
use crate::datapath::send::{send_msgs, Outgoing, Sent, TxPath};
use crate::datapath::tunnel::Tunnel;
use crate::datapath::{would_block, Side, Workers};
use crate::drop::DropReason;
use crate::fib::{Fib, SharedFib};
use crate::offload;
use crate::sys::socket::{Msg, RecvBatch, UnderlaySocket, MAX_BATCH};
use crate::sys::tun::Queue;
use crate::wire::{arp, ether, flow, gre, icmp, ipv4, virtio, vxlan};

/// What the workers need to know about this node.
#[derive(Debug, Clone)]
pub struct Config {
    pub encap: Encap,
    /// Destination port on peers (udp, vxlan); unused for gre.
    pub port: u16,
    /// Our overlay device address (the subnet's network address), answered in ARP.
    pub tun_addr: Ipv4Addr,
    /// The device was opened with a virtio-net header.
    pub vnet_hdr: bool,
    /// Send with UDP GSO (probed; turned off by the first refusal).
    pub gso: bool,
    /// Receive sockets have UDP GRO on.
    pub gro: bool,
    /// Our VTEP MAC (vxlan), for ARP replies.
    pub local_mac: [u8; 6],
    /// After handling traffic, a worker polls without blocking for this long before it
    /// blocks again, so that a quick reply needs no wakeup. 0 turns busy polling off.
    pub busy_poll_us: u32,
    /// The tunnel-GSO TAP: super-packets go to the kernel whole (udp and vxlan).
    pub tunnel: Option<Tunnel>,
    /// The overlay device's MTU: a whole super-packet received from a peer that let the
    /// kernel segment is handed on with segments that fit it.
    pub mtu: u32,
}

/// Running workers and their counters.
pub struct Dataplane {
    workers: Workers,
    pub stats: Arc<Vec<WorkerStats>>,
}

impl Dataplane {
    /// Starts one worker per queue index: worker `i` transmits from device queue `i` and
    /// receives on `recv[i]`, writing into queue `i % queues` (there are as many workers as
    /// the larger of the two counts). `send` are the sockets transmit picks from by flow hash
    /// (the source port spreads flows as the kernel's VXLAN does). Counters: `stats[i]` for
    /// transmit on queue `i`, `stats[queues + j]` for receive on `recv[j]`.
    pub fn start(
        cfg: Config,
        queues: Vec<Arc<Queue>>,
        send: Vec<Arc<UnderlaySocket>>,
        recv: Vec<Arc<UnderlaySocket>>,
        fib: SharedFib,
    ) -> std::io::Result<Dataplane> {
        let stats: Arc<Vec<WorkerStats>> = Arc::new(
            (0..queues.len() + recv.len())
                .map(|_| WorkerStats::default())
                .collect(),
        );
        let gso = Arc::new(AtomicBool::new(cfg.gso));
        for q in &queues {
            q.set_nonblocking()?;
        }
        let pairs = (0..queues.len().max(recv.len()))
            .map(|i| {
                let tx = queues.get(i).map(|q| TxWorker {
                    cfg: cfg.clone(),
                    queue: q.clone(),
                    send: send.clone(),
                    fib: fib.clone(),
                    path: TxPath::new(gso.clone(), cfg.tunnel.as_ref().map(|t| t.for_worker(i))),
                    icmp_buf: [0; 600],
                    seq: 0,
                    stats: stats.clone(),
                    me: i,
                });
                // No device queue (it could not be reopened): nothing to receive into either.
                let rx = recv.get(i).filter(|_| !queues.is_empty()).map(|s| {
                    RxWorker::new(
                        cfg.clone(),
                        queues[i % queues.len()].clone(),
                        s.clone(),
                        fib.clone(),
                        stats.clone(),
                        queues.len() + i,
                    )
                });
                (tx, rx)
            })
            .collect();
        let busy = Duration::from_micros(cfg.busy_poll_us.into());
        Ok(Dataplane {
            workers: Workers::spawn("dp", pairs, busy)?,
            stats,
        })
    }

    /// Sum of every worker's counters.
    pub fn totals(&self) -> Totals {
        totals(&self.stats)
    }

    /// Whether every worker thread is still running (for the systemd watchdog).
    pub fn alive(&self) -> bool {
        self.workers.alive()
    }

    /// Stops the workers and waits for them (each notices within one poll interval).
    pub fn stop(self) {
        self.workers.stop();
    }
}

struct TxWorker {
    cfg: Config,
    queue: Arc<Queue>,
    send: Vec<Arc<UnderlaySocket>>,
    fib: SharedFib,
    path: TxPath,
    icmp_buf: [u8; 600],
    /// GRE sequence number of the last datagram.
    seq: u32,
    stats: Arc<Vec<WorkerStats>>,
    me: usize,
}

impl Side for TxWorker {
    fn pollable(&self) -> Arc<dyn AsFd + Send + Sync> {
        self.queue.clone()
    }

    /// Reads and forwards up to a batch of packets from the (readable) device queue.
    fn drain(&mut self) -> bool {
        let fib = self.fib.load();
        let mut any = false;
        for _ in 0..MAX_BATCH {
            let n = match self.path.read(&self.queue) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    // The device is gone or broken (the daemon's watchdog recreates it):
                    // do not spin on it meanwhile.
                    self.stats[self.me].drop(DropReason::IoError, 1);
                    std::thread::sleep(Duration::from_millis(20));
                    break;
                }
            };
            any = true;
            self.forward(&fib, n);
        }
        any
    }
}

impl TxWorker {
    /// Forwards the `n` bytes just read.
    fn forward(&mut self, fib: &Fib, n: usize) {
        let st = &self.stats[self.me];
        let Some((vh, start, end)) = self.path.frame(n, self.cfg.vnet_hdr) else {
            return st.drop(DropReason::Truncated, 1);
        };
        let pkt = &self.path.buf[start..end];
        let Some(dst) = ipv4::ipv4_dst(pkt) else {
            // Not IPv4 (the overlay is IPv4-only for now) or too short to route.
            return st.drop(DropReason::BadInner, 1);
        };
        let Some(peer) = fib.lookup(dst) else {
            return self.unreachable(dst, start, end);
        };
        let hash = flow::hash(pkt);
        let sock = &self.send[hash as usize % self.send.len()];
        let out = Outgoing {
            vh,
            start,
            end,
            link: 0,
            encap: self.cfg.encap.header_len(),
            flow: hash,
        };
        let (encap, seq) = (&self.cfg.encap, &mut self.seq);
        let mut fill = |d: &mut [u8]| {
            *seq = seq.wrapping_add(1);
            encap.encapsulate(d, peer.mac, *seq)
        };
        let dsts = [peer.public_ip];
        match self.path.send(&out, &mut fill, sock, &dsts, self.cfg.port) {
            Ok(sent) => count_sent(st, &peer.counters.tx, &sent),
            Err((r, n)) => st.drop(r, n),
        }
    }

    /// Answers a packet with no lease for its destination with ICMP net-unreachable.
    fn unreachable(&mut self, dst: Ipv4Addr, start: usize, end: usize) {
        let st = &self.stats[self.me];
        st.drop(DropReason::NoRoute, 1);
        // The error comes from the unreachable address itself: the kernel drops packets that
        // arrive with one of its own addresses as source (martian), so our device address
        // cannot be used, and the destination is never local (else it would not be here).
        let orig = &self.path.buf[start..end];
        if let Some(len) = icmp::net_unreachable_v4(orig, dst, &mut self.icmp_buf) {
            let vh = virtio::VirtioNetHdr::default();
            let vh = self.cfg.vnet_hdr.then_some(&vh);
            if recv::write_packet(&self.queue, vh, &Link::Ip, &self.icmp_buf[..len]).is_ok() {
                bump(&st.icmp_unreachable, 1);
            }
        }
    }
}

/// Counts a send on the worker's and the peer's counters.
fn count_sent(st: &WorkerStats, pc: &DirCounters, r: &Sent) {
    pc.add(r.packets, r.bytes);
    bump(&st.tx_packets, r.packets);
    bump(&st.tx_bytes, r.bytes);
    bump(&st.tx_sends, r.calls);
    bump(&st.tx_tunnel_gso, r.tunnel_writes);
    if r.dropped > 0 {
        st.drop(DropReason::IoError, r.dropped);
    }
}

/// Bytes of one receive slot: an IPv4 packet's largest size, plus room.
const RECV_SLOT: usize = 65536 + 256;

struct RxWorker {
    cfg: Config,
    queue: Arc<Queue>,
    sock: Arc<UnderlaySocket>,
    fib: SharedFib,
    batch: RecvBatch,
    delivery: Delivery,
    arp_buf: [u8; 128],
    stats: Arc<Vec<WorkerStats>>,
    me: usize,
}

impl RxWorker {
    fn new(
        cfg: Config,
        queue: Arc<Queue>,
        sock: Arc<UnderlaySocket>,
        fib: SharedFib,
        stats: Arc<Vec<WorkerStats>>,
        me: usize,
    ) -> Self {
        // Every slot holds the largest datagram: a peer whose kernel segments (tunnel GSO
        // over veth) or a NIC that merges (GRO, also GRE) hands over up to 64 KiB at once.
        let batch = if cfg.gro {
            RecvBatch::new(8, RECV_SLOT)
        } else {
            RecvBatch::new(16, RECV_SLOT)
        };
        Self {
            delivery: Delivery::new(cfg.vnet_hdr),
            cfg,
            queue,
            sock,
            fib,
            batch,
            arp_buf: [0; 128],
            stats,
            me,
        }
    }

    fn handle_message(&mut self, fib: &Fib, i: usize) {
        let st = &self.stats[self.me];
        let (data, seg, from) = self.batch.get(i);
        let raw = self.sock.is_raw();
        // A peer kernel's VXLAN over veth hands over whole tunnel-GSO super-frames, with the
        // inner MSS as the "segment size": such a frame is kept whole (the MSS then
        // segments the inner packet).
        let hl = self.cfg.encap.header_len();
        let split = recv::split(data, seg, (!raw).then_some(hl));
        let inner_gso = if split.whole { seg } else { 0 };
        let mtu = self.cfg.mtu as usize;
        let queues = std::slice::from_ref(&self.queue);
        let to_tun = Target {
            queue: 0,
            link: Link::Ip,
        };
        for d in data.chunks(split.chunk) {
            let (src_ip, payload) = if raw {
                match ipv4::outer_payload(d) {
                    Ok(x) => x,
                    Err(r) => {
                        st.drop(r, 1);
                        continue;
                    }
                }
            } else {
                (*from.ip(), d)
            };
            // Transparent Ethernet bridging (gretap) on the same raw socket belongs to the L2
            // networks, which read it from their own socket: not ours, not a drop.
            if raw
                && gre::Packet::new_checked(payload)
                    .is_ok_and(|g| g.protocol() == ether::ETHERTYPE_TEB)
            {
                continue;
            }
            if !fib.is_known_sender(src_ip) {
                st.drop(DropReason::UnknownSender, 1);
                continue;
            }
            match self.cfg.encap.decapsulate(payload) {
                Err(r) => st.drop(r, 1),
                Ok(Decapsulated::Ip(inner)) => {
                    let (Some(src), Some(dst)) = (ipv4::ipv4_src(inner), ipv4::ipv4_dst(inner))
                    else {
                        st.drop(DropReason::BadInner, 1);
                        continue;
                    };
                    let Some(peer) = fib.sender_peer(src_ip, src) else {
                        st.drop(DropReason::SpoofedSource, 1);
                        continue;
                    };
                    if !fib.is_local(dst) {
                        st.drop(DropReason::NoRoute, 1);
                        continue;
                    }
                    bump(&st.rx_packets, 1);
                    bump(&st.rx_bytes, inner.len() as u64);
                    peer.counters.rx.add(1, inner.len() as u64);
                    // A super-packet longer than our MTU (a peer that let its kernel
                    // segment, over veth) leaves in segments that fit the MTU.
                    let gso = match inner_gso {
                        0 if inner.len() > mtu => offload::tcp_mss_for_mtu(inner, mtu),
                        g => g,
                    };
                    let partial = offload::partial_checksum_hdr(inner, gso);
                    self.delivery.ip(queues, to_tun, inner, partial, &st.drops);
                }
                Ok(Decapsulated::Arp(frame)) => {
                    let Encap::Vxlan { vni, .. } = self.cfg.encap else {
                        continue;
                    };
                    let body = &mut self.arp_buf[vxlan::HEADER_LEN..];
                    let Some(len) = arp::reply_to(
                        frame,
                        self.cfg.local_mac,
                        |ip| fib.is_local(ip) || ip == self.cfg.tun_addr,
                        body,
                    ) else {
                        continue;
                    };
                    vxlan::Repr { vni }.emit(&mut self.arp_buf[..vxlan::HEADER_LEN]);
                    let msg = [Msg {
                        buf: &self.arp_buf[..vxlan::HEADER_LEN + len],
                        dst: SocketAddrV4::new(src_ip, self.cfg.port),
                        segment: 0,
                    }];
                    if send_msgs(&self.sock, &msg).packets == 1 {
                        bump(&st.arp_replies, 1);
                    }
                }
            }
        }
    }
}

impl Side for RxWorker {
    fn pollable(&self) -> Arc<dyn AsFd + Send + Sync> {
        self.sock.clone()
    }

    /// Receives and delivers up to 16 batches from the (readable) socket.
    fn drain(&mut self) -> bool {
        let fib = self.fib.load();
        let mut any = false;
        for _ in 0..16 {
            let n = match self.sock.recv_batch(&mut self.batch) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    self.stats[self.me].drop(DropReason::IoError, 1);
                    break;
                }
            };
            any = true;
            bump(&self.stats[self.me].rx_batches, 1);
            for i in 0..n {
                self.handle_message(&fib, i);
            }
            let queues = std::slice::from_ref(&self.queue);
            self.delivery.flush(queues, &self.stats[self.me].drops);
        }
        any
    }
}
