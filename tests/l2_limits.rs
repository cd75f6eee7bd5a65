//! End-to-end tests of the L2 limits of issue 22: membership rests on the subnet leases, not
//! on etcd member keys alone (a member key for an address that holds no lease gets no flood
//! and no frame of it is accepted), and each network learns MACs into tables of its own (100
//! 000 random source MACs in tenant A do not make tenant B flood). Real etcd, daemons, TAPs
//! and bridges in namespaces; see `tests/common`.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::start_l2_daemon as start;
use common::*;

const REACH: Duration = Duration::from_secs(20);
const P: &str = ETCD_PREFIX;

fn net(network: &str) -> String {
    format!("network=\"{network}\"")
}

/// Waits until `d`'s gauge `name{network}` reads `want`.
fn wait_gauge(d: &Overlayd, name: &str, network: &str, want: f64) {
    let l = net(network);
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.metric(name, &[&l]) != want {
        assert!(
            Instant::now() < deadline,
            "{name}{{{l}}} is {}, want {want}",
            d.metric(name, &[&l])
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A tcpdump filter for VXLAN datagrams whose inner destination MAC is `mac`
/// (`aa:bb:cc:dd:ee:ff`): UDP header 8 + VXLAN 8, then the inner Ethernet header.
fn vxlan_inner_dst(mac: &str) -> String {
    let hex: String = mac.split(':').collect();
    format!(
        "udp dst port {L2_VXLAN_PORT} and udp[16:4] = 0x{} and udp[20:2] = 0x{}",
        &hex[..8],
        &hex[8..]
    )
}

/// A host with a member key but no lease (h3: no daemon, a capture on its underlay port)
/// gets none of the floods between the lease-holding members h1 and h2, who still talk;
/// once a lease carries its address, the same floods reach it (so the capture could see
/// them).
#[test]
fn netns_l2_member_without_lease_gets_no_flood() {
    if skip_unless_root("netns_l2_member_without_lease_gets_no_flood") {
        return;
    }
    let mut topo = Topology::new(3);
    let etcd = topo.start_etcd();
    etcd.put_l2_network(P, "net", 100, "vxlan");
    let (h1, h2, h3) = (topo.host(0), topo.host(1), topo.host(2));
    add_bridge(h1, "brl2", false);
    add_bridge(h2, "brl2", false);
    let c1 = Container::attach(h1, "brl2", "c1", "10.50.0.1/24", &l2_mac(0x50, 1, 1));
    let c2 = Container::attach(h2, "brl2", "c2", "10.50.0.2/24", &l2_mac(0x50, 2, 1));
    etcd.put_l2_member(P, "net", h3.ip);
    let flags = ["--l2", "net@brl2"];
    let d1 = start(h1, &etcd, &flags, &["l2v100"]);
    let d2 = start(h2, &etcd, &flags, &["l2v100"]);
    assert!(etcd.wait_l2_members(P, "net", &[h1.ip, h2.ip, h3.ip], REACH));
    wait_gauge(&d1, "overlayd_l2_members", "net", 1.0);
    wait_gauge(&d1, "overlayd_l2_members_without_lease", "net", 1.0);

    let vxlan = format!("udp dst port {L2_VXLAN_PORT}");
    let cap = Capture::start(h3, "eth0", &vxlan, 50, Duration::from_secs(60));
    assert!(ping_until(&c1, c2.ip, REACH), "c1 -> c2 (lease holders)");
    assert!(ping_until(&c2, c1.ip, REACH), "c2 -> c1 (lease holders)");
    // Broadcasts: ARP requests for an address nobody has, from both sides.
    ping_burst(&c1, "10.50.0.99", 3, "0.3");
    ping_burst(&c2, "10.50.0.98", 3, "0.3");
    let seen = cap.finish(Duration::from_millis(300));
    assert!(
        seen.is_empty(),
        "the member without a lease received VXLAN datagrams: {seen:?}"
    );
    // Its frames are refused too.
    let unknown =
        |d: &Overlayd| d.metric("overlayd_l2_drops_total", &["reason=\"unknown_sender\""]);
    let before = unknown(&d1);
    let mut frame = parse_mac(&c1.mac).to_vec();
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x33, 0x08, 0x00]);
    frame.resize(60, 0);
    let datagram = vxlan_datagram(100, &frame);
    let (from, to) = (h3.ip, h1.ip);
    h3.in_ns(move || {
        let s = std::net::UdpSocket::bind((from, 0)).expect("bind in h3");
        for _ in 0..5 {
            s.send_to(&datagram, (to, L2_VXLAN_PORT))
                .expect("send from h3");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while unknown(&d1) < before + 5.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        unknown(&d1),
        before + 5.0,
        "h3's frames count as unknown_sender"
    );

    // Positive control: a lease for h3's address makes it a member, and floods reach it.
    // The member re-check wakes when the forwarding tables change (its timer is 30 s), so
    // the new member counts within a few seconds.
    let leased = Instant::now();
    etcd.put_l2_peer_lease(P, h3.ip);
    wait_gauge(&d1, "overlayd_l2_members", "net", 2.0);
    wait_gauge(&d1, "overlayd_l2_members_without_lease", "net", 0.0);
    let took = leased.elapsed();
    eprintln!("h3's lease written -> h3 a member at h1: {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "the member re-check follows the lease change, not its 30 s timer: {took:?}"
    );
    let cap = Capture::start(h3, "eth0", &vxlan, 5, Duration::from_secs(30));
    ping_burst(&c1, "10.50.0.97", 3, "0.3");
    let seen = cap.finish(Duration::from_millis(300));
    assert!(
        !seen.is_empty(),
        "with a lease, h3 must receive c1's broadcasts (the capture works)"
    );
    drop((d1, d2));
}

/// Sends `count` broadcast frames from `iface` in `ns`, each from a different random
/// locally administered source MAC (python3 on a packet socket; bounded by `timeout`).
fn random_source_macs(ns: &Netns, iface: &str, count: u32) {
    const PY: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
dst, et, body = b"\xff" * 6, b"\x88\xb5", b"\x00" * 46
sent = 0
for _ in range(int(sys.argv[2])):
    src = bytes([0x02]) + os.urandom(5)
    try:
        s.send(dst + src + et + body)
        sent += 1
    except BlockingIOError:
        pass
print(sent)
"#;
    let out = ns.run(&[
        "timeout",
        "120",
        "python3",
        "-c",
        PY,
        iface,
        &count.to_string(),
    ]);
    println!("sent {} frames with random source MACs", out.trim());
}

/// Tenants A (VNI 100) and B (VNI 200) on h1 and h2, B also on h3. 100 000 frames with random
/// source MACs from A's container on h1 fill A's learning table on h2 (counted as
/// `fdb_full`); B's hosts then still learn each other: B's unicast between h1 and h2 is
/// never flooded to h3, and B's transfer works.
#[test]
fn netns_l2_random_macs_in_one_tenant_do_not_make_another_flood() {
    if skip_unless_root("netns_l2_random_macs_in_one_tenant_do_not_make_another_flood") {
        return;
    }
    let mut topo = Topology::new(3);
    let etcd = topo.start_etcd();
    etcd.put_l2_network(P, "tenant-a", 100, "vxlan");
    etcd.put_l2_network(P, "tenant-b", 200, "vxlan");
    let (h1, h2, h3) = (topo.host(0), topo.host(1), topo.host(2));
    for h in [h1, h2] {
        add_bridge(h, "bra", false);
    }
    for h in [h1, h2, h3] {
        add_bridge(h, "brb", false);
    }
    let a1 = Container::attach(h1, "bra", "a1", "192.168.0.1/24", &l2_mac(0xaa, 1, 1));
    let b1 = Container::attach(h1, "brb", "b1", "192.168.0.1/24", &l2_mac(0xbb, 1, 1));
    let b2 = Container::attach(h2, "brb", "b2", "192.168.0.2/24", &l2_mac(0xbb, 2, 1));
    // No ARP in B: every frame of B's is unicast to a container's MAC.
    b1.static_neigh(b2.ip, &b2.mac);
    b2.static_neigh(b1.ip, &b1.mac);
    let both = ["--l2", "tenant-a@bra", "--l2", "tenant-b@brb"];
    let d1 = start(h1, &etcd, &both, &["l2v100", "l2v200"]);
    let d2 = start(h2, &etcd, &both, &["l2v100", "l2v200"]);
    let d3 = start(h3, &etcd, &["--l2", "tenant-b@brb"], &["l2v200"]);
    wait_gauge(&d1, "overlayd_l2_members", "tenant-b", 2.0);
    wait_gauge(&d2, "overlayd_l2_members", "tenant-a", 1.0);

    // Tenant A: 100 000 random source MACs, learned (or refused) by h2.
    let t = Instant::now();
    random_source_macs(&a1, "eth0", 100_000);
    let a = net("tenant-a");
    let full_a = d2.metric("overlayd_l2_fdb_full_total", &[&a]);
    println!(
        "tenant A: {:.1} s; h2 learned {}, its table full for {full_a}, {} entries",
        t.elapsed().as_secs_f64(),
        d2.metric("overlayd_l2_learned_total", &[&a]),
        d2.metric("overlayd_l2_fdb_entries", &[&a])
    );
    assert!(full_a > 0.0, "A's table on h2 must have filled");

    // Tenant B afterwards: h2 learns b1 (and h1 b2) although A filled its own table.
    let cap = Capture::start(
        h3,
        "eth0",
        &format!(
            "({}) or ({})",
            vxlan_inner_dst(&b1.mac),
            vxlan_inner_dst(&b2.mac)
        ),
        50,
        Duration::from_secs(90),
    );
    let b = net("tenant-b");
    let floods = |d: &Overlayd| d.metric("overlayd_l2_tx_frames_total", &[&b, "kind=\"flood\""]);
    assert!(ping_until(&b1, b2.ip, REACH), "b1 -> b2");
    let (f1, f2) = (floods(&d1), floods(&d2));
    let (sent, got) = tcp_transfer(&b1, &b2, b2.ip, 0, 5_000_000);
    assert_eq!(sent, got, "B's transfer b1 -> b2");
    let (sent, got) = tcp_transfer(&b2, &b1, b1.ip, 0, 5_000_000);
    assert_eq!(sent, got, "B's transfer b2 -> b1");
    let seen = cap.finish(Duration::from_millis(300));
    println!(
        "tenant B: floods h1 {f1} -> {}, h2 {f2} -> {}; at h3 {} of B's unicast frames",
        floods(&d1),
        floods(&d2),
        seen.len()
    );
    // At most the first frame each way, sent before either side had learned the other.
    assert!(seen.len() <= 2, "B's unicast was flooded to h3: {seen:?}");
    assert_eq!(floods(&d1), f1, "h1 flooded B's traffic after learning");
    assert_eq!(floods(&d2), f2, "h2 flooded B's traffic after learning");
    assert_eq!(d2.metric("overlayd_l2_fdb_full_total", &[&b]), 0.0);
    drop((d1, d2, d3));
}
