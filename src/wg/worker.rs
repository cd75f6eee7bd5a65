//! The wireguard data path: one thread that reads the `flannel-wg` TUN (a virtio header and
//! up to a 64 KiB TCP super-packet per read), segments each super-packet
//! ([`tso::segment`]), seals its segments toward their peer into one buffer
//! ([`Engine::seal`]) and sends them as UDP GSO runs ([`send_layout`]); receives the
//! underlay socket's datagrams with UDP GRO, splits each buffer at its segment size, lets
//! the [`Engine`] open each datagram, and coalesces the inner TCP back into super-packets for
//! the TUN ([`Delivery`]); and runs the protocol's timers while any peer's run. Every
//! buffer is allocated when the thread starts; the peer table changes only when the
//! leases do ([`PeerList`]).
//!
//! The thread sleeps in `poll` until a packet, a datagram, a new peer list or the stop
//! request ([`Stop`]), or the next timer turn when timers run: idle, it does not wake.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::engine::{Engine, Io, PeerSpec};
use crate::counters::{count_drop, DropCounters};
use crate::datapath::fallback::Fallback;
use crate::datapath::recv::{self, Delivery, Link, Target};
use crate::datapath::send::send_layout;
use crate::datapath::{Stop, MAX_READ, SEG_BUF};
use crate::drop::DropReason;
use crate::offload::tso;
use crate::sys::socket::{Msg, RecvBatch, UnderlaySocket};
use crate::sys::tun::{poll_readable, Queue, Wakeup};
use crate::wire::virtio::{self, VirtioNetHdr};

/// Largest datagram buffer handed over by one receive (UDP GRO joins up to 64 KiB).
const BUF: usize = 65536;
/// Buffers taken from the socket per `recvmmsg`, reads from the TUN per wake-up.
const BATCH: usize = 32;
/// How often the protocol's timers run while any peer's run (boringtun's device runs them
/// every 250 ms; its timers count in whole seconds).
const TICK: Duration = Duration::from_millis(250);
/// The TUN, as a delivery target: queue 0, no link header.
const TUN: Target = Target {
    queue: 0,
    link: Link::Ip,
};

/// A device's peers as the control loop last computed them, swapped whole, and the
/// descriptor that wakes its data path thread when they change: the thread picks a new
/// list up without a lock.
pub struct PeerList {
    specs: ArcSwap<Vec<PeerSpec>>,
    changed: Wakeup,
}

/// A device's peer list, shared by the control loop's sink and the device's thread.
pub type SharedSpecs = Arc<PeerList>;

impl PeerList {
    /// An empty list.
    pub fn new() -> io::Result<SharedSpecs> {
        Ok(Arc::new(PeerList {
            specs: ArcSwap::default(),
            changed: Wakeup::new()?,
        }))
    }

    /// Makes `specs` the list and wakes the thread, unless it has that list already.
    pub fn publish(&self, specs: Vec<PeerSpec>) {
        if **self.specs.load() == specs {
            return;
        }
        self.specs.store(Arc::new(specs));
        if let Err(e) = self.changed.signal() {
            // Cannot happen on a valid eventfd; the thread then sees the list at its next wake.
            tracing::error!(error = %e, "waking the wireguard data path for new peers failed");
        }
    }

    /// The list now, the wake-up consumed first (so that a list published meanwhile
    /// wakes the thread again).
    pub fn take(&self) -> Arc<Vec<PeerSpec>> {
        self.changed.clear();
        self.specs.load_full()
    }
}

impl AsFd for PeerList {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.changed.as_fd()
    }
}

/// The running data path; stops (and joins) on drop, or hands its engine back
/// ([`Worker::stop`]).
pub struct Worker {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<Engine>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.halt();
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
    pub fn start(parts: Parts) -> io::Result<Worker> {
        parts.tun.set_nonblocking()?;
        let stop = Arc::new(Stop::new()?);
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wg".into())
            .spawn(move || run(parts, &flag))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and joins the thread; its engine back, sessions and figures kept (`None` when
    /// the thread had died).
    pub fn stop(mut self) -> Option<Engine> {
        self.halt()
    }

    fn halt(&mut self) -> Option<Engine> {
        self.stop.set();
        self.thread.take()?.join().ok()
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
        let msg = Msg::whole(datagram, to, 0);
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

fn run(p: Parts, stop: &Stop) -> Engine {
    let Parts {
        mut engine,
        tun,
        sock,
        peers,
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
    engine.set_peers(&peers.take());
    // The TUN (bit 0), the socket (1), the peer list (2), the stop request (last).
    let fds = [qs[0].as_fd(), sock.as_fd(), peers.as_fd(), stop.as_fd()];
    let mut next_tick = Instant::now() + TICK;
    while !stop.is_set() {
        let ticking = engine.timers_running();
        let ready = poll_readable(&fds, timeout(ticking, next_tick)).unwrap_or(0);
        if ready & 4 != 0 {
            engine.set_peers(&peers.take());
        }
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
        let now = Instant::now();
        if !ticking {
            // Timers start with traffic (or stay off): a first turn is due a period later.
            next_tick = now + TICK;
        } else if now >= next_tick {
            engine.tick(&mut b.open, &mut out);
            next_tick = now + TICK;
        }
    }
    log_drops(&drops);
    engine
}

/// How long the thread may sleep in `poll`: until the next timer turn while the engine's
/// timers run (`ticking`), else until something happens (-1: no timeout).
fn timeout(ticking: bool, next_tick: Instant) -> i32 {
    if !ticking {
        return -1;
    }
    let wait = next_tick.saturating_duration_since(Instant::now());
    // Rounded up: a timeout a little short would wake the thread once more for nothing.
    wait.as_micros().div_ceil(1000) as i32
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_peer_list_wakes_the_thread_and_the_same_list_again_does_not() {
        let list = PeerList::new().unwrap();
        let woken = |l: &PeerList| poll_readable(&[l.as_fd()], 0).unwrap() == 1;
        assert!(!woken(&list), "an empty list wakes nothing");
        let spec = PeerSpec {
            public_key: [9; 32],
            endpoint: "192.0.2.9:51820".parse().unwrap(),
            allowed: vec!["10.244.9.0/24".parse().unwrap()],
        };
        list.publish(vec![spec.clone()]);
        assert!(woken(&list));
        assert!(woken(&list), "it stays woken until taken");
        assert_eq!(*list.take(), vec![spec.clone()]);
        assert!(!woken(&list), "taking the list consumes the wake-up");
        list.publish(vec![spec]);
        assert!(!woken(&list), "the list it has already");
        list.publish(Vec::new());
        assert!(woken(&list));
        assert!(list.take().is_empty());
    }
}
