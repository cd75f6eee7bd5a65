//! The data path both data planes share: worker threads and their poll loop
//! ([`Workers`]), the transmit paths from a read super-packet to the underlay
//! ([`send::TxPath`]), and the receive side's splitting of what the socket hands over and
//! delivery into a device ([`recv`]).
//!
//! The routed data plane ([`crate::l3`]) and the layer-2 one ([`crate::l2::dataplane`]) are
//! thin users of it: they decide *where* a packet goes (forwarding table, MAC learning,
//! VLAN map) and *which* header it gets; everything that moves bytes, batches syscalls,
//! segments or coalesces lives here once. No lock, and no heap allocation per packet.

pub mod recv;
pub mod send;
pub mod tunnel;

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys::tun::{self, poll_readable, Device};
use crate::wire::virtio;

/// Room kept in front of every packet read from a device for the headers put in front of
/// it on the way out (encapsulation, inner Ethernet).
pub const HEADROOM: usize = 64;
/// Largest packet a device hands over: a 64 KiB TSO super-packet, an 802.1Q-tagged
/// Ethernet header and the virtio header.
pub const MAX_READ: usize = 65535 + 18 + virtio::LEN;
/// Bytes of segment slots per transmit: enough for a 64 KiB super-packet cut into the
/// smallest segments TCP uses over a 1280-byte path, with headers.
pub const SEG_BUF: usize = 256 * 1024;
/// How long a worker blocks in `poll` before re-checking its stop flag.
const POLL_MS: i32 = 100;

/// Default busy-poll window after traffic (`--busy-poll-us`): covers the round trip to a
/// peer whose worker must first be woken (~50–70 µs on a VM whose idle vCPUs halt) plus
/// its processing.
pub const DEFAULT_BUSY_POLL_US: u32 = 200;

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
/// descriptor is readable.
pub trait Side: Send + 'static {
    /// The descriptor to poll (a device queue or an underlay socket), owned apart from
    /// the side so that polling borrows nothing from it.
    fn pollable(&self) -> Arc<dyn AsFd + Send + Sync>;
    /// Handles what is ready; returns whether there was any traffic.
    fn drain(&mut self) -> bool;
}

/// Running worker threads: each polls a device side and a socket side together. Stopped
/// (and joined) by [`Workers::stop`] or when dropped.
pub struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one thread `<name><i>` per pair: `device` (transmit: device → underlay) and
    /// `socket` (receive: underlay → device), either of which may be absent. After any
    /// traffic a thread keeps polling without blocking for `busy` (see [`poll_loop`]).
    pub fn spawn<T: Side, R: Side>(
        name: &str,
        pairs: Vec<(Option<T>, Option<R>)>,
        busy: Duration,
    ) -> io::Result<Workers> {
        let mut w = Workers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::with_capacity(pairs.len()),
        };
        for (i, (mut tx, mut rx)) in pairs.into_iter().enumerate() {
            let stop = w.stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("{name}{i}"))
                .spawn(move || {
                    let dev = tx.as_ref().map(|s| s.pollable());
                    let sock = rx.as_ref().map(|s| s.pollable());
                    poll_loop(dev.as_deref(), sock.as_deref(), busy, &stop, |d, s| {
                        let mut worked = false;
                        if let (true, Some(t)) = (d, tx.as_mut()) {
                            worked |= t.drain();
                        }
                        if let (true, Some(r)) = (s, rx.as_mut()) {
                            worked |= r.drain();
                        }
                        worked
                    })
                });
            // On a spawn failure `w` is dropped, which stops the threads already started.
            w.threads.push(t?);
        }
        Ok(w)
    }

    /// Stops the workers and waits for them (each notices within one poll interval).
    pub fn stop(mut self) {
        self.halt();
    }

    /// Whether every worker thread is still running (for the systemd watchdog).
    pub fn alive(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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

/// The loop every worker runs: poll the device fd and the socket fd (either may be absent),
/// call `work(device_ready, socket_ready)` (true = it handled traffic), and after traffic
/// keep polling with a zero timeout, yielding the CPU between polls, until `busy` passes
/// with nothing to do; then block for up to [`POLL_MS`] again. Returns when `stop` is set.
pub fn poll_loop(
    device: Option<&(dyn AsFd + Send + Sync)>,
    socket: Option<&(dyn AsFd + Send + Sync)>,
    busy: Duration,
    stop: &AtomicBool,
    mut work: impl FnMut(bool, bool) -> bool,
) {
    // Made once per thread, before the loop.
    let mut fds = Vec::with_capacity(2);
    let (mut dev_bit, mut sock_bit) = (0, 0);
    if let Some(d) = device {
        dev_bit = 1 << fds.len();
        fds.push(d.as_fd());
    }
    if let Some(s) = socket {
        sock_bit = 1 << fds.len();
        fds.push(s.as_fd());
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
