//! The adaptive busy-poll (`--busy-poll-us auto`) end to end: pings and a bulk transfer
//! cross intact, and once traffic stops the data-plane workers neither spin (no CPU) nor
//! wake (no periodic timeout: only the stop eventfd ends their wait).

mod common;

use std::time::Duration;

use common::*;

const MB: u64 = 1_000_000;

/// CPU clock ticks and blocking waits of `pid`'s data-plane worker threads (`dp<i>`).
fn workers(pid: u32) -> (u64, u64) {
    thread_load(pid, |comm| comm.starts_with("dp"))
}

#[test]
fn netns_adaptive_busy_poll() {
    if skip_unless_root("netns_adaptive_busy_poll") {
        return;
    }
    let auto = ["--busy-poll-us", "auto"];
    let c = Cluster::builder()
        .backend("vxlan")
        .extra(0, &auto)
        .extra(1, &auto)
        .start();
    let to = overlay_ip_of(&c.subnets[1]);
    assert!(ping_until(c.host(0), to, Duration::from_secs(15)));
    let pid = c.daemons[0].pid().expect("h1's daemon runs");
    let (_, w0) = workers(pid);
    assert!(ping(c.host(0), to, 20), "20 pings with auto busy-poll");
    let (_, w1) = workers(pid);
    eprintln!("h1's workers blocked {} times over 20 pings", w1 - w0);
    let (sent, got) = tcp_transfer(c.host(0), c.host(1), to, 0, 20 * MB);
    assert_eq!(sent, got, "20 MB h1 -> h2 must arrive byte-identical");
    // Idle now: over 2 s the workers neither spin nor wake (a 100 ms timeout would wake
    // each of them 20 times).
    std::thread::sleep(Duration::from_millis(300));
    let (t0, w0) = workers(pid);
    std::thread::sleep(Duration::from_secs(2));
    let (t1, w1) = workers(pid);
    assert!(
        t1 - t0 <= 10,
        "idle workers used {} ticks (1/100 s) in 2 s: they spin",
        t1 - t0
    );
    assert!(w1 - w0 <= 4, "idle workers woke {} times in 2 s", w1 - w0);
}
