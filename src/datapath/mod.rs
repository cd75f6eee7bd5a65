//! The data path both data planes share: worker threads and their poll loop
//! ([`Workers`]), the transmit paths from a read super-packet to the underlay
//! ([`send::TxPath`]), and the receive side's splitting of what the socket hands over and
//! delivery into a device ([`recv`]). What a send did ([`Sent`]) is defined here, below
//! both transmit ways ([`send`] uses [`tunnel`], never the reverse).
//!
//! The routed data plane ([`crate::l3`]) and the layer-2 one ([`crate::l2::switch`]) are
//! thin users of it: they decide *where* a packet goes (forwarding table, MAC learning,
//! VLAN map) and *which* header it gets; everything that moves bytes, batches syscalls,
//! segments or coalesces lives here once. No lock, and no heap allocation per packet.

pub mod fallback;
pub mod recv;
pub mod send;
pub mod spin;
pub mod tunnel;

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use self::spin::Spinner;
pub use self::spin::{BusyPoll, Turn, DEFAULT_BUSY_POLL};
use crate::sys::tun::{self, poll_readable, Device, Wakeup};
use crate::wire::virtio;

/// Room kept in front of every packet read from a device for the headers put in front of
/// it on the way out (encapsulation, inner Ethernet, and for tunnel GSO the outer Ethernet,
/// IPv6 and UDP headers: 22 + 62 bytes for vxlan, less the virtio header read there).
pub const HEADROOM: usize = 96;
/// Largest packet a device hands over: a 64 KiB TSO super-packet, an 802.1Q-tagged
/// Ethernet header and the virtio header.
pub const MAX_READ: usize = 65535 + 18 + virtio::LEN;
/// Bytes of segment slots per transmit: enough for a 64 KiB super-packet cut into the
/// smallest segments TCP uses over a 1280-byte path, with headers.
pub const SEG_BUF: usize = 256 * 1024;
/// A worker blocks in `poll` without a timeout: [`Stop`] wakes it.
const BLOCK: i32 = -1;

/// What a send did with its datagrams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams (segments) the kernel took, and their bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Send calls that succeeded.
    pub calls: u64,
    /// Datagrams not sent (socket full, or an error).
    pub dropped: u64,
    /// Of `calls`, the writes of whole super-packets through the tunnel-GSO TAP.
    pub tunnel_writes: u64,
    /// Destinations newly put in a worker's [`fallback::Fallback`] table (the kernel
    /// refused an offload for them).
    pub fallbacks: u64,
}

impl Sent {
    pub(crate) fn add(&mut self, o: Sent) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.calls += o.calls;
        self.dropped += o.dropped;
        self.tunnel_writes += o.tunnel_writes;
        self.fallbacks += o.fallbacks;
    }
}

/// Asks the kernel to hand a device's data plane super-packets: TCP (TSO, with ECN) and,
/// where the kernel has it (Linux ≥ 6.2), UDP (USO: applications sending with
/// `UDP_SEGMENT`, such as QUIC stacks), both with partial checksums. Returns the flags in
/// force; `Err` when even TSO is refused (packets then come one by one).
pub fn enable_offloads(dev: &mut Device) -> io::Result<u32> {
    let tso = tun::TUN_F_CSUM | tun::TUN_F_TSO4 | tun::TUN_F_TSO6 | tun::TUN_F_TSO_ECN;
    let uso = tun::TUN_F_USO4 | tun::TUN_F_USO6;
    dev.set_offload(tso | uso)
        .or_else(|_| dev.set_offload(tso))?;
    Ok(dev.offloads)
}

/// Whether an I/O error only means "nothing more right now".
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

/// One direction of a worker: the descriptor it waits on and the batch it runs when that
/// descriptor is readable. A receive side may wait on more than one (one underlay socket
/// per address family).
pub trait Side: Send + 'static {
    /// The descriptor to poll (a device queue or an underlay socket), owned apart from
    /// the side so that polling borrows nothing from it.
    fn pollable(&self) -> Arc<dyn AsFd + Send + Sync>;
    /// Handles what is ready; returns what it handled.
    fn drain(&mut self) -> Turn;
    /// Further descriptors of a receive side, after [`Self::pollable`] (none by default;
    /// at most [`MAX_SOCKETS`] − 1 are polled).
    fn more_pollables(&self) -> Vec<Arc<dyn AsFd + Send + Sync>> {
        Vec::new()
    }
    /// Handles what is ready on descriptor `which` (0 = [`Self::pollable`], then
    /// [`Self::more_pollables`] in order); by default [`Self::drain`].
    fn drain_one(&mut self, which: usize) -> Turn {
        let _ = which;
        self.drain()
    }
}

/// Most descriptors one receive side is polled on (with the device and the [`Stop`]
/// descriptor: the five [`poll_readable`] takes).
pub const MAX_SOCKETS: usize = 3;

/// The workers' stop request: a flag, and an eventfd polled beside their descriptors that
/// wakes them at once (so an idle worker sleeps until traffic, with no periodic timeout).
pub struct Stop {
    flag: AtomicBool,
    wake: Wakeup,
}

impl Stop {
    pub fn new() -> io::Result<Stop> {
        Ok(Stop {
            flag: AtomicBool::new(false),
            wake: Wakeup::new()?,
        })
    }

    /// Asks every loop polling this to return.
    pub fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        if let Err(e) = self.wake.signal() {
            // Cannot happen on a valid eventfd; the workers would then never wake.
            tracing::error!(error = %e, "waking the data-plane workers to stop failed");
        }
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// The descriptor a loop of its own (the wireguard thread) polls beside its own.
impl AsFd for Stop {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// Running worker threads: each polls a device side and a socket side together. Stopped
/// (and joined) by [`Workers::stop`] or when dropped.
pub struct Workers {
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one thread `<name><i>` per pair: `device` (transmit: device → underlay) and
    /// `socket` (receive: underlay → device), either of which may be absent. After any
    /// traffic a thread may keep polling without blocking, as `busy` says (see [`poll_loop`]).
    /// With `pin_to` (CPUs) not empty, thread `i` runs only on [`pin_sets`]`[i]`.
    pub fn spawn<T: Side, R: Side>(
        name: &str,
        pairs: Vec<(Option<T>, Option<R>)>,
        busy: BusyPoll,
        pin_to: &[usize],
    ) -> io::Result<Workers> {
        let mut w = Workers {
            stop: Arc::new(Stop::new()?),
            threads: Vec::with_capacity(pairs.len()),
        };
        let mut pins = pin_sets(pin_to, pairs.len()).into_iter();
        for (i, (mut tx, mut rx)) in pairs.into_iter().enumerate() {
            let stop = w.stop.clone();
            let pin = pins.next().unwrap_or_default();
            let t = std::thread::Builder::new()
                .name(format!("{name}{i}"))
                .spawn(move || {
                    if let Err(e) = crate::sys::cpu::pin_current_thread(&pin) {
                        tracing::warn!(worker = i, cpus = ?pin, error = %e, "cannot pin the data-plane worker; it runs unpinned");
                    }
                    let dev = tx.as_ref().map(|s| s.pollable());
                    let socks: Vec<_> = rx
                        .as_ref()
                        .map(|s| {
                            let mut v = vec![s.pollable()];
                            v.extend(s.more_pollables());
                            v.truncate(MAX_SOCKETS);
                            v
                        })
                        .unwrap_or_default();
                    let sock_refs: Vec<&(dyn AsFd + Send + Sync)> =
                        socks.iter().map(|s| &**s).collect();
                    poll_loop(dev.as_deref(), &sock_refs, busy, &stop, |d, ready| {
                        let mut turn = Turn::default();
                        if let (true, Some(t)) = (d, tx.as_mut()) {
                            turn.merge(t.drain());
                        }
                        if let Some(r) = rx.as_mut() {
                            for which in (0..sock_refs.len()).filter(|i| ready & (1 << i) != 0) {
                                turn.merge(r.drain_one(which));
                            }
                        }
                        turn
                    })
                });
            // On a spawn failure `w` is dropped, which stops the threads already started.
            w.threads.push(t?);
        }
        Ok(w)
    }

    /// Stops the workers and waits for them (the stop descriptor wakes each at once).
    pub fn stop(mut self) {
        self.halt();
    }

    /// How many worker threads were started.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Whether every worker thread is still running (for the systemd watchdog).
    pub fn alive(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    fn halt(&mut self) {
        self.stop.set();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Which CPUs each of `workers` workers is pinned to, given the CPUs `allowed`: worker `i`
/// gets those `c` with `c % workers == i`, which is where the kernel hands it packets with
/// `--steer cpu` (queue and socket `cpu % n`). A worker no allowed CPU maps to, or every
/// worker when `allowed` is empty, gets none (unpinned). Pure.
pub fn pin_sets(allowed: &[usize], workers: usize) -> Vec<Vec<usize>> {
    (0..workers)
        .map(|i| {
            let mine = allowed.iter().filter(|&&c| c % workers == i);
            mine.copied().collect()
        })
        .collect()
}

/// The loop every worker runs: poll the device fd (may be absent) and the socket fds (may
/// be none), call `work(device_ready, sockets_ready)` (bit `i` of `sockets_ready` set when
/// `sockets[i]` is readable; it returns what it handled), and after traffic, as `busy`
/// says ([`Spinner`]), keep polling with a zero timeout, yielding the CPU between polls;
/// otherwise block until a descriptor or `stop` is readable. Returns when `stop` is set.
pub fn poll_loop(
    device: Option<&(dyn AsFd + Send + Sync)>,
    sockets: &[&(dyn AsFd + Send + Sync)],
    busy: BusyPoll,
    stop: &Stop,
    mut work: impl FnMut(bool, u32) -> Turn,
) {
    // Made once per thread, before the loop.
    let sockets = &sockets[..sockets.len().min(MAX_SOCKETS)];
    let mut fds = Vec::with_capacity(2 + sockets.len());
    let dev_bit = match device {
        Some(d) => {
            fds.push(d.as_fd());
            1
        }
        None => 0,
    };
    // Socket i is bit (i + shift) of what `poll_readable` returns.
    let shift = fds.len();
    fds.extend(sockets.iter().map(|s| s.as_fd()));
    let sock_mask = ((1u32 << sockets.len()) - 1) << shift;
    if fds.is_empty() {
        return;
    }
    // Last: the stop request's descriptor (nothing to handle; the loop condition sees it).
    fds.push(stop.wake.as_fd());
    let mut spin = Spinner::new(busy, Instant::now());
    while !stop.is_set() {
        let timeout = if spin.spinning() { 0 } else { BLOCK };
        let ready = poll_readable(&fds, timeout).unwrap_or(0);
        let turn = work(ready & dev_bit != 0, (ready & sock_mask) >> shift);
        if busy == BusyPoll::Off {
            continue;
        }
        if spin.after(turn, Instant::now()) {
            // Let anything runnable on this CPU (the application, the peer's worker) go
            // first: spinning must not delay the very reply it waits for.
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pin_sets;

    #[test]
    fn each_cpu_belongs_to_the_worker_its_packets_are_steered_to() {
        assert_eq!(pin_sets(&[0, 1], 2), [vec![0], vec![1]]);
        assert_eq!(
            pin_sets(&[0, 1, 2, 3, 4, 5, 6, 7], 4),
            [vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]
        );
        // An allowed set with holes: CPU 3 → worker 1 (3 % 2), as the programs pick.
        assert_eq!(pin_sets(&[2, 3, 5], 2), [vec![2], vec![3, 5]]);
        // More workers than CPUs: the ones no CPU maps to run unpinned (and get no packet
        // from the kernel's side).
        assert_eq!(pin_sets(&[0, 1], 3), [vec![0], vec![1], vec![]]);
        assert_eq!(pin_sets(&[], 2), [Vec::<usize>::new(), vec![]]);
    }
}
