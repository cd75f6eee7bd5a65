//! End-to-end test of the per-destination transmit offload fallback
//! (`src/datapath/fallback.rs`): when the kernel refuses a UDP GSO send to one peer, that
//! peer's traffic goes the copying way (and still arrives) while every other peer keeps the
//! offload; the refusal is counted in `overlayd_offload_fallbacks_total`.
//!
//! The refusal is made the way it happens in the field: h1's route to h2 gets a locked MTU
//! (1000) below the ~1500-byte datagrams of the overlay. The kernel then refuses a GSO send
//! to h2 (`EMSGSIZE` on this kernel, `EINVAL` on older ones: segment plus headers above the
//! path MTU) while a plain datagram (DF clear, as the kernel's VXLAN sends) is fragmented
//! and delivered. h3 keeps the device MTU. Before `fallback::gso_refused` knew EMSGSIZE,
//! the refusal was counted as `io_error` and TCP to h2 stalled (fallbacks 0, 2 656 drops).

mod common;

use std::time::Duration;

use common::*;

const MB: u64 = 1_000_000;

/// Packets per send call of `d` over `f` (what a transfer costs in syscalls; for the log).
fn per_send(d: &Overlayd, f: impl FnOnce()) -> f64 {
    let tx = ["direction=\"tx\""];
    let (p0, s0) = (
        d.metric("overlayd_packets_total", &tx),
        d.metric("overlayd_send_calls_total", &[]),
    );
    f();
    let (p1, s1) = (
        d.metric("overlayd_packets_total", &tx),
        d.metric("overlayd_send_calls_total", &[]),
    );
    (p1 - p0) / (s1 - s0).max(1.0)
}

#[test]
fn netns_offload_fallback_per_destination() {
    if skip_unless_root("netns_offload_fallback_per_destination") {
        return;
    }
    let c = Cluster::builder()
        .hosts(3)
        .backend("vxlan")
        .extra(
            0,
            &["--tunnel-gso", "off", "--metrics-addr", "127.0.0.1:9109"],
        )
        .ready(Duration::from_secs(30))
        .start();
    let (h1, h2, h3) = (c.host(0), c.host(1), c.host(2));
    let d1 = &c.daemons[0];
    if skip_unless(
        d1.metric("overlayd_offload_enabled", &["offload=\"udp_gso\""]) == 1.0,
        "netns_offload_fallback_per_destination",
        "UDP GSO is not available on this kernel: there is no offload to fall back from",
    ) {
        return;
    }
    let (ip2, ip3) = (overlay_ip_of(&c.subnets[1]), overlay_ip_of(&c.subnets[2]));
    assert!(ping_until(h1, ip2, Duration::from_secs(10)), "h1 -> h2");
    assert!(ping_until(h1, ip3, Duration::from_secs(10)), "h1 -> h3");
    let fallbacks = || d1.metric("overlayd_offload_fallbacks_total", &["backend=\"vxlan\""]);
    let transfer = |to: &Host, ip| {
        let (sent, got) = tcp_transfer(h1, to, ip, 0, 20 * MB);
        assert_eq!(sent, got, "20 MB h1 -> {}", to.name());
    };

    let f0 = fallbacks();
    let before = per_send(d1, || transfer(h3, ip3));
    h1.ip(&format!("route add {}/32 dev eth0 mtu lock 1000", h2.ip));
    // One packet too big for the path: sent plainly (no offload), fragmented by the kernel.
    let big = h1.try_run(&[
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        "-s",
        "1300",
        "-M",
        "dont",
        &ip2.to_string(),
    ]);
    assert!(
        big.is_ok(),
        "1300-byte pings h1 -> h2 over the 1000-byte path: {big:?}"
    );
    let to_h2 = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        per_send(d1, || transfer(h2, ip2))
    }));
    let f1 = fallbacks();
    let to_h2 = to_h2.unwrap_or_else(|_| {
        panic!(
            "TCP h1 -> h2 over the 1000-byte path failed; fallbacks {f0} -> {f1}, drops: {:?}",
            d1.scrape()
                .lines()
                .filter(|l| l.starts_with("overlayd_drops_total") && !l.ends_with(" 0"))
                .collect::<Vec<_>>()
        )
    });
    let to_h3 = per_send(d1, || transfer(h3, ip3));
    let f2 = fallbacks();
    println!(
        "packets per send: h3 {before:.1} before, h2 {to_h2:.1} (path MTU 1000), h3 {to_h3:.1} after; \
         fallbacks {f0} -> {f1} (h2) -> {f2} (h3)"
    );
    assert!(f1 > f0, "the refused GSO send to h2 must be counted");
    // Packets per send call are printed, not asserted: the copying way batches datagrams
    // with sendmmsg too, so the ratio does not tell the two ways apart.
    assert_eq!(f2, f1, "h3 was never refused: no fallback for it");
}
