//! The data plane: per-queue worker threads moving packets between the overlay device and
//! the underlay sockets, with no lock and no heap allocation per packet.
//!
//! One thread per queue index `i` carries both directions: it polls device queue `i` and
//! receive socket `i` together and runs the transmit or receive batch for whichever is
//! readable. A receive socket writes into the queue of the same index, and the device hands
//! a flow's return packets to the queue it was last written on (symmetric flow hash), so a
//! request and its reply meet in the same thread. After handling traffic a worker keeps
//! polling without blocking for [`Config::busy_poll_us`] microseconds (yielding the CPU
//! between polls), so a reply arriving within that window needs no thread wakeup; an idle
//! worker blocks in `poll`.
//!
//! Transmit (device → underlay), per device queue: read packets (64 KiB TSO
//! super-packets when offloads are on), look the destination up in the current
//! [`Fib`](crate::fib::Fib) snapshot, segment straight into encapsulation slots, write the
//! headers, and hand the whole run of equal-size datagrams to the kernel in one `sendmmsg`
//! carrying a `UDP_SEGMENT` (GSO) message. No lease for the destination: an ICMP
//! net-unreachable goes back into the device.
//!
//! Receive (underlay → device), per socket: `recvmmsg` a batch (UDP GRO hands
//! over runs of datagrams in one buffer), accept only datagrams from a current lease's
//! public address, decapsulate through checked views, accept only inner sources inside that
//! sender's subnet and destinations inside ours, coalesce TCP segments back into
//! super-packets and write them to the device. Everything refused is counted by reason.

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::drop::DropReason;
use crate::encap::{Decapsulated, Encap};
use crate::fib::{Fib, SharedFib};
use crate::offload::gro::Coalescer;
use crate::offload::{self, tso};
use crate::sys::socket::{Msg, RecvBatch, UnderlaySocket, MAX_BATCH, MAX_GSO_SEGMENTS};
use crate::sys::tun::{poll_readable, Queue};
use crate::telemetry::DirCounters;
use crate::wire::{arp, flow, icmp, ipv4, virtio};

/// Room kept in front of every packet read from the device for the encapsulation header.
const HEADROOM: usize = 64;
/// Largest packet the device hands over (a TSO super-packet plus its virtio header).
const MAX_READ: usize = 65535 + virtio::LEN;
/// Bytes of segment slots per transmit: enough for a 64 KiB super-packet cut into the
/// smallest segments TCP uses over a 1280-byte path, with headers.
const SEG_BUF: usize = 256 * 1024;
/// Bytes of per-segment header blocks for the zero-copy send (47 segments of a 64 KiB
/// super-packet need ~3.5 KiB; more segments than fit take the copying path).
const HDR_BUF: usize = 32 * 1024;
/// Largest UDP payload one GSO send may carry in total.
const MAX_GSO_BYTES: usize = 65000;
/// How long a worker blocks before re-checking the stop flag.
const POLL_MS: i32 = 100;
/// The GRE protocol field of L2 (gretap) traffic.
const ETHERTYPE_TEB_BYTES: [u8; 2] = crate::wire::ether::ETHERTYPE_TEB.to_be_bytes();

/// Counters of one worker, bumped by it alone and read by the metrics exporter.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_sends: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_batches: AtomicU64,
    pub icmp_unreachable: AtomicU64,
    pub arp_replies: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
}

impl WorkerStats {
    fn drop(&self, r: DropReason, n: u64) {
        self.drops[r as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// Totals over all workers, for logs, tests and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub tx_sends: u64,
    pub rx_batches: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub icmp_unreachable: u64,
    pub arp_replies: u64,
    pub drops: [u64; DropReason::COUNT],
}

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
}

/// Default of [`Config::busy_poll_us`]: covers the round trip to a peer whose worker must
/// first be woken (~50–70 µs on a VM whose idle vCPUs halt) plus its processing.
pub const DEFAULT_BUSY_POLL_US: u32 = 200;

/// Running workers.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
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
    ) -> io::Result<Dataplane> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats: Arc<Vec<WorkerStats>> = Arc::new(
            (0..queues.len() + recv.len())
                .map(|_| WorkerStats::default())
                .collect(),
        );
        let gso = Arc::new(AtomicBool::new(cfg.gso));
        for q in &queues {
            q.set_nonblocking()?;
        }
        let mut threads = Vec::new();
        for i in 0..queues.len().max(recv.len()) {
            let tx = queues.get(i).map(|q| {
                (
                    TxWorker::new(
                        cfg.clone(),
                        q.clone(),
                        send.clone(),
                        fib.clone(),
                        gso.clone(),
                    ),
                    i,
                )
            });
            // No device queue (it could not be reopened): nothing to receive into either.
            let rx = recv.get(i).filter(|_| !queues.is_empty()).map(|s| {
                let q = queues[i % queues.len()].clone();
                (
                    RxWorker::new(cfg.clone(), q, s.clone(), fib.clone()),
                    queues.len() + i,
                )
            });
            let (stop, stats) = (stop.clone(), stats.clone());
            let busy = Duration::from_micros(cfg.busy_poll_us.into());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dp{i}"))
                    .spawn(move || run_worker(tx, rx, busy, &stop, &stats))?,
            );
        }
        Ok(Dataplane {
            stop,
            threads,
            stats,
        })
    }

    /// Sum of every worker's counters.
    pub fn totals(&self) -> Totals {
        totals(&self.stats)
    }

    /// Whether every worker thread is still running (for the systemd watchdog).
    pub fn alive(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops the workers and waits for them (each notices within one poll interval).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sums worker counters.
pub fn totals(stats: &[WorkerStats]) -> Totals {
    let mut t = Totals::default();
    for s in stats {
        t.tx_sends += s.tx_sends.load(Ordering::Relaxed);
        t.rx_batches += s.rx_batches.load(Ordering::Relaxed);
        t.tx_packets += s.tx_packets.load(Ordering::Relaxed);
        t.tx_bytes += s.tx_bytes.load(Ordering::Relaxed);
        t.rx_packets += s.rx_packets.load(Ordering::Relaxed);
        t.rx_bytes += s.rx_bytes.load(Ordering::Relaxed);
        t.icmp_unreachable += s.icmp_unreachable.load(Ordering::Relaxed);
        t.arp_replies += s.arp_replies.load(Ordering::Relaxed);
        for (d, a) in t.drops.iter_mut().zip(&s.drops) {
            *d += a.load(Ordering::Relaxed);
        }
    }
    t
}

/// One worker's loop: polls its device queue and its receive socket together, runs the
/// batch of whichever is readable, and after any traffic keeps polling without blocking
/// (yielding the CPU between polls) until `busy` passes with nothing to do.
fn run_worker(
    mut tx: Option<(TxWorker, usize)>,
    mut rx: Option<(RxWorker, usize)>,
    busy: Duration,
    stop: &AtomicBool,
    stats: &[WorkerStats],
) {
    // Own handles on the two fds, so that polling borrows nothing from the workers.
    let tx_q = tx.as_ref().map(|(w, _)| w.queue.clone());
    let rx_s = rx.as_ref().map(|(w, _)| w.sock.clone());
    poll_loop(
        tx_q.as_ref().map(|q| q.as_fd()),
        rx_s.as_ref().map(|s| s.as_fd()),
        busy,
        stop,
        |tx_ready, rx_ready| {
            let mut worked = false;
            if tx_ready {
                if let Some((w, i)) = tx.as_mut() {
                    worked |= w.drain(&stats[*i]);
                }
            }
            if rx_ready {
                if let Some((w, i)) = rx.as_mut() {
                    worked |= w.drain(&stats[*i]);
                }
            }
            worked
        },
    );
}

/// The loop every data-plane worker (L3 and L2) runs: poll the device fd and the socket fd
/// (either may be absent), call `work(device_ready, socket_ready)` (true = it handled
/// traffic), and after traffic keep polling with a zero timeout, yielding the CPU between
/// polls, until `busy` passes with nothing to do; then block for up to [`POLL_MS`] again.
/// Returns when `stop` is set.
pub(crate) fn poll_loop(
    device: Option<BorrowedFd<'_>>,
    socket: Option<BorrowedFd<'_>>,
    busy: Duration,
    stop: &AtomicBool,
    mut work: impl FnMut(bool, bool) -> bool,
) {
    // Made once per thread, before the loop.
    let mut fds = Vec::with_capacity(2);
    let (mut dev_bit, mut sock_bit) = (0, 0);
    if let Some(d) = device {
        dev_bit = 1 << fds.len();
        fds.push(d);
    }
    if let Some(s) = socket {
        sock_bit = 1 << fds.len();
        fds.push(s);
    }
    if fds.is_empty() {
        return;
    }
    // Busy polling until this instant (None: block).
    let mut until: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let timeout = if until.is_some() { 0 } else { POLL_MS };
        let ready = poll_readable(&fds, timeout).unwrap_or(0);
        let worked = work(ready & dev_bit != 0, ready & sock_bit != 0);
        if busy.is_zero() {
            continue;
        }
        if worked {
            until = Some(Instant::now() + busy);
        } else if let Some(t) = until {
            if Instant::now() >= t {
                until = None;
            } else {
                // Let anything runnable on this CPU (the application, the peer's worker) go
                // first: spinning must not delay the very reply it waits for.
                std::thread::yield_now();
            }
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

struct TxWorker {
    cfg: Config,
    queue: Arc<Queue>,
    send: Vec<Arc<UnderlaySocket>>,
    fib: SharedFib,
    gso: Arc<AtomicBool>,
    read_buf: Vec<u8>,
    seg_buf: Vec<u8>,
    /// Per-segment headers (encapsulation + IP + TCP) for the zero-copy GSO send.
    hdr_buf: Vec<u8>,
    icmp_buf: [u8; 600],
    seq: u32,
}

impl TxWorker {
    fn new(
        cfg: Config,
        queue: Arc<Queue>,
        send: Vec<Arc<UnderlaySocket>>,
        fib: SharedFib,
        gso: Arc<AtomicBool>,
    ) -> Self {
        Self {
            cfg,
            queue,
            send,
            fib,
            gso,
            read_buf: vec![0; HEADROOM + MAX_READ],
            seg_buf: vec![0; SEG_BUF],
            hdr_buf: vec![0; HDR_BUF],
            icmp_buf: [0; 600],
            seq: 0,
        }
    }

    /// Reads and forwards up to a batch of packets from the (readable) device queue; returns
    /// whether it forwarded any.
    fn drain(&mut self, st: &WorkerStats) -> bool {
        let fib = self.fib.load();
        let mut any = false;
        for _ in 0..MAX_BATCH {
            let n = match self.queue.read(&mut self.read_buf[HEADROOM..]) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    // The device is gone or broken (the daemon's watchdog recreates it):
                    // do not spin on it meanwhile.
                    st.drop(DropReason::IoError, 1);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    break;
                }
            };
            any = true;
            self.forward(&fib, n, st);
        }
        any
    }

    /// Forwards the `n` bytes just read at `read_buf[HEADROOM..]`.
    fn forward(&mut self, fib: &Fib, n: usize, st: &WorkerStats) {
        let (hdr, start) = if self.cfg.vnet_hdr {
            match virtio::VirtioNetHdr::parse(&self.read_buf[HEADROOM..HEADROOM + n]) {
                Some(h) => (h, HEADROOM + virtio::LEN),
                None => return st.drop(DropReason::Truncated, 1),
            }
        } else {
            (virtio::VirtioNetHdr::default(), HEADROOM)
        };
        let end = HEADROOM + n;
        let Some(dst) = ipv4::ipv4_dst(&self.read_buf[start..end]) else {
            // Not IPv4 (the overlay is IPv4-only for now) or too short to route.
            return st.drop(DropReason::BadInner, 1);
        };
        let Some(peer) = fib.lookup(dst) else {
            return self.unreachable(dst, start, end, st);
        };
        let dst_addr = SocketAddrV4::new(
            peer.public_ip,
            if self.send[0].is_raw() {
                0
            } else {
                self.cfg.port
            },
        );
        let hl = self.cfg.encap.header_len();
        let si = flow::hash(&self.read_buf[start..end]) as usize % self.send.len();
        let sock = &self.send[si];

        // Fast path: one packet that needs no segmenting and no checksum: encapsulate in place.
        if hdr.gso_kind() == virtio::GSO_NONE && !hdr.needs_csum() {
            let pkt = &mut self.read_buf[start - hl..end];
            self.seq = self.seq.wrapping_add(1);
            if let Err(r) = self.cfg.encap.encapsulate(pkt, peer.mac, self.seq) {
                return st.drop(r, 1);
            }
            let msg = [Msg {
                buf: pkt,
                dst: dst_addr,
                segment: 0,
            }];
            return pc_sent(st, &peer.counters.tx, &send_msgs(sock, &msg));
        }

        if self.send_zero_copy(&hdr, start..end, hl, si, dst_addr, peer, st) {
            return;
        }
        let sock = &self.send[si];
        let layout = match tso::segment(&hdr, &self.read_buf[start..end], hl, &mut self.seg_buf) {
            Ok(l) => l,
            Err(e) => return st.drop(e.drop_reason(), 1),
        };
        for i in 0..layout.count {
            self.seq = self.seq.wrapping_add(1);
            let d = &mut self.seg_buf[layout.datagram(i)];
            if let Err(r) = self.cfg.encap.encapsulate(d, peer.mac, self.seq) {
                return st.drop(r, layout.count as u64);
            }
        }
        let r = send_layout(sock, &self.seg_buf, &layout, dst_addr, Some(&self.gso));
        pc_sent(st, &peer.counters.tx, &r);
    }

    /// Sends the GSO super-packet at `read_buf[pkt]` as UDP GSO runs of (header, payload
    /// slice) pairs: only each segment's headers are written (`tso::segment_headers`, into
    /// `hdr_buf`), and the payload goes from the read buffer into the kernel in its one copy.
    ///
    /// Returns false, having sent nothing, where this path does not apply: GSO off or
    /// refused (a refusal here clears the flag), a raw socket, a packet that needs no
    /// segmenting, or headers that do not fit `hdr_buf`; the caller then segments by copying.
    #[allow(clippy::too_many_arguments)]
    fn send_zero_copy(
        &mut self,
        hdr: &virtio::VirtioNetHdr,
        pkt: std::ops::Range<usize>,
        hl: usize,
        si: usize,
        dst: SocketAddrV4,
        peer: &crate::fib::Peer,
        st: &WorkerStats,
    ) -> bool {
        let sock = &self.send[si];
        if !self.gso.load(Ordering::Relaxed) || sock.is_raw() {
            return false;
        }
        let data = &self.read_buf[pkt];
        let lay = match tso::segment_headers(hdr, data, hl, &mut self.hdr_buf) {
            Ok(Some(l)) if l.count > 1 => l,
            Ok(_) | Err(crate::offload::OffloadError::OutTooSmall { .. }) => return false,
            Err(e) => {
                st.drop(e.drop_reason(), 1);
                return true;
            }
        };
        for i in 0..lay.count {
            self.seq = self.seq.wrapping_add(1);
            let h = &mut self.hdr_buf[lay.header(i)];
            if let Err(r) = self.cfg.encap.encapsulate(h, peer.mac, self.seq) {
                st.drop(r, lay.count as u64);
                return true;
            }
        }
        let seg = hl + lay.hdr_len + lay.gso;
        match send_header_runs(sock, &self.hdr_buf, &lay, data, seg, dst, &self.gso) {
            Some(sent) => {
                pc_sent(st, &peer.counters.tx, &sent);
                true
            }
            // Nothing sent: the copying path takes the whole super-packet.
            None => false,
        }
    }

    /// Answers a packet with no lease for its destination with ICMP net-unreachable.
    fn unreachable(&mut self, dst: Ipv4Addr, start: usize, end: usize, st: &WorkerStats) {
        st.drop(DropReason::NoRoute, 1);
        // The error comes from the unreachable address itself: the kernel drops packets that
        // arrive with one of its own addresses as source (martian), so our device address
        // cannot be used, and the destination is never local (else it would not be here).
        let from = dst;
        if let Some(len) =
            icmp::net_unreachable_v4(&self.read_buf[start..end], from, &mut self.icmp_buf)
        {
            let res = if self.cfg.vnet_hdr {
                self.queue
                    .write2(&[0u8; virtio::LEN], &self.icmp_buf[..len])
            } else {
                self.queue.write(&self.icmp_buf[..len])
            };
            if res.is_ok() {
                st.icmp_unreachable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What a send ([`send_layout`], [`send_header_runs`], [`send_msgs`]) did with its datagrams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Datagrams (segments) the kernel took, and their bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Send calls that succeeded.
    pub calls: u64,
    /// Datagrams not sent (socket full, or an error).
    pub dropped: u64,
}

impl Sent {
    fn add(&mut self, o: Sent) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.calls += o.calls;
        self.dropped += o.dropped;
    }
}

/// Sends the `layout.count` datagrams of `buf` (each `layout.datagram(i)`: the headroom
/// holds the encapsulation) to `dst`, for the L3 and the L2 data planes alike.
///
/// While `gso` is `Some(true)` they go as UDP GSO runs (at most [`MAX_GSO_SEGMENTS`]
/// datagrams and [`MAX_GSO_BYTES`] bytes each, all runs in one `sendmmsg`); a kernel that
/// refuses GSO (EIO/EINVAL) clears the flag for good and the same datagrams go out one per
/// message. A full socket drops the lot rather than retrying. `None` (a raw GRE socket) and
/// a flag already cleared send one datagram per message, in `sendmmsg` batches.
pub(crate) fn send_layout(
    sock: &UnderlaySocket,
    buf: &[u8],
    layout: &tso::Layout,
    dst: SocketAddrV4,
    gso: Option<&AtomicBool>,
) -> Sent {
    let stride = layout.stride;
    let total = layout.out_len();
    let mut msgs = [Msg {
        buf: &[],
        dst,
        segment: 0,
    }; MAX_BATCH];
    let per_run = gso_run_len(stride);
    // More runs than one sendmmsg takes cannot come from a TCP MSS into SEG_BUF, but a
    // layout that would need them goes the per-datagram way rather than off the array.
    let fits = layout.count.div_ceil(per_run) <= MAX_BATCH;
    if let Some(flag) = gso.filter(|g| g.load(Ordering::Relaxed) && layout.count > 1 && fits) {
        let (mut n, mut i) = (0, 0);
        while i < layout.count {
            let k = per_run.min(layout.count - i);
            let start = i * stride;
            msgs[n] = Msg {
                buf: &buf[start..(start + k * stride).min(total)],
                dst,
                segment: stride as u16,
            };
            n += 1;
            i += k;
        }
        match sock.send_batch(&msgs[..n]) {
            Ok(_) => {
                return Sent {
                    packets: layout.count as u64,
                    bytes: total as u64,
                    calls: 1,
                    dropped: 0,
                }
            }
            // Refused: resend one by one below.
            Err(e) if gso_refused(&e, flag) => {}
            Err(_) => {
                return Sent {
                    dropped: layout.count as u64,
                    ..Sent::default()
                }
            }
        }
    }
    let mut sent = Sent::default();
    let mut i = 0;
    while i < layout.count {
        let k = MAX_BATCH.min(layout.count - i);
        for (j, m) in msgs.iter_mut().enumerate().take(k) {
            *m = Msg {
                buf: &buf[layout.datagram(i + j)],
                dst,
                segment: 0,
            };
        }
        sent.add(send_msgs(sock, &msgs[..k]));
        i += k;
    }
    sent
}

/// Sends the `lay.count` datagrams of `seg` bytes (the last may be shorter), datagram i
/// being `hdr_buf[lay.header(i)]` followed by `data[lay.chunk(i)]`, to `dst` as UDP GSO runs
/// of (header, payload) iovecs: the payload's one copy is the kernel's.
///
/// Returns `None`, having sent nothing, when the kernel refuses GSO on the first run (the
/// refusal clears `gso` for good, see [`gso_refused`]); the caller then sends the copying
/// way. A later run that fails is counted as dropped.
pub(crate) fn send_header_runs(
    sock: &UnderlaySocket,
    hdr_buf: &[u8],
    lay: &tso::HeaderLayout,
    data: &[u8],
    seg: usize,
    dst: SocketAddrV4,
    gso: &AtomicBool,
) -> Option<Sent> {
    let per_run = gso_run_len(seg);
    let mut iov = [IoSlice::new(&[]); 2 * MAX_GSO_SEGMENTS];
    let mut sent = Sent::default();
    let mut i = 0;
    while i < lay.count {
        let k = per_run.min(lay.count - i);
        let mut bytes = 0;
        for j in 0..k {
            let (h, c) = (&hdr_buf[lay.header(i + j)], &data[lay.chunk(i + j)]);
            bytes += h.len() + c.len();
            iov[2 * j] = IoSlice::new(h);
            iov[2 * j + 1] = IoSlice::new(c);
        }
        match sock.send_vectored(&iov[..2 * k], dst, seg as u16) {
            Ok(_) => {
                sent.packets += k as u64;
                sent.bytes += bytes as u64;
                sent.calls += 1;
            }
            Err(e) if i == 0 && gso_refused(&e, gso) => return None,
            Err(_) => sent.dropped += k as u64,
        }
        i += k;
    }
    Some(sent)
}

/// Datagrams of `seg` bytes per UDP GSO send: at most [`MAX_GSO_SEGMENTS`] and
/// [`MAX_GSO_BYTES`] in all, at least one.
fn gso_run_len(seg: usize) -> usize {
    (MAX_GSO_BYTES / seg.max(1)).clamp(1, MAX_GSO_SEGMENTS)
}

/// Whether `e` is the kernel refusing UDP GSO (EIO/EINVAL); if so, clears `flag` for good
/// (every later send goes one datagram per message) and says so in the log.
fn gso_refused(e: &io::Error, flag: &AtomicBool) -> bool {
    let refused = matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL));
    if refused {
        tracing::warn!(error = %e, "UDP GSO refused by the kernel; falling back to one datagram per segment");
        flag.store(false, Ordering::Relaxed);
    }
    refused
}

/// Counts a [`Sent`] on the worker's and the peer's counters.
fn pc_sent(st: &WorkerStats, pc: &DirCounters, r: &Sent) {
    pc.add(r.packets, r.bytes);
    st.tx_packets.fetch_add(r.packets, Ordering::Relaxed);
    st.tx_bytes.fetch_add(r.bytes, Ordering::Relaxed);
    st.tx_sends.fetch_add(r.calls, Ordering::Relaxed);
    if r.dropped > 0 {
        st.drop(DropReason::IoError, r.dropped);
    }
}

/// One `sendmmsg` of `msgs`, one datagram each: what the kernel took, the rest dropped.
fn send_msgs(sock: &UnderlaySocket, msgs: &[Msg<'_>]) -> Sent {
    match sock.send_batch(msgs) {
        Ok(n) => Sent {
            packets: n as u64,
            bytes: msgs[..n].iter().map(|m| m.buf.len() as u64).sum(),
            calls: 1,
            dropped: (msgs.len() - n) as u64,
        },
        Err(_) => Sent {
            dropped: msgs.len() as u64,
            ..Sent::default()
        },
    }
}

struct RxWorker {
    cfg: Config,
    queue: Arc<Queue>,
    sock: Arc<UnderlaySocket>,
    fib: SharedFib,
    batch: RecvBatch,
    gro: Option<Coalescer>,
    arp_buf: [u8; 128],
    scratch: Vec<u8>,
}

impl RxWorker {
    fn new(cfg: Config, queue: Arc<Queue>, sock: Arc<UnderlaySocket>, fib: SharedFib) -> Self {
        let batch = if cfg.gro {
            RecvBatch::new(8, 65536)
        } else {
            RecvBatch::new(MAX_BATCH, 9216)
        };
        let gro = cfg.vnet_hdr.then(Coalescer::new);
        Self {
            cfg,
            queue,
            sock,
            fib,
            batch,
            gro,
            arp_buf: [0; 128],
            scratch: vec![0; SEG_BUF],
        }
    }

    /// Receives and delivers up to 16 batches from the (readable) socket; returns whether it
    /// received any.
    fn drain(&mut self, st: &WorkerStats) -> bool {
        let fib = self.fib.load();
        let mut any = false;
        for _ in 0..16 {
            let n = match self.sock.recv_batch(&mut self.batch) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    st.drop(DropReason::IoError, 1);
                    break;
                }
            };
            any = true;
            st.rx_batches.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                self.handle_message(&fib, i, st);
            }
            if let Some(g) = self.gro.as_mut() {
                let q = &self.queue;
                g.flush(&mut |p| write_counted(q, p, st));
            }
        }
        any
    }

    fn handle_message(&mut self, fib: &Fib, i: usize, st: &WorkerStats) {
        let (data, seg, from) = self.batch.get(i);
        // A peer kernel's VXLAN over veth hands over whole tunnel-GSO super-frames, with the
        // inner MSS as the "segment size": recognise one by its inner IPv4 length covering
        // the whole buffer, and keep it whole (the MSS then segments the inner packet).
        let hl = self.cfg.encap.header_len();
        let whole_frame = seg > 0 && data.len() > seg && !self.sock.is_raw() && {
            data.get(hl..).is_some_and(crate::offload::ip_len_covers)
        };
        let inner_gso = if whole_frame { seg } else { 0 };
        let seg = if seg == 0 || whole_frame {
            data.len().max(1)
        } else {
            seg
        };
        // Split borrows: the batch is read while the coalescer and ARP buffer are written.
        let RxWorker {
            cfg,
            queue,
            sock,
            gro,
            arp_buf,
            scratch,
            ..
        } = self;
        for d in data.chunks(seg) {
            let (src_ip, payload) = if sock.is_raw() {
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
            if sock.is_raw() && payload.get(2..4) == Some(&ETHERTYPE_TEB_BYTES[..]) {
                continue;
            }
            if !fib.is_known_sender(src_ip) {
                st.drop(DropReason::UnknownSender, 1);
                continue;
            }
            match cfg.encap.decapsulate(payload) {
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
                    st.rx_packets.fetch_add(1, Ordering::Relaxed);
                    st.rx_bytes.fetch_add(inner.len() as u64, Ordering::Relaxed);
                    peer.counters.rx.add(1, inner.len() as u64);
                    if let Some(h) = offload::partial_checksum_hdr(inner, inner_gso) {
                        write_partial(queue, cfg.vnet_hdr, gro.as_mut(), &h, inner, scratch, st);
                        continue;
                    }
                    match gro.as_mut() {
                        Some(g) => g.push(inner, &mut |p| write_counted(queue, p, st)),
                        None => write_counted(queue, inner, st),
                    }
                }
                Ok(Decapsulated::Arp(frame)) => {
                    let Encap::Vxlan { vni, .. } = cfg.encap else {
                        continue;
                    };
                    let body = &mut arp_buf[crate::wire::vxlan::HEADER_LEN..];
                    if let Some(len) = arp::reply_to(
                        frame,
                        cfg.local_mac,
                        |ip| fib.is_local(ip) || ip == cfg.tun_addr,
                        body,
                    ) {
                        crate::wire::vxlan::Repr { vni }
                            .emit(&mut arp_buf[..crate::wire::vxlan::HEADER_LEN]);
                        let total = crate::wire::vxlan::HEADER_LEN + len;
                        let msg = [Msg {
                            buf: &arp_buf[..total],
                            dst: SocketAddrV4::new(src_ip, cfg.port),
                            segment: 0,
                        }];
                        if sock.send_batch(&msg).is_ok() {
                            st.arp_replies.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
}

/// Writes one packet (with its virtio header when the device has one) to the device.
fn write_counted(q: &Queue, pkt: &[u8], st: &WorkerStats) {
    if q.write(pkt).is_err() {
        st.drop(DropReason::IoError, 1);
    }
}

/// Delivers a packet whose transport checksum is only partial: with a virtio header the
/// kernel finishes it (and segments a super-packet); on the plain path it is finished (and
/// segmented) here.
fn write_partial(
    q: &Queue,
    vnet: bool,
    gro: Option<&mut Coalescer>,
    h: &virtio::VirtioNetHdr,
    inner: &[u8],
    scratch: &mut [u8],
    st: &WorkerStats,
) {
    if vnet {
        // Keep the flow's order: anything held for it goes first.
        if let Some(g) = gro {
            g.flush(&mut |p| write_counted(q, p, st));
        }
        let mut hb = [0u8; virtio::LEN];
        h.emit(&mut hb);
        if q.write2(&hb, inner).is_err() {
            st.drop(DropReason::IoError, 1);
        }
        return;
    }
    match tso::segment(h, inner, 0, scratch) {
        Ok(l) => {
            for i in 0..l.count {
                write_counted(q, &scratch[l.datagram(i)], st);
            }
        }
        Err(e) => st.drop(e.drop_reason(), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testutil::{as_tso, payload, tcp};
    use std::net::UdpSocket;

    /// A 64 KiB TSO super-packet segmented with 8 bytes of headroom (as for vxlan), and a
    /// receiver on loopback.
    fn setup() -> (Vec<u8>, tso::Layout, UdpSocket, UnderlaySocket) {
        let (hdr, sp) = as_tso(tcp(false, 1, &[], true, &payload(60_000, 3)), 1398);
        let mut buf = vec![0u8; SEG_BUF];
        let layout = tso::segment(&hdr, &sp, 8, &mut buf).expect("valid super-packet");
        for i in 0..layout.count {
            let d = layout.datagram(i);
            buf[d.start..d.start + 8].copy_from_slice(&(i as u64).to_be_bytes());
        }
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let tx = UnderlaySocket::udp("127.0.0.1:0".parse().unwrap(), 4 << 20).expect("udp");
        (buf, layout, rx, tx)
    }

    /// Every datagram arrives once, in order, byte for byte as laid out.
    fn receive_all(rx: &UdpSocket, buf: &[u8], layout: &tso::Layout) {
        let mut got = vec![0u8; 65536];
        for i in 0..layout.count {
            let n = rx.recv(&mut got).expect("datagram within 2 s");
            assert_eq!(&got[..n], &buf[layout.datagram(i)], "datagram {i}");
        }
    }

    #[test]
    fn send_layout_sends_gso_runs() {
        let (buf, layout, rx, tx) = setup();
        assert!(tx.probe_gso(), "this kernel has UDP_SEGMENT");
        let dst = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        };
        let gso = AtomicBool::new(true);
        let sent = send_layout(&tx, &buf, &layout, dst, Some(&gso));
        assert_eq!(
            sent,
            Sent {
                packets: layout.count as u64,
                bytes: layout.out_len() as u64,
                calls: 1,
                dropped: 0
            }
        );
        assert!(gso.load(Ordering::Relaxed));
        receive_all(&rx, &buf, &layout);
    }

    /// The kernel refuses UDP GSO on a socket without UDP checksums (EINVAL): the same
    /// datagrams go out one per message, and GSO stays off for later sends.
    #[test]
    fn send_layout_falls_back_when_the_kernel_refuses_gso() {
        let (buf, layout, rx, tx) = setup();
        tx.disable_tx_checksum().expect("SO_NO_CHECK");
        let dst = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        };
        let gso = AtomicBool::new(true);
        let sent = send_layout(&tx, &buf, &layout, dst, Some(&gso));
        assert!(!gso.load(Ordering::Relaxed), "the refusal is remembered");
        assert_eq!(sent.packets, layout.count as u64);
        assert_eq!(sent.bytes, layout.out_len() as u64);
        assert_eq!(sent.dropped, 0);
        assert!(sent.calls >= 1);
        receive_all(&rx, &buf, &layout);
        // The next layout goes straight the plain way.
        let sent = send_layout(&tx, &buf, &layout, dst, Some(&gso));
        assert_eq!(sent.packets, layout.count as u64);
        receive_all(&rx, &buf, &layout);
    }

    /// The zero-copy sender's runs of (header, payload) iovecs arrive as the copying
    /// segmenter lays the datagrams out; on a socket where the kernel refuses GSO it sends
    /// nothing, says so (`None`) and clears the flag, so the caller can copy instead.
    #[test]
    fn send_header_runs_match_the_copying_layout_and_report_a_refusal() {
        let (hdr, sp) = as_tso(tcp(false, 1, &[], true, &payload(60_000, 3)), 1398);
        let (buf, layout, rx, tx) = setup();
        let mut hdr_buf = vec![0u8; 32 * 1024];
        let lay = tso::segment_headers(&hdr, &sp, 8, &mut hdr_buf)
            .expect("valid super-packet")
            .expect("needs segmenting");
        assert_eq!(lay.count, layout.count);
        for i in 0..lay.count {
            let h = lay.header(i);
            hdr_buf[h.start..h.start + 8].copy_from_slice(&(i as u64).to_be_bytes());
        }
        let dst = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        };
        let seg = 8 + lay.hdr_len + lay.gso;
        let gso = AtomicBool::new(true);
        let sent = send_header_runs(&tx, &hdr_buf, &lay, &sp, seg, dst, &gso)
            .expect("GSO accepted on loopback");
        assert_eq!(sent.packets, layout.count as u64);
        assert_eq!(sent.bytes, layout.out_len() as u64);
        assert_eq!(sent.dropped, 0);
        assert!(gso.load(Ordering::Relaxed));
        receive_all(&rx, &buf, &layout);

        tx.disable_tx_checksum().expect("SO_NO_CHECK");
        assert_eq!(
            send_header_runs(&tx, &hdr_buf, &lay, &sp, seg, dst, &gso),
            None,
            "a refused first run sends nothing"
        );
        assert!(!gso.load(Ordering::Relaxed), "the refusal is remembered");
        let mut got = [0u8; 16];
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            rx.recv(&mut got).is_err(),
            "nothing arrived after the refusal"
        );
    }
}
