//! The data plane on a wire that behaves like real NICs: the switch ports that send to the
//! hosts segment every super-packet (no TSO, no UDP-tunnel or UDP segmentation offload, no
//! checksum offload), so the underlay carries MTU-sized frames only, and each host's eth0 runs
//! NAPI GRO, which rebuilds what it can, as a NIC driver's GRO does. This is the
//! "segmenting" wire of `WIRE=segmenting scripts/bench-e2e.sh`.
//!
//! On the default veth switch a 64 KiB super-packet crosses whole, so nothing there proves
//! that overlayd copes with a wire of 1 500-byte frames. Here transfers must stay
//! byte-identical both ways, the receiving eth0 must have seen MTU-sized frames (the wire
//! model took effect), and the receiving overlay device must have been handed super-packets
//! (the receive side coalesced what the wire segmented).
//!
//! The "partial" wire (`WIRE=partial`) is the same with checksum offload left on (`tx on`):
//! the frames reach the hosts with partial checksums. Segments that a tunnel-GSO write was
//! cut into there keep the kernel's `encapsulation` mark across the veth, and Linux's UDP GRO
//! refuses any such skb (locally encapsulated), so every datagram reaches overlayd alone;
//! its receive side must still hand the device super-packets (issue 21). The tests also
//! read h2's counters to pin that cause down: on the partial wire with tunnel GSO nearly
//! every data segment came alone with a partial checksum
//! (`overlayd_rx_unmerged_partial_total`), while on the segmenting wire, and on the partial
//! wire when h1 segments in userspace (`--tunnel-gso off`: plain UDP GSO, no mark), the
//! kernel merged runs (`overlayd_packets_total` over `overlayd_receive_messages_total`).

mod common;

use std::time::Duration;

use common::*;

const MB: u64 = 1_000_000;

/// The switch-port offloads a NIC-like wire lacks (as `scripts/lib/topology.sh` `topo_wire`).
const PORT_OFF: &[&str] = &[
    "tx",
    "tso",
    "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation",
    "tx-udp-segmentation",
    "tx-gso-list",
];

/// Packets and bytes received on `dev` in `ns` (`ip -s -j link`).
fn rx_stats(ns: &Netns, dev: &str) -> (u64, u64) {
    let out = ns.run(&["ip", "-s", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j prints JSON");
    let rx = &v[0]["stats64"]["rx"];
    let n = |k: &str| {
        rx[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no rx {k} in {out}"))
    };
    (n("packets"), n("bytes"))
}

/// Turns the switch into a NIC-like segmenting wire, with checksum offload kept on its ports
/// when `partial`; `None` when ethtool is missing or the kernel refuses a feature (the caller
/// then skips).
fn make_segmenting(topo: &Topology, partial: bool) -> Option<()> {
    for h in &topo.hosts {
        let mut args = vec!["ethtool", "-K", h.port.as_str()];
        for f in PORT_OFF.iter().filter(|f| !partial || **f != "tx") {
            args.extend([*f, "off"]);
        }
        topo.switch.try_run(&args).ok()?;
        h.try_run(&["ethtool", "-K", "eth0", "gro", "off"]).ok()?;
        h.try_run(&["ethtool", "-K", "eth0", "gro", "on"]).ok()?;
    }
    Some(())
}

/// Average bytes per packet between two `rx_stats` readings.
fn avg(before: (u64, u64), after: (u64, u64)) -> u64 {
    (after.1 - before.1) / (after.0 - before.0).max(1)
}

/// h2's receive counters: inner packets, buffers handed over, unmerged partial segments.
fn rx_counters(d: &Overlayd) -> [f64; 3] {
    let text = d.scrape();
    [
        metric_value(&text, "overlayd_packets_total", &["direction=\"rx\""]),
        metric_value(&text, "overlayd_receive_messages_total", &[]),
        metric_value(&text, "overlayd_rx_unmerged_partial_total", &[]),
    ]
}

#[test]
fn netns_segmenting_wire_vxlan() {
    over_the_wire("netns_segmenting_wire_vxlan", false, &[]);
}

#[test]
fn netns_partial_checksum_wire_vxlan() {
    over_the_wire("netns_partial_checksum_wire_vxlan", true, &[]);
}

#[test]
fn netns_partial_checksum_wire_vxlan_userspace_gso() {
    over_the_wire(
        "netns_partial_checksum_wire_vxlan_userspace_gso",
        true,
        &["--tunnel-gso", "off"],
    );
}

/// Two vxlan nodes over the segmenting wire (`partial`: keeping partial checksums), h1 with
/// `h1_flags`: transfers byte-identical both ways, MTU-sized frames on h2's eth0,
/// super-packets into its device, and whether the kernel merged what h2 received.
fn over_the_wire(name: &str, partial: bool, h1_flags: &[&str]) {
    if skip_unless_root(name) {
        return;
    }
    let metrics = ["--metrics-addr", "127.0.0.1:9108"];
    let c = Cluster::builder()
        .hosts(2)
        .backend("vxlan")
        .extra(0, h1_flags)
        .extra(1, &metrics)
        .start();
    if make_segmenting(&c.topo, partial).is_none() {
        skip(
            name,
            "ethtool missing or the veth refuses the offload settings",
        );
        return;
    }
    let (topo, ips): (&Topology, Vec<_>) = (
        &c.topo,
        c.subnets.iter().map(|s| overlay_ip_of(s)).collect(),
    );
    assert!(
        ping_until(topo.host(0), ips[1], Duration::from_secs(15)),
        "ping over the segmenting wire"
    );
    let (wire0, dev0) = (
        rx_stats(topo.host(1), "eth0"),
        rx_stats(topo.host(1), "flannel.1"),
    );
    let before = rx_counters(&c.daemons[1]);
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), ips[1], 0, 40 * MB);
    assert_eq!(
        sent, got,
        "40 MB h1 -> h2 byte-identical over the segmenting wire"
    );
    let after = rx_counters(&c.daemons[1]);
    let [packets, messages, unmerged] = [0, 1, 2].map(|i| after[i] - before[i]);
    let (wire1, dev1) = (
        rx_stats(topo.host(1), "eth0"),
        rx_stats(topo.host(1), "flannel.1"),
    );
    let (sent, got) = tcp_transfer(topo.host(1), topo.host(0), ips[0], 0, 10 * MB);
    assert_eq!(
        sent, got,
        "10 MB h2 -> h1 byte-identical over the segmenting wire"
    );

    let on_wire = avg(wire0, wire1);
    let delivered = avg(dev0, dev1);
    eprintln!("h2: {on_wire} bytes per frame on eth0, {delivered} bytes per packet into flannel.1");
    // Data frames are 1 500 bytes and ACKs are small: an average at or below a frame proves
    // no super-packet crossed the wire whole.
    assert!(
        on_wire <= 1514,
        "the wire carried super-packets ({on_wire} bytes per frame): the segmenting wire did not take effect"
    );
    // overlayd handed the kernel super-packets: at least four MSS-sized segments per write.
    assert!(
        delivered >= 4 * 1400,
        "overlayd delivered {delivered} bytes per packet into the TUN: the receive side did not coalesce"
    );
    check_kernel_merging(partial && h1_flags.is_empty(), packets, messages, unmerged);
}

/// What h2 received in the 40 MB transfer (~28 600 data segments): with `locally_marked`
/// (the partial wire behind tunnel GSO) nearly all came alone with partial checksums;
/// otherwise the kernel's UDP GRO merged runs of them and none came unmerged.
fn check_kernel_merging(locally_marked: bool, packets: f64, messages: f64, unmerged: f64) {
    let per_message = packets / messages.max(1.0);
    eprintln!(
        "h2: {packets} packets in {messages} received buffers ({per_message:.1} each), \
         {unmerged} full-size segments alone with partial checksums"
    );
    assert!(
        packets >= 20_000.0,
        "h2 counted {packets} packets for 40 MB"
    );
    if locally_marked {
        assert!(
            unmerged >= 0.8 * packets,
            "only {unmerged} of {packets} segments came alone with partial checksums: \
             the kernel merged segments it marked as locally encapsulated"
        );
    } else {
        assert_eq!(unmerged, 0.0, "partial segments came unmerged");
        assert!(
            per_message >= 4.0,
            "{per_message:.1} packets per received buffer: the kernel's UDP GRO did not merge"
        );
    }
}

/// An L2 vxlan network over the partial wire: 20 MB from a container on h1 to one on h2
/// byte-identical; the segments came alone with partial checksums (counted per network), and
/// h2's overlayd still wrote super-frames into its port, merged across receive batches as the
/// routed plane merges them (the L2 receive loop used to flush after each batch of 8
/// datagrams: at most 8 segments, ~11 KB, per write).
#[test]
fn netns_partial_checksum_wire_l2_vxlan() {
    let name = "netns_partial_checksum_wire_l2_vxlan";
    if skip_unless_root(name) {
        return;
    }
    // Kept whole: its fields (daemons, containers, etcd, hosts) live to the end of the test.
    let pair = L2Pair::start("vxlan", &[]);
    let (h2, d2, c1, c2) = (pair.topo.host(1), &pair.d2, &pair.c1, &pair.c2);
    if make_segmenting(&pair.topo, true).is_none() {
        skip(
            name,
            "ethtool missing or the veth refuses the offload settings",
        );
        return;
    }
    assert!(
        ping_until(c1, c2.ip, Duration::from_secs(20)),
        "c1 pings c2 over the partial wire"
    );
    let net = ["network=\"net\""];
    let (port0, unmerged0) = (
        rx_stats(h2, "l2v100"),
        d2.metric("overlayd_l2_rx_unmerged_partial_total", &net),
    );
    let (sent, got) = tcp_transfer(c1, c2, c2.ip, 0, 20 * MB);
    assert_eq!(
        sent, got,
        "20 MB c1 -> c2 byte-identical over the partial wire"
    );
    let per_write = avg(port0, rx_stats(h2, "l2v100"));
    let unmerged = d2.metric("overlayd_l2_rx_unmerged_partial_total", &net) - unmerged0;
    eprintln!("h2: {per_write} bytes per write into l2v100, {unmerged} segments came alone");
    // ~14 300 full-size segments carry 20 MB.
    assert!(
        unmerged >= 10_000.0,
        "only {unmerged} segments counted as alone with partial checksums"
    );
    assert!(
        per_write >= 16 * 1400,
        "overlayd wrote {per_write} bytes per frame into the port: segments were not merged across receive batches"
    );
}
