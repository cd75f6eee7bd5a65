//! Probes that move real traffic, all bounded in count and time: pings ([`ping`],
//! [`ping_until`], [`ping_burst`], [`ping_once`]) and a TCP transfer checked by sha256
//! ([`tcp_transfer`], [`tcp_transfer_stats`]) of deterministic [`Payload`] bytes.

use std::fmt::Display;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::netns::Netns;

/// `ping -c count -W 1 -i 0.2 to` from `from`; true if the command succeeds (≥ 1 reply).
pub fn ping(from: &Netns, to: impl Display, count: u32) -> bool {
    let count = count.clamp(1, 100).to_string();
    from.output(&[
        "ping",
        "-q",
        "-n",
        "-c",
        &count,
        "-W",
        "1",
        "-i",
        "0.2",
        &to.to_string(),
    ])
    .status
    .success()
}

/// Pings once per try until a reply arrives or `timeout` passes.
pub fn ping_until(from: &Netns, to: impl Display, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let to = to.to_string();
    loop {
        if ping(from, &to, 1) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), the same for the same seed.
pub struct Payload(u64);

impl Payload {
    pub fn new(seed: u64) -> Payload {
        Payload(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The result of [`tcp_transfer_stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// sha256 of what the sender wrote.
    pub sent: String,
    /// sha256 of what the receiver read until EOF.
    pub received: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub elapsed: Duration,
}

const IO_STALL: Duration = Duration::from_secs(20);

/// Sends `bytes` of deterministic data over TCP from namespace `from` to `to_ip:port` (IPv4
/// or IPv6), where a listener is bound in namespace `to` (port 0 = any free port). Returns the sha256 of what was
/// sent and of what was received (equal on success). Bounded: connect retries for 10 s, any
/// read/write stalled for 20 s fails, and the whole transfer must finish within
/// 60 s + 1 s per MB.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    to_ip: impl Into<IpAddr>,
    port: u16,
    bytes: u64,
) -> (String, String) {
    let t = tcp_transfer_stats(from, to, to_ip, port, bytes);
    (t.sent, t.received)
}

/// [`tcp_transfer`] with byte counts and timing; panics on any I/O error or timeout.
pub fn tcp_transfer_stats(
    from: &Netns,
    to: &Netns,
    to_ip: impl Into<IpAddr>,
    port: u16,
    bytes: u64,
) -> Transfer {
    let to_ip: IpAddr = to_ip.into();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60 + bytes / 1_000_000);
    let any: IpAddr = match to_ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let listener = to
        .in_ns(move || TcpListener::bind((any, port)))
        .unwrap_or_else(|e| panic!("bind port {port} in {}: {e}", to.name()));
    let port = listener.local_addr().expect("local_addr").port();
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");

    let give_up = Arc::new(AtomicBool::new(false));
    let give_up_server = Arc::clone(&give_up);
    let server = thread::spawn(move || -> io::Result<(String, u64)> {
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline || give_up_server.load(Ordering::Relaxed) {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "accept timed out"));
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(IO_STALL))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0u64;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            n_total += n as u64;
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "receive deadline"));
            }
        }
        Ok((hex(&hasher.finalize()), n_total))
    });

    let addr = SocketAddr::from((to_ip, port));
    let client = from.in_ns(move || -> io::Result<(String, u64)> {
        let connect_deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= connect_deadline => {
                    return Err(io::Error::new(e.kind(), format!("connect {addr}: {e}")))
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        };
        stream.set_write_timeout(Some(IO_STALL))?;
        let mut gen = Payload::new(0x6f76_6572_6c61_7964);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            gen.fill(&mut buf[..n]);
            stream.write_all(&buf[..n])?;
            hasher.update(&buf[..n]);
            left -= n as u64;
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "send deadline"));
            }
        }
        stream.shutdown(Shutdown::Write)?;
        Ok((hex(&hasher.finalize()), bytes))
    });
    let (sent, bytes_sent) = client.unwrap_or_else(|e| {
        give_up.store(true, Ordering::Relaxed);
        panic!("tcp_transfer sender: {e}")
    });
    let server = server.join().expect("server thread panicked");
    let (received, bytes_received) =
        server.unwrap_or_else(|e| panic!("tcp_transfer receiver: {e}"));
    Transfer {
        sent,
        received,
        bytes_sent,
        bytes_received,
        elapsed: start.elapsed(),
    }
}

/// `ping -c count -i interval -W 1` (a burst; root may go below 0.2 s); whether ≥ 1 reply.
pub fn ping_burst(from: &Netns, to: impl Display, count: u32, interval: &str) -> bool {
    from.output(&[
        "ping",
        "-q",
        "-n",
        "-c",
        &count.to_string(),
        "-W",
        "1",
        "-i",
        interval,
        &to.to_string(),
    ])
    .status
    .success()
}

/// One ping with a reply wait of `wait_secs` seconds: the "first packet" probe.
pub fn ping_once(from: &Netns, to: impl Display, wait_secs: u32) -> bool {
    from.output(&[
        "ping",
        "-q",
        "-n",
        "-c",
        "1",
        "-W",
        &wait_secs.to_string(),
        &to.to_string(),
    ])
    .status
    .success()
}
