//! The wireguard data path: one thread that reads the `flannel-wg` TUN (a virtio header and
//! up to a 64 KiB TCP super-packet per read), segments each super-packet
//! ([`tso::segment`]), seals its segments toward their peer into one buffer
//! ([`Engine::seal`]) and sends them as UDP GSO runs ([`send_layout`]); receives the
//! underlay socket's datagrams with UDP GRO, splits each buffer at its segment size, lets
//! the [`Engine`] open each datagram, and coalesces the inner TCP back into super-packets for
//! the TUN ([`Delivery`]); and runs the protocol's timers. Every buffer is allocated when
//! the thread starts; the peer table changes only when the leases do.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::engine::{Engine, Io};
use super::peers::SharedSpecs;
use crate::counters::{count_drop, DropCounters};
use crate::datapath::fallback::Fallback;
use crate::datapath::recv::{self, Delivery, Link, Target};
use crate::datapath::send::send_layout;
use crate::datapath::{MAX_READ, SEG_BUF};
use crate::drop::DropReason;
use crate::offload::tso;
use crate::sys::socket::{Msg, RecvBatch, UnderlaySocket};
use crate::sys::tun::{poll_readable, Queue};
use crate::wire::virtio::{self, VirtioNetHdr};

/// Largest datagram buffer handed over by one receive (UDP GRO joins up to 64 KiB).
const BUF: usize = 65536;
/// Buffers taken from the socket per `recvmmsg`, reads from the TUN per wake-up.
const BATCH: usize = 32;
/// How often the protocol's timers run (boringtun's device runs them every 250 ms).
const TICK: Duration = Duration::from_millis(100);
/// The TUN, as a delivery target: queue 0, no link header.
const TUN: Target = Target {
    queue: 0,
    link: Link::Ip,
};

/// The running data path; stops (and joins) on drop.
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the data path thread owns.
pub struct Parts {
    pub engine: Engine,
    pub tun: Queue,
    pub sock: Arc<UnderlaySocket>,
    /// The device's peers, as the control loop last computed them.
    pub peers: SharedSpecs,
    /// The data path's own drops (device and socket side; the protocol's are the
    /// engine's), read by the metrics exporter on each scrape.
    pub drops: Arc<DropCounters>,
}

impl Worker {
    /// Starts the thread.
    pub fn start(parts: Parts) -> std::io::Result<Worker> {
        parts.tun.set_nonblocking()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wg".into())
            .spawn(move || run(parts, &flag))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the thread still runs (for the health check).
    pub fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// Where the engine's output goes: protocol messages one per `sendmmsg`; decrypted packets
/// into the delivery, which coalesces TCP and writes at [`Delivery::flush`].
struct Out<'a> {
    sock: &'a UnderlaySocket,
    qs: &'a [Arc<Queue>],
    delivery: &'a mut Delivery,
    drops: &'a DropCounters,
}

impl Io for Out<'_> {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        let msg = Msg {
            buf: datagram,
            dst: to,
            segment: 0,
        };
        if let Err(e) = self.sock.send_batch(&[msg]) {
            tracing::debug!(error = %e, %to, "wireguard send failed");
        }
    }

    fn deliver(&mut self, packet: &[u8]) {
        self.delivery.ip(self.qs, TUN, packet, None, self.drops);
    }
}

/// The thread's buffers, allocated once at start.
struct Buffers {
    /// One TUN read: virtio header and packet.
    read: Vec<u8>,
    /// The segments of one super-packet ([`tso::segment`], no headroom).
    segs: Vec<u8>,
    /// Their data messages, one stride apart ([`Engine::seal`]): every segment grows by
    /// 32 bytes, and a handshake initiation may follow the last.
    sealed: Vec<u8>,
    /// One decrypted packet.
    open: Vec<u8>,
    batch: RecvBatch,
}

impl Buffers {
    fn new() -> Self {
        Buffers {
            read: vec![0; MAX_READ],
            segs: vec![0; SEG_BUF],
            sealed: vec![0; 2 * SEG_BUF],
            open: vec![0; BUF],
            batch: RecvBatch::new(BATCH, BUF),
        }
    }
}

/// What the send side keeps between packets: whether UDP GSO is on, and the destinations
/// the kernel refused it for.
struct Gso {
    on: bool,
    off: Fallback,
}

fn run(p: Parts, stop: &AtomicBool) {
    let Parts {
        mut engine,
        tun,
        sock,
        peers: shared,
        drops,
    } = p;
    let qs = [Arc::new(tun)];
    let mut b = Buffers::new();
    let mut delivery = Delivery::new(true);
    let mut gso = Gso {
        on: sock.probe_gso(),
        off: Fallback::default(),
    };
    let gro = sock.enable_gro();
    tracing::info!(
        gso = gso.on,
        gro,
        "wireguard data path: TUN TSO, UDP GSO/GRO batches"
    );
    let mut specs = shared.load_full();
    engine.set_peers(&specs);
    let mut next_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let current = shared.load();
        if !Arc::ptr_eq(&current, &specs) {
            specs = current.clone();
            engine.set_peers(&specs);
        }
        drop(current);
        let ready = poll_readable(&[qs[0].as_fd(), sock.as_fd()], 50).unwrap_or(0);
        let mut out = Out {
            sock: &sock,
            qs: &qs,
            delivery: &mut delivery,
            drops: &drops,
        };
        if ready & 1 != 0 {
            transmit(&mut engine, &mut b, &mut gso, &mut out);
        }
        if ready & 2 != 0 {
            receive(&mut engine, &mut b, &mut out);
        }
        if Instant::now() >= next_tick {
            engine.tick(&mut b.open, &mut out);
            next_tick = Instant::now() + TICK;
        }
    }
    log_drops(&drops);
}

/// The data path's own drops (device and socket side; the protocol's are the engine's),
/// logged when the thread stops (they are on `/metrics` meanwhile).
fn log_drops(drops: &DropCounters) {
    let counted: Vec<String> = DropReason::ALL
        .iter()
        .map(|&r| (r, drops[r as usize].load(Ordering::Relaxed)))
        .filter(|&(_, n)| n > 0)
        .map(|(r, n)| format!("{}={n}", r.as_str()))
        .collect();
    if !counted.is_empty() {
        tracing::info!(drops = %counted.join(","), "wireguard data path stopped");
    }
}

/// Reads up to [`BATCH`] packets from the TUN; each is segmented, sealed toward its peer
/// and sent in UDP GSO runs (one datagram per message to a destination that refused GSO).
fn transmit(engine: &mut Engine, b: &mut Buffers, gso: &mut Gso, out: &mut Out<'_>) {
    for _ in 0..BATCH {
        let Ok(n) = out.qs[0].read(&mut b.read) else {
            break;
        };
        let Some(vh) = VirtioNetHdr::parse(&b.read[..n]) else {
            count_drop(out.drops, DropReason::Truncated, 1);
            continue;
        };
        let lay = match tso::segment(&vh, &b.read[virtio::LEN..n], 0, &mut b.segs) {
            Ok(l) => l,
            Err(e) => {
                count_drop(out.drops, e.drop_reason(), 1);
                continue;
            }
        };
        let Some((to, sealed)) = engine.seal(&b.segs, &lay, &mut b.sealed, out) else {
            continue;
        };
        let now = Instant::now();
        let on = gso.on && !gso.off.off(to.ip(), now);
        let (sent, refused) = send_layout(out.sock, &b.sealed, &sealed, to, on);
        if refused && gso.off.refuse(to.ip(), now) {
            tracing::warn!(%to, "the kernel refused UDP GSO toward this peer; one datagram per message for it until the re-probe");
        }
        count_drop(out.drops, DropReason::IoError, sent.dropped);
    }
}

/// Takes one batch from the socket: each buffer split at its GRO segment size, each
/// datagram opened by the engine; what it delivers is coalesced and written at the end.
fn receive(engine: &mut Engine, b: &mut Buffers, out: &mut Out<'_>) {
    if let Ok(n) = out.sock.recv_batch(&mut b.batch) {
        for i in 0..n {
            let (data, seg, from) = b.batch.get_from(i);
            let chunk = recv::split(data, seg, None).chunk;
            for d in data.chunks(chunk) {
                engine.receive(from, d, &mut b.open, out);
            }
        }
    }
    out.delivery.flush(out.qs, out.drops);
}
