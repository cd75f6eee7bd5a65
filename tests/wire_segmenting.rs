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

/// Turns the switch into a NIC-like segmenting wire; `None` when ethtool is missing or the
/// kernel refuses a feature (the caller then skips).
fn make_segmenting(topo: &Topology) -> Option<()> {
    for h in &topo.hosts {
        let mut args = vec!["ethtool", "-K", h.port.as_str()];
        for f in PORT_OFF {
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

#[test]
fn netns_segmenting_wire_vxlan() {
    if skip_unless_root("netns_segmenting_wire_vxlan") {
        return;
    }
    let c = Cluster::builder().hosts(2).backend("vxlan").start();
    if make_segmenting(&c.topo).is_none() {
        skip(
            "netns_segmenting_wire_vxlan",
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
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), ips[1], 0, 40 * MB);
    assert_eq!(
        sent, got,
        "40 MB h1 -> h2 byte-identical over the segmenting wire"
    );
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
}
