//! End-to-end tests of overlayd's L2 mode (issue 6): Ethernet segments stretched across hosts
//! over VXLAN or GRE, with per-network isolation by VNI, MAC learning, interop with the kernel's
//! VXLAN driver, and the VNI/VID ranges. Real etcd, real TAP devices and bridges, "containers"
//! (namespaces on a host bridge) exchanging real frames; see `tests/common` for the harness.
//!
//! Layout used throughout: hosts `h1..hN` on the underlay switch (192.168.77.N), etcd at .250;
//! in each host a Linux bridge with overlayd's TAP (`l2v<VNI>` / `l2g<VNI>` / `l2trunk`) and
//! one veth per container.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use common::start_l2_daemon as start;
use common::*;

const READY: Duration = Duration::from_secs(30);
const TAP_WAIT: Duration = Duration::from_secs(20);
const REACH: Duration = Duration::from_secs(20);
const MB: u64 = 1_000_000;
const P: &str = ETCD_PREFIX;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn net_label(network: &str) -> String {
    format!("network=\"{network}\"")
}

/// `overlayd_l2_rx_frames_total{network}` of a daemon.
fn rx_frames(d: &Overlayd, network: &str) -> f64 {
    d.metric("overlayd_l2_rx_frames_total", &[&net_label(network)])
}

fn wait_members(etcd: &Etcd, network: &str, want: &[Ipv4Addr]) {
    assert!(
        etcd.wait_l2_members(P, network, want, Duration::from_secs(20)),
        "members of {network}: want {want:?}, etcd has {:?}",
        etcd.l2_members(P, network)
    );
}

/// Three hosts on one L2 segment: each with bridge `brl2` and a daemon serving `net@brl2`
/// (network `net`, from `json`), container c1 (10.50.0.1) on h1, c2 (10.50.0.2) on h2 and
/// nobody on h3, every host a member. Fields drop in the order they are declared: the
/// daemons first, the hosts last.
struct Segment3 {
    d1: Overlayd,
    d2: Overlayd,
    d3: Overlayd,
    c1: Container,
    c2: Container,
    /// Held so etcd outlives the daemons.
    _etcd: Etcd,
    topo: Topology,
}

impl Segment3 {
    fn new(json: &str) -> Segment3 {
        let mut topo = Topology::new(3);
        let etcd = topo.start_etcd();
        etcd.put_l2_network_json(P, "net", json);
        let (h1, h2, h3) = (topo.host(0), topo.host(1), topo.host(2));
        for h in [h1, h2, h3] {
            add_bridge(h, "brl2", false);
        }
        let c1 = Container::attach(h1, "brl2", "c1", "10.50.0.1/24", &l2_mac(0x50, 1, 1));
        let c2 = Container::attach(h2, "brl2", "c2", "10.50.0.2/24", &l2_mac(0x50, 2, 1));
        let flags = ["--l2", "net@brl2"];
        let d1 = start(h1, &etcd, &flags, &["l2v100"]);
        let d2 = start(h2, &etcd, &flags, &["l2v100"]);
        let d3 = start(h3, &etcd, &flags, &["l2v100"]);
        wait_members(&etcd, "net", &[h1.ip, h2.ip, h3.ip]);
        Segment3 {
            d1,
            d2,
            d3,
            c1,
            c2,
            _etcd: etcd,
            topo,
        }
    }
}

/// Pings a→b and b→a (each until a reply or [`REACH`]).
fn ping_both(a: &Container, b: &Container, what: &str) {
    assert!(
        ping_until(a, b.ip, REACH),
        "{what}: {} ({}) cannot ping {}",
        a.name(),
        a.ip,
        b.ip
    );
    assert!(
        ping_until(b, a.ip, REACH),
        "{what}: {} ({}) cannot ping {}",
        b.name(),
        b.ip,
        a.ip
    );
}

/// A few MB each way between two containers, byte-identical.
fn tcp_both(a: &Container, b: &Container, bytes: u64, what: &str) {
    let (sent, got) = tcp_transfer(a, b, b.ip, 0, bytes);
    assert_eq!(sent, got, "{what}: {bytes} bytes {} -> {}", a.ip, b.ip);
    let (sent, got) = tcp_transfer(b, a, a.ip, 0, bytes);
    assert_eq!(sent, got, "{what}: {bytes} bytes {} -> {}", b.ip, a.ip);
}

fn exited_nonzero(st: Option<ExitStatus>) -> bool {
    st.is_some_and(|s| !s.success())
}

// ---------------------------------------------------------------------------------------------
// Harness baseline: two kernel L2 VXLAN VTEPs (no overlayd)
// ---------------------------------------------------------------------------------------------

/// The L2 harness itself: containers on bridges joined by kernel VXLAN devices with flood
/// entries reach each other, and a capture sees their frames. If this fails, the L2 tests below
/// say nothing about overlayd.
#[test]
fn netns_l2_harness_kernel_pair() {
    if skip_unless_root("netns_l2_harness_kernel_pair") {
        return;
    }
    let topo = Topology::new(2);
    let (h1, h2) = (topo.host(0), topo.host(1));
    add_bridge(h1, "brl2", false);
    add_bridge(h2, "brl2", false);
    let k1 = KernelL2Vxlan::setup(h1, h1.ip, 100, "brl2");
    let k2 = KernelL2Vxlan::setup(h2, h2.ip, 100, "brl2");
    k1.add_peer(h2.ip);
    k2.add_peer(h1.ip);
    let c1 = Container::attach(h1, "brl2", "c1", "10.50.0.1/24", &l2_mac(0x50, 1, 1));
    let c2 = Container::attach(h2, "brl2", "c2", "10.50.0.2/24", &l2_mac(0x50, 2, 1));
    let cap = capture_eth0(h2, &format!("udp dst port {L2_VXLAN_PORT}"), 100);
    ping_both(&c1, &c2, "kernel pair");
    assert_eq!(c1.neigh_mac(c2.ip).as_deref(), Some(c2.mac.as_str()));
    let frames = cap.finish(Duration::from_millis(200));
    assert!(
        !frames.is_empty(),
        "the capture on h2's underlay must see VXLAN datagrams"
    );
    let (sent, got) = tcp_transfer(&c1, &c2, c2.ip, 0, 2 * MB);
    assert_eq!(sent, got);
    // Moving a container keeps its address and MAC.
    let mut c1 = c1;
    c1.move_to(h2, "brl2");
    assert!(
        ping_until(&c1, c2.ip, REACH),
        "moved container, same bridge"
    );
}

// ---------------------------------------------------------------------------------------------
// a. One subnet across hosts
// ---------------------------------------------------------------------------------------------

fn same_subnet(backend: &str) {
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    etcd.put_l2_network(P, "net", 100, backend);
    let (h1, h2) = (topo.host(0), topo.host(1));
    add_bridge(h1, "brl2", false);
    add_bridge(h2, "brl2", false);
    let c1 = Container::attach(h1, "brl2", "c1", "10.50.0.1/24", &l2_mac(0x50, 1, 1));
    let c2 = Container::attach(h2, "brl2", "c2", "10.50.0.2/24", &l2_mac(0x50, 2, 1));
    let (tap, mtu) = if backend == "gre" {
        ("l2g100", UNDERLAY_MTU - 42)
    } else {
        ("l2v100", UNDERLAY_MTU - 50)
    };
    let flags = ["--l2", "net@brl2"];
    let mut d1 = start(h1, &etcd, &flags, &[tap]);
    // h2 gets its network from the environment instead of --l2.
    let mut d2 = Overlayd::spawn_wrapped(
        h2,
        &["env", "OVERLAYD_L2=net@brl2"],
        overlayd_l2_args(&etcd, &[]),
    );
    d2.wait_ready(READY);
    assert!(
        wait_link(h2, tap, TAP_WAIT),
        "OVERLAYD_L2=net@brl2: no {tap}; log:\n{}",
        tail(d2.log_path(), 30)
    );
    for h in [h1, h2] {
        assert_eq!(link_mtu(h, tap), Some(mtu), "{backend}: MTU of {tap}");
        assert_eq!(
            link_master(h, tap).as_deref(),
            Some("brl2"),
            "{backend}: {tap} enslaved to brl2"
        );
    }
    wait_members(&etcd, "net", &[h1.ip, h2.ip]);

    ping_both(&c1, &c2, backend);
    assert_eq!(
        c1.neigh_mac(c2.ip).as_deref(),
        Some(c2.mac.as_str()),
        "{backend}: one Ethernet segment: c1 resolves c2 to c2's own MAC"
    );
    tcp_both(&c1, &c2, 5 * MB, backend);

    assert_full_size_frames(&c1, &c2, mtu, backend);

    assert_l2_counters(&d1, backend);

    assert_tap_repaired(h1, &d1, &c1, &c2, tap, backend);

    // Its own member key deleted by hand: re-announced.
    assert_eq!(etcd.del(&l2_member_key(P, "net", h1.ip)), 1);
    wait_members(&etcd, "net", &[h1.ip, h2.ip]);

    // Clean shutdown: the TAP goes, the member key goes.
    let st = d1.terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{backend}: clean exit");
    assert!(!h1.has_link(tap), "{backend}: {tap} removed on exit");
    wait_members(&etcd, "net", &[h2.ip]);
    assert!(d2.is_running());
    let (l, deadline) = (net_label("net"), Instant::now() + Duration::from_secs(10));
    while d2.metric("overlayd_l2_members", &[&l]) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "{backend}: h2's members gauge must drop to 0 once h1 has left"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Full-size frames: containers at the TAP's MTU, DF pings of exactly that size both ways
/// (the encapsulated datagram is then exactly the underlay's 1500 bytes).
fn assert_full_size_frames(c1: &Container, c2: &Container, mtu: u32, backend: &str) {
    c1.set_mtu(mtu);
    c2.set_mtu(mtu);
    let size = (mtu - 28).to_string();
    for (a, b) in [(c1, c2), (c2, c1)] {
        let out = a.output(&[
            "ping",
            "-q",
            "-n",
            "-M",
            "do",
            "-s",
            &size,
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &b.ip.to_string(),
        ]);
        assert!(
            out.status.success(),
            "{backend}: {mtu}-byte DF packets {} -> {}: {}{}",
            a.ip,
            b.ip,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// h1's L2 counters after the traffic: frames both ways, flooding, one member, learned
/// entries, and super-frames through the tunnel-GSO TAP for vxlan only.
fn assert_l2_counters(d1: &Overlayd, backend: &str) {
    let m = d1.scrape();
    let l = net_label("net");
    assert!(
        metric_value(&m, "overlayd_l2_rx_frames_total", &[&l]) > 0.0,
        "{backend}: rx counter; metrics:\n{m}"
    );
    assert!(metric_value(&m, "overlayd_l2_tx_frames_total", &[&l, "kind=\"unicast\""]) > 0.0);
    assert!(metric_value(&m, "overlayd_l2_tx_frames_total", &[&l, "kind=\"flood\""]) > 0.0);
    assert_eq!(metric_value(&m, "overlayd_l2_members", &[&l]), 1.0);
    assert!(metric_value(&m, "overlayd_l2_fdb_entries", &[&l]) >= 1.0);
    // The 5 MB TCP super-frames: vxlan hands them whole to the kernel (tunnel GSO, on by
    // default where the kernel has it, as here); gre cannot.
    let tunnel = metric_value(&m, "overlayd_l2_tunnel_gso_writes_total", &[&l]);
    if backend == "vxlan" {
        assert!(
            tunnel > 10.0,
            "{backend}: super-frames through the tunnel-GSO TAP: {tunnel}"
        );
    } else {
        assert_eq!(tunnel, 0.0, "{backend}: no tunnel GSO for GRE");
    }
}

/// The TAP deleted under the daemon: recreated on the bridge (counted as a repair), what was
/// learned kept.
fn assert_tap_repaired(
    h1: &Host,
    d1: &Overlayd,
    c1: &Container,
    c2: &Container,
    tap: &str,
    backend: &str,
) {
    let repairs0 = d1.metric("overlayd_device_repairs_total", &[]);
    h1.ip(&format!("link del {tap}"));
    let t = Instant::now();
    let deadline = t + Duration::from_secs(6);
    while link_master(h1, tap).as_deref() != Some("brl2") {
        assert!(
            Instant::now() < deadline,
            "{backend}: {tap} deleted by hand must come back on brl2 (docs: within 2 s); log:\n{}",
            tail(d1.log_path(), 20)
        );
        thread::sleep(Duration::from_millis(50));
    }
    println!("{backend}: {tap} back on brl2 after {:?}", t.elapsed());
    assert!(
        ping_until(c1, c2.ip, Duration::from_secs(5)),
        "{backend}: c1 -> c2 over the recreated {tap}"
    );
    assert!(
        d1.metric("overlayd_device_repairs_total", &[]) > repairs0,
        "{backend}: the repair must be counted in overlayd_device_repairs_total"
    );
}

#[test]
fn netns_l2_same_subnet_vxlan() {
    if skip_unless_root("netns_l2_same_subnet_vxlan") {
        return;
    }
    same_subnet("vxlan");
}

#[test]
fn netns_l2_same_subnet_gre() {
    if skip_unless_root("netns_l2_same_subnet_gre") {
        return;
    }
    same_subnet("gre");
}

// ---------------------------------------------------------------------------------------------
// b. Isolation of tenants with the same addresses
// ---------------------------------------------------------------------------------------------

/// Tenants A (VNI 100) and B (VNI 200) with the same addresses on the same two hosts, one
/// bridge per tenant per host (access ports).
fn isolation_access() {
    let mut topo = Topology::new(3);
    let etcd = topo.start_etcd();
    etcd.put_l2_network(P, "tenant-a", 100, "vxlan");
    etcd.put_l2_network(P, "tenant-b", 200, "vxlan");
    let (h1, h2) = (topo.host(0), topo.host(1));
    let (a_mac1, a_mac2) = (l2_mac(0xaa, 1, 1), l2_mac(0xaa, 2, 1));
    let (b_mac1, b_mac2) = (l2_mac(0xbb, 1, 1), l2_mac(0xbb, 2, 1));
    let (ip1, ip2) = ("192.168.0.1/24", "192.168.0.2/24");

    for h in [h1, h2] {
        add_bridge(h, "bra", false);
        add_bridge(h, "brb", false);
    }
    let a1 = Container::attach(h1, "bra", "a1", ip1, &a_mac1);
    let a2 = Container::attach(h2, "bra", "a2", ip2, &a_mac2);
    let b1 = Container::attach(h1, "brb", "b1", ip1, &b_mac1);
    let b2 = Container::attach(h2, "brb", "b2", ip2, &b_mac2);
    let flags = ["--l2", "tenant-a@bra", "--l2", "tenant-b@brb"];
    let mut d1 = start(h1, &etcd, &flags, &["l2v100", "l2v200"]);
    let mut d2 = start(h2, &etcd, &flags, &["l2v100", "l2v200"]);
    // h3 is a member of tenant A only.
    let h3 = topo.host(2);
    add_bridge(h3, "bra", false);
    let _d3 = start(h3, &etcd, &["--l2", "tenant-a@bra"], &["l2v100"]);
    let what = "access";
    wait_members(&etcd, "tenant-a", &[h1.ip, h2.ip, h3.ip]);
    wait_members(&etcd, "tenant-b", &[h1.ip, h2.ip]);

    // Every frame to or from A's MACs, and any ARP not from B, in B's containers: must stay
    // empty. (Not "everything not from B": the host bridges send IGMP reports of their own.)
    let not_b = format!(
        "ether host {a_mac1} or ether host {a_mac2} or \
         (arp and not ether src {b_mac1} and not ether src {b_mac2})"
    );
    let b_caps: Vec<Capture> = [&b1, &b2]
        .iter()
        .map(|b| Capture::start(b, "eth0", &not_b, 50, Duration::from_secs(90)))
        .collect();

    // A reaches A (and only A: it resolves A's MACs).
    ping_both(&a1, &a2, &format!("{what} tenant A"));
    assert_eq!(
        a1.neigh_mac(a2.ip).as_deref(),
        Some(a_mac2.as_str()),
        "{what}: a1 must resolve 192.168.0.2 to A's container"
    );
    assert_eq!(a2.neigh_mac(a1.ip).as_deref(), Some(a_mac1.as_str()));

    assert_broadcast_stays_in_a(&a1, &a2, &a_mac1, what);

    // B works by itself, with B's MACs.
    ping_both(&b1, &b2, &format!("{what} tenant B"));
    assert_eq!(b1.neigh_mac(b2.ip).as_deref(), Some(b_mac2.as_str()));

    for cap in b_caps {
        let leaked = cap.finish(Duration::from_millis(300));
        assert!(
            leaked.is_empty(),
            "{what}: B's container received frames not from B: {leaked:?}"
        );
    }

    assert_forged_datagrams_refused(&topo, &d2, (&a2, &b2), (&a_mac1, &a_mac2), what);
    assert_runts_counted(&topo, &d2, (&b1, &b2), what);

    assert!(d1.is_running() && d2.is_running());
}

/// A broadcast from A reaches A's other side (positive control: an ARP for an address nobody
/// has, and a broadcast ping).
fn assert_broadcast_stays_in_a(a1: &Container, a2: &Container, a_mac1: &str, what: &str) {
    let a2_arp = capture_eth0(a2, &format!("arp and ether src {a_mac1}"), 20);
    assert!(
        !ping_burst(a1, "192.168.0.99", 3, "0.3"),
        "nobody has 192.168.0.99"
    );
    let _ = a1.output(&[
        "ping",
        "-b",
        "-q",
        "-n",
        "-c",
        "2",
        "-W",
        "1",
        "-i",
        "0.2",
        "192.168.0.255",
    ]);
    let seen = a2_arp.finish(Duration::from_millis(300));
    assert!(
        seen.iter().any(|l| l.contains("192.168.0.99")),
        "{what}: A's ARP broadcast for 192.168.0.99 must reach a2: {seen:?}"
    );
}

/// Drops, by reason, counted by `d`'s L2 data plane.
fn l2_drops(d: &Overlayd, reason: &str) -> f64 {
    d.metric(
        "overlayd_l2_drops_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

/// Hand-made VXLAN datagrams to h2: B's VNI with A's MACs lands in B only; a non-member's,
/// an A-only member's for B, and an unattached VNI's are dropped and counted.
fn assert_forged_datagrams_refused(
    topo: &Topology,
    d2: &Overlayd,
    (a2, b2): (&Container, &Container),
    (a_mac1, a_mac2): (&str, &str),
    what: &str,
) {
    let (h1, h2, h3) = (topo.host(0), topo.host(1), topo.host(2));
    let drops = |r: &str| l2_drops(d2, r);
    // B's VNI carrying A's MACs (dst = a2's MAC), sent from h1's underlay address (a member),
    // with another source port: must land in B's segment, never in A's.
    let replay = |vni: u32, src_ns: &Netns, src_ip: Ipv4Addr, tag: &[u8]| {
        let frame = udp_frame(
            a_mac2,
            a_mac1,
            Ipv4Addr::new(192, 168, 0, 1),
            Ipv4Addr::new(192, 168, 0, 2),
            7777,
            7777,
            tag,
        );
        send_udp_from(
            src_ns,
            SocketAddr::from((src_ip, 40123)),
            SocketAddr::from((h2.ip, L2_VXLAN_PORT)),
            vxlan_datagram(vni, &frame),
            3,
        );
    };
    let b_rx0 = rx_frames(d2, "tenant-b");
    let a_cap = capture_eth0(a2, "udp port 7777", 20);
    let b_cap = capture_eth0(b2, "udp port 7777", 20);
    replay(200, h1, h1.ip, b"ovt-replay-vni200");
    let in_a = a_cap.finish(Duration::from_millis(500));
    let in_b = b_cap.finish(Duration::from_millis(10));
    let b_rx = rx_frames(d2, "tenant-b") - b_rx0;
    assert!(
        in_a.is_empty(),
        "{what}: a VNI 200 frame with A's MACs reached A's container: {in_a:?}"
    );
    assert!(
        !in_b.is_empty() || b_rx >= 3.0,
        "{what}: the VNI 200 frames must be delivered to B's network (capture in b2: {in_b:?}, \
     rx_frames{{tenant-b}} grew by {b_rx})"
    );

    // The same datagram for VNI 100 from a non-member (the etcd namespace): dropped.
    let etcd_host = &topo.extra[0];
    let a_cap = capture_eth0(a2, "udp port 7777", 20);
    let unknown0 = d2.metric("overlayd_l2_drops_total", &["reason=\"unknown_sender\""]);
    replay(100, etcd_host, etcd_host.ip, b"ovt-non-member");
    let in_a = a_cap.finish(Duration::from_millis(500));
    let unknown = d2.metric("overlayd_l2_drops_total", &["reason=\"unknown_sender\""]) - unknown0;
    assert!(
        in_a.is_empty(),
        "{what}: a non-member's VNI 100 datagram reached A: {in_a:?}"
    );
    assert!(
    unknown >= 3.0,
    "{what}: drops{{reason=unknown_sender}} must count the non-member's 3 datagrams (+{unknown})"
);

    // From h3, a member of A but not of B, with B's VNI: refused as unknown_sender.
    let b_cap = capture_eth0(b2, "udp port 7777", 20);
    let unknown0 = d2.metric("overlayd_l2_drops_total", &["reason=\"unknown_sender\""]);
    replay(200, h3, h3.ip, b"ovt-not-b-member");
    let in_b = b_cap.finish(Duration::from_millis(500));
    let unknown = d2.metric("overlayd_l2_drops_total", &["reason=\"unknown_sender\""]) - unknown0;
    assert!(
        in_b.is_empty(),
        "{what}: VNI 200 from a node that is no member of B reached B: {in_b:?}"
    );
    assert!(
        unknown >= 3.0,
        "{what}: VNI 200 from A-only h3 must count as unknown_sender (+{unknown})"
    );

    // From a member, but a VNI h2 does not attach (300): dropped as wrong_vni, nowhere seen.
    let caps: Vec<Capture> = [&a2, &b2]
        .iter()
        .map(|c| capture_eth0(c, "udp port 7777", 20))
        .collect();
    let wrong0 = drops("wrong_vni");
    replay(300, h1, h1.ip, b"ovt-wrong-vni");
    for c in caps {
        let got = c.finish(Duration::from_millis(500));
        assert!(got.is_empty(), "{what}: VNI 300 was delivered: {got:?}");
    }
    let wrong = drops("wrong_vni") - wrong0;
    assert!(
        wrong >= 3.0,
        "{what}: drops{{reason=wrong_vni}} must count 3 datagrams (+{wrong})"
    );
}

/// Runts from a member (a bare VXLAN header, a 5-byte "frame", 2 bytes): counted, and the
/// daemon carries on.
fn assert_runts_counted(
    topo: &Topology,
    d2: &Overlayd,
    (b1, b2): (&Container, &Container),
    what: &str,
) {
    let (h1, h2) = (topo.host(0), topo.host(1));
    let drops = |r: &str| l2_drops(d2, r);
    // Runts from a member: a bare VXLAN header, and one with a 5-byte "frame": counted, and the
    // daemon carries on.
    let bad0 = drops("truncated") + drops("bad_inner") + drops("bad_header");
    for payload in [
        vxlan_datagram(200, &[]),
        vxlan_datagram(200, &[1, 2, 3, 4, 5]),
        vec![8, 0],
    ] {
        send_udp_from(
            h1,
            SocketAddr::from((h1.ip, 40123)),
            SocketAddr::from((h2.ip, L2_VXLAN_PORT)),
            payload,
            1,
        );
    }
    thread::sleep(Duration::from_millis(300));
    let bad = drops("truncated") + drops("bad_inner") + drops("bad_header") - bad0;
    assert!(
        bad >= 3.0,
        "{what}: 3 runt datagrams must be counted as truncated/bad_inner/bad_header (+{bad})"
    );
    assert!(
        ping_until(b1, b2.ip, REACH),
        "{what}: B still works after the runts"
    );
}

#[test]
fn netns_l2_isolation_access() {
    if skip_unless_root("netns_l2_isolation_access") {
        return;
    }
    isolation_access();
}

// ---------------------------------------------------------------------------------------------
// b'. Isolation through a VLAN trunk
// ---------------------------------------------------------------------------------------------

/// A tagged "station" on a trunk: answers ARP requests and ICMP echo requests for one
/// address per VLAN (`VID=IP,MAC` arguments), with the request's tag, on an AF_PACKET socket;
/// or (`send IFACE HEX COUNT`) sends raw frames. Stands in for VLAN-attached containers on
/// kernels without bridge VLAN filtering or 802.1Q devices (the tag is read from the packet
/// socket's auxdata, where the kernel leaves it).
const STATION_PY: &str = r#"
import socket, struct, sys
SOL_PACKET, PACKET_AUXDATA, TP_STATUS_VLAN_VALID = 263, 8, 1 << 4
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def tag(frame, vid):
    return frame[:12] + struct.pack("!HH", 0x8100, vid) + frame[12:]
if sys.argv[1] == "send":
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((sys.argv[2], 0))
    for _ in range(int(sys.argv[4])):
        s.send(bytes.fromhex(sys.argv[3]))
    sys.exit(0)
iface, stations = sys.argv[2], {}
for a in sys.argv[3:]:
    vid, rest = a.split("=")
    ip, mac = rest.split(",")
    stations[int(vid)] = (socket.inet_aton(ip), bytes.fromhex(mac.replace(":", "")))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
print("ready", flush=True)
while True:
    data, anc, _, addr = s.recvmsg(65536, socket.CMSG_SPACE(64))
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    vid = None
    for lvl, typ, cd in anc:
        if lvl == SOL_PACKET and typ == PACKET_AUXDATA and len(cd) >= 20:
            st, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", cd[:20])
            if st & TP_STATUS_VLAN_VALID:
                vid = tci & 0xfff
    if vid is None and data[12:14] == b"\x81\x00":
        vid = struct.unpack("!H", data[14:16])[0] & 0xfff
        data = data[:12] + data[16:]
    if vid not in stations:
        continue
    ip, mac = stations[vid]
    et = data[12:14]
    if et == b"\x08\x06" and data[20:22] == b"\x00\x01" and data[38:42] == ip:
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac + ip + data[22:28] + data[28:32]
        s.send(tag(data[6:12] + mac + b"\x08\x06" + arp, vid))
    elif et == b"\x08\x00" and data[0:6] == mac and data[23] == 1 and data[30:34] == ip:
        ihl = (data[14] & 0x0f) * 4
        iph = bytearray(data[14:14 + ihl])
        iph[12:16], iph[16:20] = data[30:34], data[26:30]
        icmp = bytearray(data[14 + ihl:14 + struct.unpack("!H", data[16:18])[0]])
        if icmp[0] != 8:
            continue
        icmp[0], icmp[2:4] = 0, b"\0\0"
        icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
        s.send(tag(data[6:12] + mac + b"\x08\x00" + bytes(iph) + bytes(icmp), vid))
"#;

/// The responder half of [`STATION_PY`], running in a namespace; killed on drop.
struct Station {
    child: std::process::Child,
}

impl Station {
    fn start(ns: &Netns, iface: &str, stations: &[(u16, &str, &str)]) -> Station {
        use std::io::{BufRead, BufReader};
        let mut cmd = ns.command("python3");
        cmd.args(["-u", "-c", STATION_PY, "respond", iface]);
        for (vid, ip, mac) in stations {
            cmd.arg(format!("{vid}={ip},{mac}"));
        }
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 (installed?): {e}"));
        let out = child.stdout.take().expect("piped");
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        assert_eq!(line.trim(), "ready", "tagged station did not start");
        Station { child }
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `frame` `count` times from `iface` in `ns` on a packet socket (tags included).
fn send_raw(ns: &Netns, iface: &str, frame: &[u8], count: u32) {
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    ns.run(&[
        "python3",
        "-c",
        STATION_PY,
        "send",
        iface,
        &hex,
        &count.to_string(),
    ]);
}

/// Inserts an 802.1Q tag after the MACs.
fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// A broadcast ARP request "who-has `target` tell `sender`" from `mac`.
fn arp_request(mac: &str, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let m = parse_mac(mac);
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&m);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&m);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// Tenants A (VNI 100, VLAN 10) and B (VNI 200, VLAN 20) with the same addresses. h1 carries
/// both on one trunk (`--l2-vlan 10=tenant-a --l2-vlan 20=tenant-b --l2-trunk-bridge brt`),
/// where a tagged station answers as 192.168.0.1 on each VLAN with the tenant's MAC; h2 has
/// them on access ports (bridges bra/brb, containers a2/b2 at 192.168.0.2).
///
/// (The spec's layout — a vlan_filtering bridge with access ports on each host — needs
/// CONFIG_BRIDGE_VLAN_FILTERING, which test kernels may lack; the tagged station needs nothing
/// but packet sockets, and trunk <-> access also proves the tag is stripped and restored.)
fn isolation_trunk() {
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    etcd.put_l2_network(P, "tenant-a", 100, "vxlan");
    etcd.put_l2_network(P, "tenant-b", 200, "vxlan");
    let (h1, h2) = (topo.host(0), topo.host(1));
    let (a_mac1, a_mac2) = (l2_mac(0xaa, 1, 1), l2_mac(0xaa, 2, 1));
    let (b_mac1, b_mac2) = (l2_mac(0xbb, 1, 1), l2_mac(0xbb, 2, 1));
    let (ip1, _ip2) = (Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 2));

    // h1: trunk bridge brt with the station's namespace on it.
    add_bridge(h1, "brt", false);
    let st_ns = Container::attach(h1, "brt", "trunk1", "192.0.2.1/32", &l2_mac(0xcc, 1, 1));
    let _station = Station::start(
        &st_ns,
        "eth0",
        &[(10, "192.168.0.1", &a_mac1), (20, "192.168.0.1", &b_mac1)],
    );
    // h2: access ports.
    add_bridge(h2, "bra", false);
    add_bridge(h2, "brb", false);
    let a2 = Container::attach(h2, "bra", "a2", "192.168.0.2/24", &a_mac2);
    let b2 = Container::attach(h2, "brb", "b2", "192.168.0.2/24", &b_mac2);

    let (d1, d2) = start_trunk_and_access(h1, h2, &etcd);

    // What B's container must never see: A's MACs, or an ARP not from B.
    let not_b = format!(
        "ether host {a_mac1} or ether host {a_mac2} or \
         (arp and not ether src {b_mac1} and not ether src {b_mac2})"
    );
    let b_cap = Capture::start(&b2, "eth0", &not_b, 50, Duration::from_secs(90));
    // Everything from A's access container, as seen on h1's trunk: tagged 10, never 20.
    let trunk_cap = Capture::start(
        &st_ns,
        "eth0",
        &format!("ether src {a_mac2}"),
        200,
        Duration::from_secs(90),
    );

    // A reaches A on VLAN 10, B reaches B on VLAN 20 (each resolves its own tenant's MAC).
    assert!(
        ping_until(&a2, ip1, REACH),
        "trunk: a2 -> 192.168.0.1 (VLAN 10)"
    );
    assert_eq!(a2.neigh_mac(ip1).as_deref(), Some(a_mac1.as_str()));
    assert!(
        ping_until(&b2, ip1, REACH),
        "trunk: b2 -> 192.168.0.1 (VLAN 20)"
    );
    assert_eq!(b2.neigh_mac(ip1).as_deref(), Some(b_mac1.as_str()));

    assert_trunk_broadcasts(&d1, &st_ns, &a2, &a_mac1);

    let on_trunk = trunk_cap.finish(Duration::from_millis(300));
    assert!(
        on_trunk.iter().any(|l| l.contains("192.168.0.99")),
        "trunk: a2's ARP broadcast must reach h1's trunk: {on_trunk:?}"
    );
    let wrong: Vec<&String> = on_trunk
        .iter()
        .filter(|l| !l.contains("vlan 10,"))
        .collect();
    assert!(
        wrong.is_empty(),
        "trunk: A's frames must leave the trunk tagged VLAN 10 only: {wrong:?}"
    );
    let leaked = b_cap.finish(Duration::from_millis(300));
    assert!(
        leaked.is_empty(),
        "trunk: B's container received A's or foreign frames: {leaked:?}"
    );

    assert_vni_200_stays_in_b(&topo, &d2, &st_ns, (&a2, &b2), (&a_mac1, &a_mac2));
    let mut d1 = d1;
    let st = d1.terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "trunk: clean exit");
    assert!(!h1.has_link("l2trunk"), "trunk: l2trunk removed on exit");
}

/// h1's daemon on the trunk bridge brt (VLAN 10 = tenant A, 20 = tenant B), its l2trunk TAP
/// enslaved with the underlay's MTU less VXLAN's 50; h2's on access bridges bra and brb.
fn start_trunk_and_access(h1: &Host, h2: &Host, etcd: &Etcd) -> (Overlayd, Overlayd) {
    let trunk_flags = [
        "--l2-vlan",
        "10=tenant-a",
        "--l2-vlan",
        "20=tenant-b",
        "--l2-trunk-bridge",
        "brt",
    ];
    let d1 = start(h1, etcd, &trunk_flags, &["l2trunk"]);
    let deadline = Instant::now() + TAP_WAIT;
    while link_master(h1, "l2trunk").as_deref() != Some("brt") {
        assert!(Instant::now() < deadline, "l2trunk not enslaved to brt");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(link_mtu(h1, "l2trunk"), Some(UNDERLAY_MTU - 50));
    let d2 = start(
        h2,
        etcd,
        &["--l2", "tenant-a@bra", "--l2", "tenant-b@brb"],
        &["l2v100", "l2v200"],
    );
    wait_members(etcd, "tenant-a", &[h1.ip, h2.ip]);
    wait_members(etcd, "tenant-b", &[h1.ip, h2.ip]);
    (d1, d2)
}

/// VNI 200 carrying A's MACs: from h2 to h1 it leaves the trunk on VLAN 20 only; from h1 to
/// h2 it reaches B's access container, never A's.
fn assert_vni_200_stays_in_b(
    topo: &Topology,
    d2: &Overlayd,
    st_ns: &Container,
    (a2, b2): (&Container, &Container),
    (a_mac1, a_mac2): (&str, &str),
) {
    let (h1, h2) = (topo.host(0), topo.host(1));
    let (ip1, ip2) = (Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 2));
    let cap = capture_eth0(st_ns, "udp port 7777", 20);
    let frame = udp_frame(a_mac1, a_mac2, ip2, ip1, 7777, 7777, b"ovt-replay-trunk");
    send_udp_from(
        h2,
        SocketAddr::from((h2.ip, 40123)),
        SocketAddr::from((h1.ip, L2_VXLAN_PORT)),
        vxlan_datagram(200, &frame),
        3,
    );
    let got = cap.finish(Duration::from_millis(500));
    assert!(
        !got.is_empty() && got.iter().all(|l| l.contains("vlan 20,")),
        "trunk: the VNI 200 frames must leave the trunk on VLAN 20 only: {got:?}"
    );
    // And the same towards h2's access ports: B's container, never A's.
    let a_cap = capture_eth0(a2, "udp port 7777", 20);
    let b_cap = capture_eth0(b2, "udp port 7777", 20);
    let b_rx0 = rx_frames(d2, "tenant-b");
    let frame = udp_frame(a_mac2, a_mac1, ip1, ip2, 7777, 7777, b"ovt-replay-access");
    send_udp_from(
        h1,
        SocketAddr::from((h1.ip, 40123)),
        SocketAddr::from((h2.ip, L2_VXLAN_PORT)),
        vxlan_datagram(200, &frame),
        3,
    );
    let in_a = a_cap.finish(Duration::from_millis(500));
    let in_b = b_cap.finish(Duration::from_millis(10));
    let b_rx = rx_frames(d2, "tenant-b") - b_rx0;
    assert!(in_a.is_empty(), "trunk: VNI 200 reached A: {in_a:?}");
    assert!(
        !in_b.is_empty() || b_rx >= 3.0,
        "trunk: VNI 200 must reach B (b2 capture {in_b:?}, rx +{b_rx})"
    );
}

/// Broadcasts from A, both ways: a2's ARP for an unused address, and the station's tagged ARP
/// on VLAN 10 (positive control in a2); unmapped VLAN 30 and untagged frames from the trunk
/// dropped and counted.
fn assert_trunk_broadcasts(d1: &Overlayd, st_ns: &Container, a2: &Container, a_mac1: &str) {
    let (ip1, ip2) = (Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 2));
    let a2_arp = capture_eth0(a2, &format!("arp and ether src {a_mac1}"), 20);
    assert!(!ping_burst(a2, "192.168.0.99", 3, "0.3"));
    let req = arp_request(a_mac1, ip1, Ipv4Addr::new(192, 168, 0, 98));
    send_raw(st_ns, "eth0", &tagged(&req, 10), 3);
    // Unmapped VLAN 30 and untagged frames from the trunk: dropped and counted.
    let unmapped0 = d1.metric("overlayd_l2_drops_total", &["reason=\"unmapped_vlan\""]);
    let stray = arp_request(&l2_mac(0xcc, 1, 2), ip1, ip2);
    send_raw(st_ns, "eth0", &tagged(&stray, 30), 2);
    send_raw(st_ns, "eth0", &stray, 2);
    let seen = a2_arp.finish(Duration::from_millis(500));
    assert!(
        seen.iter().any(|l| l.contains("192.168.0.98")),
        "trunk: the station's VLAN 10 broadcast must reach a2: {seen:?}"
    );
    let unmapped = d1.metric("overlayd_l2_drops_total", &["reason=\"unmapped_vlan\""]) - unmapped0;
    assert!(
        unmapped >= 4.0,
        "trunk: 2 VLAN-30 + 2 untagged frames must count as unmapped_vlan (+{unmapped})"
    );
}

#[test]
fn netns_l2_isolation_trunk() {
    if skip_unless_root("netns_l2_isolation_trunk") {
        return;
    }
    isolation_trunk();
}

/// The spec's trunk layout: on each host a vlan_filtering bridge br0, A's container an access
/// port of VLAN 10, B's of VLAN 20, `l2trunk` tagged in both. Skipped (loudly) on kernels
/// without bridge VLAN filtering; [`isolation_trunk`] covers the trunk there.
#[test]
fn netns_l2_isolation_trunk_vlan_filtering() {
    if skip_unless_root("netns_l2_isolation_trunk_vlan_filtering") {
        return;
    }
    let mut topo = Topology::new(2);
    if skip_unless(
        vlan_filtering_supported(topo.host(0)),
        "netns_l2_isolation_trunk_vlan_filtering",
        "no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING) in this kernel",
    ) {
        return;
    }
    let etcd = topo.start_etcd();
    etcd.put_l2_network(P, "tenant-a", 100, "vxlan");
    etcd.put_l2_network(P, "tenant-b", 200, "vxlan");
    let (h1, h2) = (topo.host(0), topo.host(1));
    let (a_mac1, a_mac2) = (l2_mac(0xaa, 1, 1), l2_mac(0xaa, 2, 1));
    let (b_mac1, b_mac2) = (l2_mac(0xbb, 1, 1), l2_mac(0xbb, 2, 1));
    for h in [h1, h2] {
        add_bridge(h, "br0", true);
    }
    let a1 = Container::attach_vlan(h1, "br0", "a1", "192.168.0.1/24", &a_mac1, 10);
    let a2 = Container::attach_vlan(h2, "br0", "a2", "192.168.0.2/24", &a_mac2, 10);
    let b1 = Container::attach_vlan(h1, "br0", "b1", "192.168.0.1/24", &b_mac1, 20);
    let b2 = Container::attach_vlan(h2, "br0", "b2", "192.168.0.2/24", &b_mac2, 20);
    let flags = [
        "--l2-vlan",
        "10=tenant-a",
        "--l2-vlan",
        "20=tenant-b",
        "--l2-trunk-bridge",
        "br0",
    ];
    let _d1 = start(h1, &etcd, &flags, &["l2trunk"]);
    let _d2 = start(h2, &etcd, &flags, &["l2trunk"]);
    for h in [h1, h2] {
        let deadline = Instant::now() + TAP_WAIT;
        while link_master(h, "l2trunk").as_deref() != Some("br0") {
            assert!(
                Instant::now() < deadline,
                "l2trunk not on br0 in {}",
                h.name()
            );
            thread::sleep(Duration::from_millis(50));
        }
        h.bridge("vlan add dev l2trunk vid 10");
        h.bridge("vlan add dev l2trunk vid 20");
    }
    wait_members(&etcd, "tenant-a", &[h1.ip, h2.ip]);
    wait_members(&etcd, "tenant-b", &[h1.ip, h2.ip]);

    let not_b = format!(
        "ether host {a_mac1} or ether host {a_mac2} or \
         (arp and not ether src {b_mac1} and not ether src {b_mac2})"
    );
    let b_caps: Vec<Capture> = [&b1, &b2]
        .iter()
        .map(|b| Capture::start(b, "eth0", &not_b, 50, Duration::from_secs(60)))
        .collect();
    ping_both(&a1, &a2, "vlan_filtering tenant A");
    assert_eq!(a1.neigh_mac(a2.ip).as_deref(), Some(a_mac2.as_str()));
    let a2_arp = capture_eth0(&a2, &format!("arp and ether src {a_mac1}"), 20);
    assert!(!ping_burst(&a1, "192.168.0.99", 3, "0.3"));
    let seen = a2_arp.finish(Duration::from_millis(300));
    assert!(
        seen.iter().any(|l| l.contains("192.168.0.99")),
        "A's broadcast must reach a2: {seen:?}"
    );
    ping_both(&b1, &b2, "vlan_filtering tenant B");
    assert_eq!(b1.neigh_mac(b2.ip).as_deref(), Some(b_mac2.as_str()));
    for cap in b_caps {
        let leaked = cap.finish(Duration::from_millis(300));
        assert!(leaked.is_empty(), "B received A's frames: {leaked:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// c. Learning: unicast goes only where the MAC is; a moved MAC is followed at once
// ---------------------------------------------------------------------------------------------

#[test]
fn netns_l2_learning_and_move() {
    if skip_unless_root("netns_l2_learning_and_move") {
        return;
    }
    let mut s = Segment3::new(r#"{"VNI": 100, "Backend": "vxlan"}"#);
    let (c1, c2, d1, d2, d3, h3) = (&mut s.c1, &s.c2, &s.d1, &s.d2, &s.d3, s.topo.host(2));

    ping_both(c1, c2, "first exchange");

    assert_broadcast_flooded_to_each_member(c1, d1);
    assert_learned_unicast_not_flooded(c1, c2, d1, d3, h3);

    // Move c1 (same IP, same MAC) from h1 to h3: the first packet after it speaks works.
    c1.move_to(h3, "brl2");
    let t = Instant::now();
    assert!(
        ping_once(c1, c2.ip, 2),
        "moved c1 (now on h3) -> c2: the first ping must succeed"
    );
    assert!(
        ping_once(c2, c1.ip, 2),
        "c2 -> moved c1: the first ping must succeed (h2 followed the move)"
    );
    println!("reachable after the move in {:?}", t.elapsed());
    let moves = d2.metric("overlayd_l2_moves_total", &[&net_label("net")]);
    assert!(
        moves >= 1.0,
        "h2 must count c1's move (moves_total={moves})"
    );
}

/// A broadcast is sent once per member but self: kind="flood" +1, flood copies +2 each.
/// Both counters come from one scrape, read once they have stopped moving: the kernel keeps
/// resolving 10.50.0.99 after ping gives up (ARP broadcasts 1 s apart), and one of those
/// falling between two scrapes would break the pairing.
fn assert_broadcast_flooded_to_each_member(c1: &Container, d1: &Overlayd) {
    let l = net_label("net");
    let flood = |d: &Overlayd| {
        let m = d.scrape();
        (
            metric_value(&m, "overlayd_l2_tx_frames_total", &[&l, "kind=\"flood\""]),
            metric_value(&m, "overlayd_l2_flood_copies_total", &[&l]),
        )
    };
    let settled = |d: &Overlayd| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = flood(d);
        loop {
            thread::sleep(Duration::from_millis(1200));
            let now = flood(d);
            if now == last || Instant::now() >= deadline {
                return now;
            }
            last = now;
        }
    };
    let (f0, copies0) = settled(d1);
    assert!(!ping_once(c1, "10.50.0.99", 1), "nobody has 10.50.0.99");
    let (f1, copies1) = settled(d1);
    let (f, copies) = (f1 - f0, copies1 - copies0);
    assert!(
        f >= 1.0 && copies == 2.0 * f,
        "h1 floods each ARP broadcast to h2 and h3: flood frames +{f}, copies +{copies}"
    );
    assert_eq!(d1.metric("overlayd_l2_members", &[&l]), 2.0);
}

/// After learning, 100 pings c1 -> c2 go as unicast from h1, and h3 sees (almost) none.
fn assert_learned_unicast_not_flooded(
    c1: &Container,
    c2: &Container,
    d1: &Overlayd,
    d3: &Overlayd,
    h3: &Host,
) {
    thread::sleep(Duration::from_millis(300));
    let rx3_0 = rx_frames(d3, "net");
    let uni1_0 = d1.metric(
        "overlayd_l2_tx_frames_total",
        &[&net_label("net"), "kind=\"unicast\""],
    );
    let cap3 = capture_eth0(h3, &format!("udp dst port {L2_VXLAN_PORT}"), 1000);
    assert!(
        ping_burst(c1, c2.ip, 100, "0.01"),
        "100 pings c1 -> c2 after learning"
    );
    let on_h3 = cap3.finish(Duration::from_millis(300));
    let rx3 = rx_frames(d3, "net") - rx3_0;
    let uni1 = d1.metric(
        "overlayd_l2_tx_frames_total",
        &[&net_label("net"), "kind=\"unicast\""],
    ) - uni1_0;
    println!(
        "burst: h3 rx_frames +{rx3}, h3 underlay datagrams {}, h1 unicast tx +{uni1}",
        on_h3.len()
    );
    assert!(
        rx3 <= 5.0 && on_h3.len() <= 5,
        "learned unicast must not be flooded: h3 got +{rx3} frames, {} datagrams: {:?}",
        on_h3.len(),
        &on_h3[..on_h3.len().min(10)]
    );
    assert!(
        uni1 >= 100.0,
        "h1 must send the 100 echo requests as unicast (+{uni1})"
    );
}

/// With AgeingSecs 2, a MAC unseen for longer is forgotten: the next unicast to it is flooded
/// again (h3 sees it), and learned again from the reply.
#[test]
fn netns_l2_ageing() {
    if skip_unless_root("netns_l2_ageing") {
        return;
    }
    let s = Segment3::new(r#"{"VNI": 100, "AgeingSecs": 2}"#);
    let (c1, c2, d1, d2, d3, h3) = (&s.c1, &s.c2, &s.d1, &s.d2, &s.d3, s.topo.host(2));
    // Static ARP both ways: no ARP probes refresh the entries while the test waits.
    c1.static_neigh(c2.ip, &c2.mac);
    c2.static_neigh(c1.ip, &c1.mac);
    ping_both(c1, c2, "first exchange");
    // Learned: a ping now goes to h2 only.
    thread::sleep(Duration::from_millis(300));
    let rx0 = rx_frames(d3, "net");
    assert!(ping_once(c1, c2.ip, 1));
    assert_eq!(
        rx_frames(d3, "net") - rx0,
        0.0,
        "learned unicast reached h3"
    );
    // Idle for 3 x AgeingSecs: both MACs are forgotten; the next echo request is unknown
    // unicast, flooded to h3 too.
    thread::sleep(Duration::from_secs(6));
    let rx1 = rx_frames(d3, "net");
    let fl = |d: &Overlayd| {
        d.metric(
            "overlayd_l2_tx_frames_total",
            &[&net_label("net"), "kind=\"flood\""],
        )
    };
    let (f1, f2) = (fl(d1), fl(d2));
    let cap3 = Capture::start(
        h3,
        "eth0",
        &format!("udp dst port {L2_VXLAN_PORT}"),
        100,
        Duration::from_secs(20),
    );
    assert!(ping_once(c1, c2.ip, 1), "c1 -> c2 after ageing");
    let at_h3 = cap3.finish(Duration::from_millis(300));
    let flooded = rx_frames(d3, "net") - rx1;
    println!(
        "after ageing: h1 flood +{}, h2 flood +{}, h3 rx +{flooded}, h3 underlay {}",
        fl(d1) - f1,
        fl(d2) - f2,
        at_h3.len()
    );
    assert!(
        flooded >= 1.0,
        "after AgeingSecs the echo request must be flooded again (h3 rx +{flooded})"
    );
    // Relearned from that exchange.
    thread::sleep(Duration::from_millis(300));
    let rx2 = rx_frames(d3, "net");
    assert!(ping_once(c1, c2.ip, 1));
    assert_eq!(
        rx_frames(d3, "net") - rx2,
        0.0,
        "relearned unicast reached h3"
    );
}

// ---------------------------------------------------------------------------------------------
// Optional: ARP suppression
// ---------------------------------------------------------------------------------------------

#[test]
fn netns_l2_arp_suppression() {
    if skip_unless_root("netns_l2_arp_suppression") {
        return;
    }
    let s = Segment3::new(
        r#"{"VNI": 100, "Backend": "vxlan", "Port": 4789, "ArpSuppression": true, "AgeingSecs": 300}"#,
    );
    let (c1, c2, d1, d3, h3) = (&s.c1, &s.c2, &s.d1, &s.d3, s.topo.host(2));

    // c2 answers c1's ARP (h1 sees c2's ARP reply from remote: 10.50.0.2 is learned).
    ping_both(c1, c2, "first exchange");
    c1.flush_neigh();
    thread::sleep(Duration::from_millis(300));
    let l = net_label("net");
    let supp0 = d1.metric("overlayd_l2_arp_suppressed_total", &[&l]);
    let rx3_0 = rx_frames(d3, "net");
    let h3_cap = Capture::start(
        h3,
        "eth0",
        &format!("udp dst port {L2_VXLAN_PORT}"),
        100,
        Duration::from_secs(20),
    );
    let c2_arp = Capture::start(
        c2,
        "eth0",
        &format!("arp and ether src {}", c1.mac),
        20,
        Duration::from_secs(20),
    );
    assert!(
        ping_once(c1, c2.ip, 2),
        "c1 -> c2 after flushing c1's ARP cache"
    );
    let arp_at_c2 = c2_arp.finish(Duration::from_millis(300));
    let at_h3 = h3_cap.finish(Duration::from_millis(10));
    let supp = d1.metric("overlayd_l2_arp_suppressed_total", &[&l]) - supp0;
    let rx3 = rx_frames(d3, "net") - rx3_0;
    assert_eq!(
        c1.neigh_mac(c2.ip).as_deref(),
        Some(c2.mac.as_str()),
        "the local answer must carry c2's MAC"
    );
    assert!(supp >= 1.0, "arp_suppressed_total must grow (+{supp})");
    let arp_at_h3: Vec<&String> = at_h3.iter().filter(|l| l.contains("ARP")).collect();
    assert!(
        arp_at_h3.is_empty(),
        "h3 must not see the suppressed ARP request (rx_frames +{rx3}): {arp_at_h3:?}"
    );
    assert!(
        !arp_at_c2
            .iter()
            .any(|l| l.contains("Request") && l.contains("ff:ff:ff:ff:ff:ff")),
        "c2 must not receive c1's broadcast ARP request: {arp_at_c2:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// d. Interop with a kernel L2 VXLAN VTEP
// ---------------------------------------------------------------------------------------------

#[test]
fn netns_l2_interop_kernel_vxlan() {
    if skip_unless_root("netns_l2_interop_kernel_vxlan") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    etcd.put_l2_network(P, "net", 100, "vxlan");
    let (h1, h2) = (topo.host(0), topo.host(1));
    add_bridge(h1, "brl2", false);
    add_bridge(h2, "brl2", false);
    // h2: no overlayd, the kernel's VXLAN on a bridge, joined by hand.
    let k2 = KernelL2Vxlan::setup(h2, h2.ip, 100, "brl2");
    k2.add_peer(h1.ip);
    k2.register(&etcd, P, "net");
    let c1 = Container::attach(h1, "brl2", "c1", "10.50.0.1/24", &l2_mac(0x50, 1, 1));
    let c2 = Container::attach(h2, "brl2", "c2", "10.50.0.2/24", &l2_mac(0x50, 2, 1));
    let d1 = start(h1, &etcd, &["--l2", "net@brl2"], &["l2v100"]);
    wait_members(&etcd, "net", &[h1.ip, h2.ip]);

    ping_both(&c1, &c2, "overlayd <-> kernel vxlan");
    assert_eq!(c1.neigh_mac(c2.ip).as_deref(), Some(c2.mac.as_str()));
    assert_eq!(c2.neigh_mac(c1.ip).as_deref(), Some(c1.mac.as_str()));
    tcp_both(&c1, &c2, 5 * MB, "overlayd <-> kernel vxlan");
    assert!(rx_frames(&d1, "net") > 0.0);

    // The kernel node leaves (its member key deleted by hand): h1 stops sending to it and no
    // longer accepts its frames.
    assert_eq!(etcd.del(&l2_member_key(P, "net", h2.ip)), 1);
    let l = net_label("net");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d1.metric("overlayd_l2_members", &[&l]) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "h1's members gauge must drop to 0 once the kernel node's key is gone"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !ping_burst(&c1, c2.ip, 3, "0.3"),
        "c1 must not reach c2 once h2 is no member"
    );
    // The kernel still sends to h1 (its flood entry stays): refused.
    assert!(
        !ping_burst(&c2, c1.ip, 3, "0.3"),
        "c2 must not reach c1 once h2 is no member"
    );
    assert!(
        d1.metric("overlayd_l2_drops_total", &["reason=\"unknown_sender\""]) > 0.0,
        "frames from the former member must count as unknown_sender"
    );
}

/// overlayd L2 gre and the kernel's gretap with key VNI<<8 (skipped, loudly, on kernels
/// without gretap).
#[test]
fn netns_l2_interop_kernel_gretap() {
    if skip_unless_root("netns_l2_interop_kernel_gretap") {
        return;
    }
    let mut topo = Topology::new(2);
    if skip_unless(
        gretap_supported(topo.host(1)),
        "netns_l2_interop_kernel_gretap",
        "this kernel has no gretap devices (CONFIG_NET_IPGRE)",
    ) {
        return;
    }
    let etcd = topo.start_etcd();
    etcd.put_l2_network(P, "net", 100, "gre");
    let (h1, h2) = (topo.host(0), topo.host(1));
    add_bridge(h1, "brl2", false);
    add_bridge(h2, "brl2", false);
    let k2 = KernelL2Gretap::setup(h2, h2.ip, h1.ip, 100, "brl2");
    etcd.put_l2_peer_lease(P, k2.local);
    etcd.put_l2_member(P, "net", k2.local);
    let c1 = Container::attach(h1, "brl2", "c1", "10.50.0.1/24", &l2_mac(0x50, 1, 1));
    let c2 = Container::attach(h2, "brl2", "c2", "10.50.0.2/24", &l2_mac(0x50, 2, 1));
    let d1 = start(h1, &etcd, &["--l2", "net@brl2"], &["l2g100"]);
    wait_members(&etcd, "net", &[h1.ip, h2.ip]);
    ping_both(&c1, &c2, "overlayd gre <-> kernel gretap");
    tcp_both(&c1, &c2, 5 * MB, "overlayd gre <-> kernel gretap");
    assert!(rx_frames(&d1, "net") > 0.0);
}

/// "L3 keeps running as before": a node told to attach an L2 network that is not defined yet
/// waits for it — but its routed overlay must not wait with it (subnet file, readiness, peers).
#[test]
fn netns_l2_missing_network_does_not_block_l3() {
    if skip_unless_root("netns_l2_missing_network_does_not_block_l3") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let (h1, h2) = (topo.host(0), topo.host(1));
    add_bridge(h1, "brl2", false);
    let mut d1 = Overlayd::spawn(h1, overlayd_l2_args(&etcd, &["--l2", "later@brl2"]));
    let mut d2 = Overlayd::spawn(h2, overlayd_args("vxlan", &etcd));
    let s2 = d2.wait_ready(READY);
    let ready = wait_ready_since(
        d1.subnet_file(),
        std::time::SystemTime::UNIX_EPOCH,
        Duration::from_secs(15),
    );
    assert!(
        ready.is_some(),
        "L3 must become ready (subnet file) while --l2 later waits for its network; log:\n{}",
        tail(d1.log_path(), 20)
    );
    assert!(
        ping_until(h1, overlay_ip_of(&s2), REACH),
        "L3 h1 -> h2 while L2 waits"
    );
    assert!(!h1.has_link("l2v42"));
    etcd.put_l2_network(P, "later", 42, "vxlan");
    assert!(
        wait_link(h1, "l2v42", TAP_WAIT),
        "TAP l2v42 once the network is written"
    );
    assert!(d1.is_running());
}

// ---------------------------------------------------------------------------------------------
// e. VNI and VID ranges
// ---------------------------------------------------------------------------------------------

#[test]
fn netns_l2_vni_range() {
    if skip_unless_root("netns_l2_vni_range") {
        return;
    }
    let mut topo = Topology::new(4);
    let etcd = topo.start_etcd();
    carry_the_ends_of_the_vni_range(&topo, &etcd);
    refuse_invalid_vnis(&topo, &etcd);
    refuse_bad_configs(&topo, &etcd);
    attach_a_network_written_late(&topo, &etcd);
}

/// Four networks between h1 and h2: both ends of the VNI range and the 12-bit boundary,
/// vxlan and gre side by side.
fn carry_the_ends_of_the_vni_range(topo: &Topology, etcd: &Etcd) {
    // Both ends of the VNI range, and the 12-bit boundary; vxlan and gre side by side on the
    // same nodes (gre's key is VNI<<8: the largest VNI fills all 32 bits of it).
    let nets: [(&str, u32, &str, &str); 4] = [
        ("n1", 1, "br1", "vxlan"),
        ("n4096", 4096, "br2", "gre"),
        ("nmax", 16_777_215, "br3", "vxlan"),
        ("gmax", 16_777_214, "br4", "gre"),
    ];
    let (h1, h2) = (topo.host(0), topo.host(1));
    let mut pairs = Vec::new();
    for (i, (name, vni, br, backend)) in nets.iter().enumerate() {
        etcd.put_l2_network(P, name, u64::from(*vni), backend);
        add_bridge(h1, br, false);
        add_bridge(h2, br, false);
        let tag = 0x60 + i as u8;
        let x1 = Container::attach(
            h1,
            br,
            &format!("x{i}a"),
            "10.60.0.1/24",
            &l2_mac(tag, 1, 1),
        );
        let x2 = Container::attach(
            h2,
            br,
            &format!("x{i}b"),
            "10.60.0.2/24",
            &l2_mac(tag, 2, 1),
        );
        pairs.push((name.to_string(), x1, x2));
    }
    let flag_vals: Vec<String> = nets.iter().map(|(n, _, b, _)| format!("{n}@{b}")).collect();
    let mut flags: Vec<&str> = Vec::new();
    for v in &flag_vals {
        flags.extend(["--l2", v.as_str()]);
    }
    let taps = ["l2v1", "l2g4096", "l2v16777215", "l2g16777214"];
    let _d1 = start(h1, etcd, &flags, &taps);
    let _d2 = start(h2, etcd, &flags, &taps);
    for (name, x1, x2) in &pairs {
        wait_members(etcd, name, &[h1.ip, h2.ip]);
        ping_both(x1, x2, &format!("network {name}"));
        assert_eq!(x1.neigh_mac(x2.ip).as_deref(), Some(x2.mac.as_str()));
    }
}

/// Invalid VNIs in etcd: the daemon exits non-zero, naming the key and the range.
fn refuse_invalid_vnis(topo: &Topology, etcd: &Etcd) {
    etcd.put_l2_network_json(P, "bad0", r#"{"VNI":0,"Backend":"vxlan"}"#);
    etcd.put_l2_network_json(P, "big", r#"{"VNI":16777216,"Backend":"vxlan"}"#);
    let bound = Duration::from_secs(30);
    let mut bad: Vec<(String, Overlayd)> = [("bad0", topo.host(2)), ("big", topo.host(3))]
        .into_iter()
        .map(|(n, h)| {
            (
                n.to_string(),
                Overlayd::spawn(h, overlayd_l2_args(etcd, &["--l2", n])),
            )
        })
        .collect();
    for (name, d) in bad.iter_mut() {
        let st = d.wait_exit(bound);
        let log = d.log();
        assert!(
            exited_nonzero(st),
            "--l2 {name} (invalid VNI) must exit non-zero within {bound:?}, got {st:?}; log:\n{}",
            tail(d.log_path(), 30)
        );
        assert!(
            log.contains("VNI must be 1..=16777215"),
            "--l2 {name}: the error must give the VNI range; log:\n{}",
            tail(d.log_path(), 30)
        );
        assert!(
            log.contains(&l2_network_key(P, name)),
            "--l2 {name}: the error must name the key {}; log:\n{}",
            l2_network_key(P, name),
            tail(d.log_path(), 30)
        );
    }
}

/// Bad JSON, an unknown backend, bad VLAN ids, a network both on an access port and on the
/// trunk, two vxlan ports on one node: each refused with a non-zero exit.
fn refuse_bad_configs(topo: &Topology, etcd: &Etcd) {
    let bound = Duration::from_secs(30);
    // Bad JSON and an unknown backend: the same kind of error, one after the other on h3.
    etcd.put_l2_network_json(P, "badjson", r#"{"VNI": 100,"#);
    etcd.put_l2_network_json(P, "geneve", r#"{"VNI": 100, "Backend": "geneve"}"#);
    for name in ["badjson", "geneve"] {
        let mut d = Overlayd::spawn(topo.host(2), overlayd_l2_args(etcd, &["--l2", name]));
        let st = d.wait_exit(bound);
        assert!(
        exited_nonzero(st),
        "--l2 {name} (invalid config) must exit non-zero within {bound:?}, got {st:?}; log:\n{}",
        tail(d.log_path(), 30)
    );
        assert!(
            d.log().contains(&l2_network_key(P, name)),
            "--l2 {name}: the error must name the key; log:\n{}",
            tail(d.log_path(), 30)
        );
        println!("--l2 {name}: {}", tail(d.log_path(), 1));
    }

    // VLAN ids outside 1..=4094 (and bad syntax) are usage errors.
    for vlan in ["4095=x", "0=x", "4096=x", "10", "abc=x"] {
        let mut d = Overlayd::spawn(
            topo.host(2),
            overlayd_l2_args(etcd, &["--l2-vlan", vlan, "--l2-trunk-bridge", "br9"]),
        );
        let st = d.wait_exit(Duration::from_secs(10));
        assert!(
            exited_nonzero(st),
            "--l2-vlan {vlan} must exit non-zero at once, got {st:?}; log:\n{}",
            tail(d.log_path(), 20)
        );
        assert!(
            !topo.host(2).has_link("l2trunk"),
            "--l2-vlan {vlan}: no trunk TAP may be left behind"
        );
    }

    // One network both as access port and on the trunk of one node: refused.
    let mut d = Overlayd::spawn(
        topo.host(2),
        overlayd_l2_args(
            etcd,
            &[
                "--l2",
                "n1@br1",
                "--l2-vlan",
                "10=n1",
                "--l2-trunk-bridge",
                "br9",
            ],
        ),
    );
    let st = d.wait_exit(Duration::from_secs(20));
    assert!(
        exited_nonzero(st),
        "--l2 n1 with --l2-vlan 10=n1 must exit non-zero, got {st:?}; log:\n{}",
        tail(d.log_path(), 20)
    );
    println!("--l2 n1 --l2-vlan 10=n1: {}", tail(d.log_path(), 1));

    // Two vxlan networks on one node with different UDP ports: refused.
    etcd.put_l2_network_json(P, "p4789", r#"{"VNI":501,"Port":4789}"#);
    etcd.put_l2_network_json(P, "p4790", r#"{"VNI":502,"Port":4790}"#);
    let mut d = Overlayd::spawn(
        topo.host(2),
        overlayd_l2_args(etcd, &["--l2", "p4789@brp1", "--l2", "p4790@brp2"]),
    );
    let st = d.wait_exit(Duration::from_secs(20));
    assert!(
        exited_nonzero(st),
        "vxlan networks with ports 4789 and 4790 on one node must be refused, got {st:?}; log:\n{}",
        tail(d.log_path(), 20)
    );
    println!("--l2 p4789 --l2 p4790: {}", tail(d.log_path(), 1));
}

/// A network that does not exist yet is waited for, then attached when it appears.
fn attach_a_network_written_late(topo: &Topology, etcd: &Etcd) {
    let h4 = topo.host(3);
    add_bridge(h4, "brlate", false);
    let mut late = Overlayd::spawn(h4, overlayd_l2_args(etcd, &["--l2", "late@brlate"]));
    let waiting = Instant::now() + Duration::from_secs(15);
    while !late.log().contains("/l2/networks/late") && Instant::now() < waiting {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(1));
    assert!(
        late.is_running() && !h4.has_link("l2v777"),
        "--l2 late (no config yet): keeps running, no TAP; log:\n{}",
        tail(late.log_path(), 20)
    );
    // (Observation for the report: is L3 ready while L2 waits?)
    println!(
        "--l2 late, network absent: subnet file written = {}",
        wait_ready(late.subnet_file(), Duration::from_millis(10)).is_some()
    );
    etcd.put_l2_network(P, "late", 777, "vxlan");
    assert!(
        wait_link(h4, "l2v777", TAP_WAIT),
        "--l2 late: TAP l2v777 must appear once the network is written; log:\n{}",
        tail(late.log_path(), 20)
    );
    late.wait_ready(READY);
    wait_members(etcd, "late", &[h4.ip]);
}

/// A bounded capture (30 s at most) on `ns`'s eth0 of up to `max` frames matching `filter`.
fn capture_eth0(ns: &Netns, filter: &str, max: u32) -> Capture {
    Capture::start(ns, "eth0", filter, max, Duration::from_secs(30))
}
