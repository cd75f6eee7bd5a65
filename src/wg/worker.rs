//! The wireguard data path: one thread that reads the `flannel-wg` TUN and encrypts each
//! packet toward its peer, receives the underlay socket's datagrams in batches and hands
//! them to the [`Engine`], and runs the protocol's timers. Every buffer is allocated when
//! the thread starts; the peer table changes only when the leases do.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::engine::{Engine, Io, OVERHEAD};
use super::peers::SharedSpecs;
use crate::sys::socket::{Msg, RecvBatch, UnderlaySocket};
use crate::sys::tun::{poll_readable, Queue};

/// Largest packet handled: the TUN's MTU is far below it.
const BUF: usize = 65536;
/// Datagrams taken from the socket per `recvmmsg`, packets from the TUN per wake-up.
const BATCH: usize = 32;
/// How often the protocol's timers run (boringtun's device runs them every 250 ms).
const TICK: Duration = Duration::from_millis(100);

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
}

/// Sends and delivers straight away: one `sendmmsg` of one message, one TUN write.
struct Direct<'a> {
    sock: &'a UnderlaySocket,
    tun: &'a Queue,
}

impl Io for Direct<'_> {
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
        if let Err(e) = self.tun.write(packet) {
            tracing::debug!(error = %e, "write to the wireguard device failed");
        }
    }
}

fn run(mut p: Parts, stop: &AtomicBool) {
    let mut inbuf = vec![0u8; BUF];
    let mut out = vec![0u8; BUF + OVERHEAD];
    let mut batch = RecvBatch::new(BATCH, BUF);
    let mut specs = p.peers.load_full();
    p.engine.set_peers(&specs);
    let mut next_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let current = p.peers.load();
        if !Arc::ptr_eq(&current, &specs) {
            specs = current.clone();
            p.engine.set_peers(&specs);
        }
        drop(current);
        let ready = poll_readable(&[p.tun.as_fd(), p.sock.as_fd()], 50).unwrap_or(0);
        let mut io = Direct {
            sock: &p.sock,
            tun: &p.tun,
        };
        if ready & 1 != 0 {
            for _ in 0..BATCH {
                let Ok(n) = p.tun.read(&mut inbuf) else { break };
                p.engine.send(&inbuf[..n], &mut out, &mut io);
            }
        }
        if ready & 2 != 0 {
            if let Ok(n) = p.sock.recv_batch(&mut batch) {
                for i in 0..n {
                    let (data, _, from) = batch.get_from(i);
                    p.engine.receive(from, data, &mut out, &mut io);
                }
            }
        }
        if Instant::now() >= next_tick {
            p.engine.tick(&mut out, &mut io);
            next_tick = Instant::now() + TICK;
        }
    }
}
