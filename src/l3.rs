//! The routed (L3) data plane: per-queue workers moving IP packets between the overlay
//! TUN device and the underlay sockets, on the shared [`datapath`](crate::datapath).
//!
//! What is routed-specific lives here, and only that: which peer a packet goes to (the
//! current [`Fib`] snapshot for IPv4, [`Fib6`] for IPv6, each looked up without a lock),
//! the backend's encapsulation ([`Encap`]), the receive-side checks (a known sender, an
//! inner source inside that sender's subnet of the same family, a destination inside
//! ours), ICMP net-unreachable (ICMPv6 no-route) for destinations without a lease, and
//! ARP answers for a plain kernel VXLAN peer.
//!
//! One thread per queue index `i` carries both directions: it polls device queue `i` and
//! receive socket `i` together. A receive socket writes into the queue of the same index,
//! and the device hands a flow's return packets to the queue it was last written on
//! (symmetric flow hash), so a request and its reply meet in the same thread, which the
//! busy-poll window then catches without a wakeup.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Decapsulated, Encap, Sockets};
use crate::counters::{bump, totals, DirCounters, PeerCounters, Totals, WorkerStats};
use crate::datapath::recv::{self, Delivery, Link, Target};
use crate::datapath::send::{send_msgs, Outgoing, TxPath};
use crate::datapath::tunnel::Tunnel;
use crate::datapath::{would_block, BusyPoll, Sent, Side, Turn, Workers};
use crate::drop::DropReason;
use crate::fib::{Fib, Fib6, SharedFib, SharedFib6};
use crate::offload;
use crate::sys::socket::{Msg, RecvBatch, UnderlaySocket, MAX_BATCH};
use crate::sys::tun::Queue;
use crate::wire::{arp, ether, flow, gre, icmp, ip, ipv4, virtio, vxlan};

/// What the workers need to know about this node.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The encapsulation on the IPv4 underlay.
    pub encap: Encap,
    /// The encapsulation on the IPv6 underlay: the same format, with (vxlan) our IPv6
    /// VtepMAC as the local MAC, as flannel's `flannel-v6.<VNI>` device has its own.
    pub encap6: Encap,
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
    /// Whether a worker polls without blocking after traffic, so that a quick reply needs
    /// no wakeup (`--busy-poll-us`).
    pub busy_poll: BusyPoll,
    /// The tunnel-GSO TAP: super-packets go to the kernel whole (udp and vxlan).
    pub tunnel: Option<Tunnel>,
    /// `--steer cpu`: the CPUs the daemon may run on, over which worker `i` is pinned to
    /// those `c` with `c % workers == i` (the queue and socket the kernel picks on CPU
    /// `c`); empty: workers unpinned.
    pub pin_to: Vec<usize>,
    /// The overlay device's MTU: a whole super-packet received from a peer that let the
    /// kernel segment is handed on with segments that fit it.
    pub mtu: u32,
}

/// Running workers and their counters.
pub struct Router {
    workers: Workers,
    pub stats: Arc<Vec<WorkerStats>>,
}

impl Router {
    /// Starts one worker per queue index: worker `i` transmits from device queue `i` and
    /// receives on the `i`th receive socket of each underlay family, writing into queue
    /// `i % queues` (there are as many workers as the largest of those counts). The `send`
    /// sockets of a family are those transmit picks from by flow hash (the source port
    /// spreads flows as the kernel's VXLAN does); a family may have none (no IPv6 underlay,
    /// or an IPv6-only node). IPv4 packets are routed by `fib`, IPv6 ones by `fib6`.
    /// Counters: `stats[i]` for transmit on queue `i`, `stats[queues + j]` for receive on
    /// the `j`th sockets.
    pub fn start(
        cfg: RouterConfig,
        queues: Vec<Arc<Queue>>,
        v4: Sockets,
        v6: Sockets,
        fib: SharedFib,
        fib6: SharedFib6,
    ) -> std::io::Result<Router> {
        let receivers = v4.recv.len().max(v6.recv.len());
        let stats: Arc<Vec<WorkerStats>> = Arc::new(
            (0..queues.len() + receivers)
                .map(|_| WorkerStats::default())
                .collect(),
        );
        for q in &queues {
            q.set_nonblocking()?;
        }
        let pairs = (0..queues.len().max(receivers))
            .map(|i| {
                let tx = queues.get(i).map(|q| RouterTx {
                    cfg: cfg.clone(),
                    queue: q.clone(),
                    send4: v4.send.clone(),
                    send6: v6.send.clone(),
                    fib: fib.clone(),
                    fib6: fib6.clone(),
                    path: TxPath::new(cfg.gso, cfg.tunnel.as_ref().map(|t| t.for_worker(i))),
                    icmp_buf: [0; icmp::MAX_V6_ERROR_LEN],
                    seq: 0,
                    stats: stats.clone(),
                    me: i,
                });
                let socks: Vec<(Arc<UnderlaySocket>, Encap)> = [
                    v4.recv.get(i).map(|s| (s.clone(), cfg.encap)),
                    v6.recv.get(i).map(|s| (s.clone(), cfg.encap6)),
                ]
                .into_iter()
                .flatten()
                .collect();
                // No device queue (it could not be reopened): nothing to receive into either.
                let rx = (!socks.is_empty() && !queues.is_empty()).then(|| {
                    RouterRx::new(
                        cfg.clone(),
                        queues[i % queues.len()].clone(),
                        socks,
                        fib.clone(),
                        fib6.clone(),
                        stats.clone(),
                        queues.len() + i,
                    )
                });
                (tx, rx)
            })
            .collect();
        Ok(Router {
            workers: Workers::spawn("dp", pairs, cfg.busy_poll, &cfg.pin_to)?,
            stats,
        })
    }

    /// How many worker threads run.
    pub fn threads(&self) -> usize {
        self.workers.threads()
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

struct RouterTx {
    cfg: RouterConfig,
    queue: Arc<Queue>,
    /// The send sockets of each underlay family (none when the family is not used).
    send4: Vec<Arc<UnderlaySocket>>,
    send6: Vec<Arc<UnderlaySocket>>,
    fib: SharedFib,
    fib6: SharedFib6,
    path: TxPath,
    /// An ICMP error built for the device (the longest is an ICMPv6 one).
    icmp_buf: [u8; icmp::MAX_V6_ERROR_LEN],
    /// GRE sequence number of the last datagram.
    seq: u32,
    stats: Arc<Vec<WorkerStats>>,
    me: usize,
}

impl Side for RouterTx {
    fn pollable(&self) -> Arc<dyn AsFd + Send + Sync> {
        self.queue.clone()
    }

    /// Reads and forwards up to a batch of packets from the (readable) device queue.
    fn drain(&mut self) -> Turn {
        let fib = self.fib.load();
        let fib6 = self.fib6.load();
        let mut turn = Turn::default();
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
            turn.add(1, n);
            self.forward(&fib, &fib6, n);
        }
        turn
    }
}

impl RouterTx {
    /// Forwards the `n` bytes just read: IPv4 by `fib`, IPv6 by `fib6`.
    fn forward(&mut self, fib: &Fib, fib6: &Fib6, n: usize) {
        let st = &self.stats[self.me];
        let Some((vh, start, end)) = self.path.frame(n, self.cfg.vnet_hdr) else {
            return st.drop(DropReason::Truncated, 1);
        };
        let pkt = &self.path.buf[start..end];
        let (mac, underlay, counters): (_, _, &PeerCounters) = match ip::dst_addr(pkt) {
            Some(IpAddr::V4(dst)) => match fib.lookup(dst) {
                Some(peer) => (peer.mac, IpAddr::V4(peer.public_ip), &peer.counters),
                None => return self.unreachable(dst, start, end),
            },
            Some(IpAddr::V6(dst)) => match fib6.lookup(dst) {
                Some(peer) => (peer.mac, peer.underlay, &peer.counters),
                None => return self.unreachable6(dst, start, end),
            },
            // Neither IPv4 nor IPv6, or too short to route.
            None => return st.drop(DropReason::BadInner, 1),
        };
        let (pool, encap) = match underlay {
            IpAddr::V4(_) => (&self.send4, &self.cfg.encap),
            IpAddr::V6(_) => (&self.send6, &self.cfg.encap6),
        };
        if pool.is_empty() {
            // No socket of that family (cannot happen with tables the daemon builds).
            return st.drop(DropReason::NoRoute, 1);
        }
        let hash = flow::hash(pkt);
        let sock = &pool[hash as usize % pool.len()];
        let out = Outgoing {
            vh,
            start,
            end,
            link: 0,
            encap: encap.header_len(),
            flow: hash,
        };
        let seq = &mut self.seq;
        let mut fill = |d: &mut [u8]| {
            *seq = seq.wrapping_add(1);
            encap.encapsulate(d, mac, *seq)
        };
        let dsts = [underlay];
        match self.path.send(&out, &mut fill, sock, &dsts, self.cfg.port) {
            Ok(sent) => count_sent(st, &counters.tx, &sent),
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
            self.write_icmp(len);
        }
    }

    /// Answers an IPv6 packet with no lease for its destination with ICMPv6 no-route,
    /// from the unreachable address, as for IPv4. Multicast destinations (the kernel's own
    /// MLD reports on the device) and ICMPv6 errors get no answer.
    fn unreachable6(&mut self, dst: Ipv6Addr, start: usize, end: usize) {
        self.stats[self.me].drop(DropReason::NoRoute, 1);
        let orig = &self.path.buf[start..end];
        if let Some(len) = icmp::no_route_v6(orig, dst, &mut self.icmp_buf) {
            self.write_icmp(len);
        }
    }

    /// Writes the ICMP error built in `icmp_buf[..len]` into the device.
    fn write_icmp(&self, len: usize) {
        let vh = virtio::VirtioNetHdr::default();
        let vh = self.cfg.vnet_hdr.then_some(&vh);
        if recv::write_packet(&self.queue, vh, &Link::Ip, &self.icmp_buf[..len]).is_ok() {
            bump(&self.stats[self.me].icmp_unreachable, 1);
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
    bump(&st.tx_offload_fallbacks, r.fallbacks);
    if r.dropped > 0 {
        st.drop(DropReason::IoError, r.dropped);
    }
}

/// The receive checks on a decapsulated inner packet (valid IPv4 or IPv6, as
/// [`Encap::decapsulate`] returns it) that came from underlay address `from`: the overlay
/// carries the inner packet's family (else `BadInner`), the node at `from` holds the
/// subnet of that family that contains its source (else `SpoofedSource`: another node's
/// address, or a node without a subnet of that family), and the destination lies in our
/// own subnet of that family (else `NoRoute`). Returns the sending peer's counters.
pub fn accept<'f>(
    fib: &'f Fib,
    fib6: &'f Fib6,
    from: IpAddr,
    inner: &[u8],
) -> Result<&'f PeerCounters, DropReason> {
    match ip::src_addr(inner).zip(ip::dst_addr(inner)) {
        Some((IpAddr::V4(src), IpAddr::V4(dst))) => {
            if fib.network.is_none() {
                return Err(DropReason::BadInner);
            }
            let IpAddr::V4(from) = from else {
                return Err(DropReason::SpoofedSource);
            };
            let peer = fib
                .sender_peer(from, src)
                .ok_or(DropReason::SpoofedSource)?;
            if !fib.is_local(dst) {
                return Err(DropReason::NoRoute);
            }
            Ok(&peer.counters)
        }
        Some((IpAddr::V6(src), IpAddr::V6(dst))) => {
            if fib6.network.is_none() {
                return Err(DropReason::BadInner);
            }
            let peer = fib6
                .sender_peer(from, src)
                .ok_or(DropReason::SpoofedSource)?;
            if !fib6.is_local(dst) {
                return Err(DropReason::NoRoute);
            }
            Ok(&peer.counters)
        }
        _ => Err(DropReason::BadInner),
    }
}

/// Bytes of one receive slot: an IPv4 packet's largest size, plus room.
const RECV_SLOT: usize = 65536 + 256;

/// One underlay socket of a receive worker, with the encapsulation it carries (the IPv6
/// underlay's has its own VtepMAC) and its receive buffers.
struct RxSock {
    sock: Arc<UnderlaySocket>,
    encap: Encap,
    batch: RecvBatch,
}

struct RouterRx {
    cfg: RouterConfig,
    queue: Arc<Queue>,
    /// One socket per underlay family in use (IPv4 first).
    socks: Vec<RxSock>,
    fib: SharedFib,
    fib6: SharedFib6,
    delivery: Delivery,
    arp_buf: [u8; 128],
    stats: Arc<Vec<WorkerStats>>,
    me: usize,
}

impl RouterRx {
    fn new(
        cfg: RouterConfig,
        queue: Arc<Queue>,
        socks: Vec<(Arc<UnderlaySocket>, Encap)>,
        fib: SharedFib,
        fib6: SharedFib6,
        stats: Arc<Vec<WorkerStats>>,
        me: usize,
    ) -> Self {
        // Every slot holds the largest datagram: a peer whose kernel segments (tunnel GSO
        // over veth) or a NIC that merges (GRO, also GRE) hands over up to 64 KiB at once.
        let slots = if cfg.gro { 8 } else { 16 };
        let socks = socks
            .into_iter()
            .map(|(sock, encap)| RxSock {
                sock,
                encap,
                batch: RecvBatch::new(slots, RECV_SLOT),
            })
            .collect();
        Self {
            delivery: Delivery::new(cfg.vnet_hdr),
            cfg,
            queue,
            socks,
            fib,
            fib6,
            arp_buf: [0; 128],
            stats,
            me,
        }
    }

    /// Handles message `i` of socket `k`'s last batch.
    fn handle_message(&mut self, fib: &Fib, fib6: &Fib6, k: usize, i: usize) {
        let st = &self.stats[self.me];
        let rs = &self.socks[k];
        let (data, seg, from) = rs.batch.get_from(i);
        let (raw, ip_header) = (rs.sock.is_raw(), rs.sock.reads_ip_header());
        // A peer kernel's VXLAN over veth hands over whole tunnel-GSO super-frames, with the
        // inner MSS as the "segment size": such a frame is kept whole (the MSS then
        // segments the inner packet).
        let hl = rs.encap.header_len();
        let split = recv::split(data, seg, (!raw).then_some(hl));
        let inner_gso = if split.whole { seg } else { 0 };
        let mtu = self.cfg.mtu as usize;
        let queues = std::slice::from_ref(&self.queue);
        let to_tun = Target {
            queue: 0,
            link: Link::Ip,
        };
        for d in data.chunks(split.chunk) {
            let (src_ip, payload) = if ip_header {
                match ipv4::outer_payload(d) {
                    Ok((a, p)) => (IpAddr::V4(a), p),
                    Err(r) => {
                        st.drop(r, 1);
                        continue;
                    }
                }
            } else {
                (from.ip(), d)
            };
            // Transparent Ethernet bridging (gretap) on the same raw socket belongs to the L2
            // networks, which read it from their own socket: not ours, not a drop.
            if raw
                && gre::Packet::new_checked(payload)
                    .is_ok_and(|g| g.protocol() == ether::ETHERTYPE_TEB)
            {
                continue;
            }
            let known = match src_ip {
                IpAddr::V4(a) => fib.is_known_sender(a) || fib6.is_known_sender(src_ip),
                IpAddr::V6(_) => fib6.is_known_sender(src_ip),
            };
            if !known {
                st.drop(DropReason::UnknownSender, 1);
                continue;
            }
            match rs.encap.decapsulate(payload) {
                Err(r) => st.drop(r, 1),
                Ok(Decapsulated::Ip(inner)) => {
                    let counters = match accept(fib, fib6, src_ip, inner) {
                        Ok(c) => c,
                        Err(r) => {
                            st.drop(r, 1);
                            continue;
                        }
                    };
                    bump(&st.rx_packets, 1);
                    bump(&st.rx_bytes, inner.len() as u64);
                    counters.rx.add(1, inner.len() as u64);
                    // A super-packet longer than our MTU (a peer that let its kernel
                    // segment, over veth) leaves in segments that fit the MTU.
                    let gso = match inner_gso {
                        0 if inner.len() > mtu => offload::tcp_mss_for_mtu(inner, mtu),
                        g => g,
                    };
                    let partial = offload::partial_checksum_hdr(inner, gso);
                    if recv::unmerged_partial(seg, inner, partial.as_ref()) {
                        bump(&st.rx_unmerged_partial, 1);
                    }
                    self.delivery.ip(queues, to_tun, inner, partial, &st.drops);
                }
                Ok(Decapsulated::Arp(frame)) => {
                    // ARP resolves IPv4 overlay addresses, which cross the IPv4 underlay only.
                    let (Encap::Vxlan { vni, .. }, IpAddr::V4(_)) = (rs.encap, src_ip) else {
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
                    let msg = [Msg::whole(
                        &self.arp_buf[..vxlan::HEADER_LEN + len],
                        SocketAddr::new(src_ip, self.cfg.port),
                        0,
                    )];
                    if send_msgs(&rs.sock, &msg).packets == 1 {
                        bump(&st.arp_replies, 1);
                    }
                }
            }
        }
    }
}

/// Socket `k` of a [`RouterRx`], with the forwarding tables loaded for one turn, as
/// [`recv::drain`] drives it.
struct SockRx<'a> {
    rx: &'a mut RouterRx,
    fib: &'a Fib,
    fib6: &'a Fib6,
    k: usize,
}

impl recv::Receive for SockRx<'_> {
    fn receive(&mut self) -> io::Result<usize> {
        let rs = &mut self.rx.socks[self.k];
        let n = rs.sock.recv_batch(&mut rs.batch)?;
        let st = &self.rx.stats[self.rx.me];
        bump(&st.rx_batches, 1);
        bump(&st.rx_messages, n as u64);
        Ok(n)
    }

    fn capacity(&self) -> usize {
        self.rx.socks[self.k].batch.capacity()
    }

    fn largest(&self, n: usize) -> usize {
        self.rx.socks[self.k].batch.largest(n)
    }

    fn handle(&mut self, i: usize) {
        self.rx.handle_message(self.fib, self.fib6, self.k, i);
    }

    fn failed(&mut self) {
        self.rx.stats[self.rx.me].drop(DropReason::IoError, 1);
    }

    fn flush(&mut self) {
        let queues = std::slice::from_ref(&self.rx.queue);
        self.rx
            .delivery
            .flush(queues, &self.rx.stats[self.rx.me].drops);
    }
}

impl Side for RouterRx {
    fn pollable(&self) -> Arc<dyn AsFd + Send + Sync> {
        self.socks[0].sock.clone()
    }

    fn more_pollables(&self) -> Vec<Arc<dyn AsFd + Send + Sync>> {
        self.socks[1..]
            .iter()
            .map(|s| s.sock.clone() as Arc<dyn AsFd + Send + Sync>)
            .collect()
    }

    /// Receives on every socket.
    fn drain(&mut self) -> Turn {
        let mut turn = Turn::default();
        for k in 0..self.socks.len() {
            turn.merge(self.drain_one(k));
        }
        turn
    }

    /// Receives and delivers up to [`recv::MAX_BATCHES`] batches from (readable) socket
    /// `which`.
    fn drain_one(&mut self, which: usize) -> Turn {
        if which >= self.socks.len() {
            return Turn::default();
        }
        let (fib, fib6) = (self.fib.load(), self.fib6.load());
        recv::drain(&mut SockRx {
            rx: self,
            fib: &fib,
            fib6: &fib6,
            k: which,
        })
    }
}
