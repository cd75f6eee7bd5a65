//! Scale (issue 22): 100 000 leases in etcd, then a node starts. It must be ready within
//! 5 s, stay under 300 MiB of RSS, reach a node started after it within 5 s, and use at
//! most 1 % of a CPU while idle. The leases are written with etcd's JSON gateway
//! (`/v3/kv/txn`, 128 puts per transaction, etcd's default limit); a thousand of them
//! share each PublicIP (the case that made building the sender index quadratic). The
//! figures measured are printed (`--nocapture`) and recorded in docs/reliability.md.

mod common;

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const LEASES: u32 = 100_000;
/// etcd's default `--max-txn-ops`.
const PER_TXN: u32 = 128;

/// Standard base64 (the gateway's encoding of keys and values).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Lease `i`: the `i`-th /26 of 10.0.0.0/8 after the first, held by one of 100 PublicIPs.
fn fake_lease(i: u32) -> (String, String) {
    let subnet = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i + 1) * 64);
    let ip = Ipv4Addr::new(172, 20, (i % 100) as u8, 1);
    (
        format!("{ETCD_PREFIX}/subnets/{subnet}-26"),
        format!(r#"{{"PublicIP":"{ip}"}}"#),
    )
}

/// Writes the fake leases through the JSON gateway, from `from`'s namespace.
fn write_leases(from: &Netns, etcd: &Etcd) {
    let url = format!("{}/v3/kv/txn", etcd.endpoint());
    for first in (0..LEASES).step_by(PER_TXN as usize) {
        let puts: Vec<String> = (first..(first + PER_TXN).min(LEASES))
            .map(|i| {
                let (k, v) = fake_lease(i);
                format!(
                    r#"{{"request_put":{{"key":"{}","value":"{}"}}}}"#,
                    base64(k.as_bytes()),
                    base64(v.as_bytes())
                )
            })
            .collect();
        let body = format!(r#"{{"success":[{}]}}"#, puts.join(","));
        let out = run_cmd(
            from.command("curl")
                .args([
                    "-sS",
                    "--fail",
                    "--max-time",
                    "10",
                    "-X",
                    "POST",
                    &url,
                    "-d",
                ])
                .arg(&body),
        )
        .unwrap_or_else(|e| panic!("writing leases from {first}: {e}"));
        assert!(!out.contains("\"error\""), "txn refused: {out}");
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// VmRSS of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

#[test]
fn netns_hundred_thousand_leases() {
    if skip_unless_root("netns_hundred_thousand_leases") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    etcd.put_network_config(ETCD_PREFIX, "10.0.0.0/8", 26, "udp");
    let t = Instant::now();
    write_leases(topo.host(0), &etcd);
    println!("{LEASES} leases written in {:?}", t.elapsed());

    let t = Instant::now();
    let mut d1 = Overlayd::spawn(topo.host(0), overlayd_args("udp", &etcd));
    let _s1 = d1.wait_ready(Duration::from_secs(60));
    let ready = t.elapsed();
    let pid = d1.pid().expect("running");
    thread::sleep(Duration::from_secs(2));
    let rss = rss_mib(pid);
    println!("ready after {ready:?}, RSS {rss:.0} MiB");

    let mut d2 = Overlayd::spawn(topo.host(1), overlayd_args("udp", &etcd));
    let s2 = d2.wait_ready(Duration::from_secs(60));
    let t = Instant::now();
    let reached = ping_until(topo.host(0), overlay_ip_of(&s2), Duration::from_secs(10));
    let reach = t.elapsed();
    println!("new node reachable {reach:?} after its readiness: {reached}");

    let cpu0 = cpu_secs(pid);
    thread::sleep(Duration::from_secs(10));
    let idle = (cpu_secs(pid) - cpu0) / 10.0 * 100.0;
    println!("idle CPU {idle:.2} % over 10 s");

    assert!(ready <= Duration::from_secs(5), "ready after {ready:?}");
    assert!(rss <= 300.0, "RSS {rss:.0} MiB");
    assert!(
        reached && reach <= Duration::from_secs(5),
        "reach {reach:?}"
    );
    assert!(idle <= 1.0, "idle CPU {idle:.2} %");
    assert!(d1.is_running() && d2.is_running());
}
