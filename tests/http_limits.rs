//! The metrics/health listener under a flood of idle connections: 20 000 connections to
//! `--metrics-addr`, each holding half a request, do not stop forwarding or `/healthz`, and
//! the daemon's descriptors fall back once the header-read timeout has closed them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const READY: Duration = Duration::from_secs(30);
const METRICS: &str = "127.0.0.1:9108";
const FLOOD: usize = 20_000;
/// The daemon's header-read timeout (src/telemetry.rs `HEADER_TIMEOUT`) plus a margin.
const DRAIN: Duration = Duration::from_secs(5 + 5);

/// Open descriptors of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The "Max open files" limit of `pid`: column 3 the soft one, 4 the hard one.
fn nofile_column(pid: u32, column: usize) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(column))
        .and_then(|v| v.parse().ok())
        .expect("Max open files")
}

fn nofile(pid: u32) -> u64 {
    nofile_column(pid, 3)
}

fn nofile_hard(pid: u32) -> u64 {
    nofile_column(pid, 4)
}

/// Opens up to `n` connections to `addr` (from the calling thread's namespace), each with
/// half a request sent; stops at `deadline`. Refused or reset ones are not kept.
fn flood(addr: SocketAddr, n: usize, deadline: Instant) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if Instant::now() >= deadline {
            break;
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: overlayd\r\n");
            out.push(s);
        }
    }
    out
}

/// GET /healthz in `ns`: (status line, time taken), bounded by 3 s.
fn healthz(ns: &Netns, addr: SocketAddr) -> (String, Duration) {
    ns.in_ns(move || {
        let t = Instant::now();
        let answer = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: overlayd\r\nConnection: close\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body.lines().next().unwrap_or("").to_string())
        })();
        (
            answer.unwrap_or_else(|e| format!("error: {e}")),
            t.elapsed(),
        )
    })
}

#[test]
fn netns_idle_connection_flood() {
    if skip_unless_root("netns_idle_connection_flood") {
        return;
    }
    // Room for the flood's client sockets in this process: its soft limit raised to 65 536,
    // or to its hard limit where raising that needs a privilege this host does not give.
    let me = std::process::id();
    let hard = nofile_hard(me);
    let want = hard.max(65_536);
    for lim in [want, hard] {
        let ok = std::process::Command::new("prlimit")
            .args(["--pid", &me.to_string(), &format!("--nofile={lim}:{lim}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
    }
    let room = nofile(me) as usize;
    let n = FLOOD.min(room.saturating_sub(300));
    if n < FLOOD {
        println!("RLIMIT_NOFILE {room} (hard limit, cannot be raised here): {n} connections, not {FLOOD}");
    }
    let mut topo = Topology::new(2);
    // 20 000 client ports fit the default ephemeral range (32768-60999).
    let etcd = topo.start_etcd();
    let mut ds: Vec<Overlayd> = (0..2)
        .map(|i| {
            let mut a = overlayd_args("vxlan", &etcd);
            if i == 0 {
                a.extend(["--metrics-addr", METRICS].map(String::from));
            }
            Overlayd::spawn(topo.host(i), a)
        })
        .collect();
    let ips: Vec<_> = ds
        .iter_mut()
        .map(|d| overlay_ip_of(&d.wait_ready(READY)))
        .collect();
    assert!(
        ping_until(topo.host(0), ips[1], Duration::from_secs(15)),
        "ping before"
    );
    let pid = ds[0].pid().expect("pid");
    let (base, limit) = (fds(pid), nofile(pid));
    println!("daemon: {base} descriptors, RLIMIT_NOFILE {limit} (connection cap 256)");
    assert!(
        limit as usize > base + 256 + 16,
        "the cap fits the daemon's limit"
    );
    let addr: SocketAddr = METRICS.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let conns = topo.host(0).in_ns(move || flood(addr, n, deadline));
    let peak = fds(pid);
    println!(
        "{} of {n} connections opened; daemon descriptors {peak}",
        conns.len()
    );
    assert!(
        conns.len() >= n / 2,
        "the flood got through: {}",
        conns.len()
    );
    assert!(
        peak <= base + 256 + 16,
        "at most the cap held open: {peak} (base {base})"
    );
    assert!(
        ping_until(topo.host(0), ips[1], Duration::from_secs(5)),
        "forwarding goes on during the flood"
    );
    let (line, took) = healthz(topo.host(0), addr);
    println!("/healthz during the flood: {line:?} in {took:?}");
    assert!(line.contains("200"), "/healthz answers: {line:?}");
    assert!(
        took <= Duration::from_secs(1),
        "/healthz within 1 s: {took:?}"
    );
    let shed = ds[0].metric("overlayd_http_connections_shed_total", &[]);
    assert!(shed > 0.0, "connections over the cap counted: {shed}");
    // Still held by the client, the idle ones are closed by the header-read timeout.
    let t = Instant::now();
    while fds(pid) > base + 4 && t.elapsed() < DRAIN {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = fds(pid);
    println!("daemon descriptors {after} after {:?}", t.elapsed());
    assert!(
        after <= base + 4,
        "descriptors fall back: {after} (base {base})"
    );
    drop(conns);
    assert!(ds[0].is_running() && ds[1].is_running());
}
