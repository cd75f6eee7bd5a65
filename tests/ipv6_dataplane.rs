//! The IPv6 data plane, end to end in namespaces: dual-stack clusters of three overlayd
//! nodes on every backend carry IPv4 and IPv6 (pings both ways, byte-checked TCP over
//! IPv6), the receive checks refuse IPv6 from the wrong node exactly as for IPv4 (a
//! crafted datagram counted as `spoofed_source`), and a destination without a lease gets an
//! ICMPv6 no-route at once.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use overlayd::backend::vxlan::stable_vtep_mac;

const READY: Duration = Duration::from_secs(30);
const MB: u64 = 1_000_000;
const METRICS: &str = "127.0.0.1:9108";

/// A dual-stack cluster: the daemons, each node's overlay addresses (IPv4 and IPv6: the
/// subnets' network addresses, on the device), then etcd and the namespaces (drop order).
struct Cluster {
    ds: Vec<Overlayd>,
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    _etcd: Etcd,
    topo: Topology,
}

/// `n` nodes of `backend` with flannel's dual-stack config, each with an IPv6 underlay
/// address beside its IPv4 one, all ready.
fn dual_stack_cluster(backend: &str, n: usize) -> Cluster {
    let mut topo = Topology::new(n);
    let etcd = topo.start_etcd();
    put_dual_stack_config(&etcd, ETCD_PREFIX, backend);
    for i in 0..n {
        add_underlay_ipv6(topo.host(i), i);
    }
    let mut ds: Vec<Overlayd> = (0..n)
        .map(|i| {
            let mut a = overlayd_args(backend, &etcd);
            a.extend(["--metrics-addr", METRICS].map(String::from));
            Overlayd::spawn(topo.host(i), a)
        })
        .collect();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for d in ds.iter_mut() {
        v4.push(overlay_ip_of(&d.wait_ready(READY)));
        let sn6 = ipv6_subnet_in(d.subnet_file()).expect("a dual-stack node has an IPv6 subnet");
        v6.push(sn6.network());
    }
    Cluster {
        ds,
        v4,
        v6,
        _etcd: etcd,
        topo,
    }
}

/// Every node pings every other over IPv4 and IPv6; 20 MB of TCP over IPv6 from h1 to h2
/// and 5 MB from h3 to h1 arrive byte for byte; no node says IPv6 is not forwarded.
fn carries_ipv6(backend: &str) {
    let c = dual_stack_cluster(backend, 3);
    let t = Instant::now();
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let from = c.topo.host(i);
            assert!(
                ping_until(from, c.v4[j], Duration::from_secs(15)),
                "{backend}: h{} -> h{} over IPv4",
                i + 1,
                j + 1
            );
            assert!(
                ping_until(from, c.v6[j], Duration::from_secs(15)),
                "{backend}: h{} -> h{} ({}) over IPv6",
                i + 1,
                j + 1,
                c.v6[j]
            );
        }
    }
    let (h1, h2, h3) = (c.topo.host(0), c.topo.host(1), c.topo.host(2));
    let tr = tcp_transfer_stats(h1, h2, c.v6[1], 0, 20 * MB);
    assert_eq!(tr.sent, tr.received, "{backend}: 20 MB over IPv6 h1 -> h2");
    assert_eq!(tr.bytes_received, 20 * MB);
    let tr3 = tcp_transfer_stats(h3, h1, c.v6[0], 0, 5 * MB);
    assert_eq!(tr3.sent, tr3.received, "{backend}: 5 MB over IPv6 h3 -> h1");
    eprintln!(
        "{backend}: pings in {:?}; 20 MB IPv6 TCP h1 -> h2 in {:?}",
        t.elapsed(),
        tr.elapsed
    );
    for (i, d) in c.ds.iter().enumerate() {
        let log = d.log();
        assert!(
            !log.contains("does not forward IPv6"),
            "h{}: still warns that IPv6 is not forwarded:\n{log}",
            i + 1
        );
        assert_eq!(
            d.metric("overlayd_ipv6_peers", &[]),
            2.0,
            "h{}: two IPv6 peers",
            i + 1
        );
        assert_eq!(
            d.metric("overlayd_drops_total", &["reason=\"spoofed_source\""]),
            0.0,
            "h{}: nothing legitimate refused",
            i + 1
        );
    }
    // Where the kernel segments whole super-packets (udp and vxlan, Linux >= 6.17), the
    // IPv6 stream went that way: nothing else here is a super-packet.
    let d1 = &c.ds[0];
    if d1.metric("overlayd_offload_enabled", &["offload=\"tunnel_gso\""]) == 1.0 {
        assert!(
            d1.metric("overlayd_tunnel_gso_writes_total", &[]) > 0.0,
            "{backend}: IPv6 super-packets through the tunnel-GSO TAP"
        );
    }
    // The IPv6 bytes are counted on the IPv6 peer entries.
    let rx6 = c.ds[1].metric(
        "overlayd_peer_bytes_total",
        &[&format!("peer=\"{}/64\"", c.v6[0]), "direction=\"rx\""],
    );
    assert!(
        rx6 >= (20 * MB) as f64,
        "h2 counted {rx6} bytes from h1's IPv6 subnet"
    );
}

#[test]
fn netns_dual_stack_vxlan_carries_ipv6() {
    if skip_unless_root("netns_dual_stack_vxlan_carries_ipv6") {
        return;
    }
    carries_ipv6("vxlan");
}

#[test]
fn netns_dual_stack_udp_carries_ipv6() {
    if skip_unless_root("netns_dual_stack_udp_carries_ipv6") {
        return;
    }
    carries_ipv6("udp");
}

#[test]
fn netns_dual_stack_gre_carries_ipv6() {
    if skip_unless_root("netns_dual_stack_gre_carries_ipv6") {
        return;
    }
    carries_ipv6("gre");
}

/// Waits until `d`'s drop counter for `reason` reaches `want` (bounded).
fn drops_reach(d: &Overlayd, reason: &str, want: f64) -> f64 {
    let label = format!("reason=\"{reason}\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = d.metric("overlayd_drops_total", &[&label]);
        if n >= want || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Hand-built VXLAN datagrams to h1 carrying IPv6 over the IPv4 underlay: from h3 with an
/// inner source in h3's own IPv6 subnet the packet reaches a socket on h1; the same from
/// h3 with a source in h2's subnet is counted as `spoofed_source`, and one to an address
/// outside h1's subnet as `no_route`; neither reaches h1. A packet from h1 to an IPv6
/// subnet nobody holds is answered at once with ICMPv6 no-route.
#[test]
fn netns_ipv6_receive_checks() {
    if skip_unless_root("netns_ipv6_receive_checks") {
        return;
    }
    let c = dual_stack_cluster("vxlan", 3);
    let (h1, h3) = (c.topo.host(0), c.topo.host(2));
    assert!(ping_until(h3, c.v6[0], Duration::from_secs(15)));
    let d1 = &c.ds[0];
    // h1's VTEP on the IPv4 underlay: its BackendData MAC.
    let mac1 = stable_vtep_mac(host_ip(0), 1);
    let mac3 = stable_vtep_mac(host_ip(2), 1);
    // A socket on h1's IPv6 overlay address.
    let dst = c.v6[0];
    let rx = h1
        .in_ns(move || UdpSocket::bind((dst, 7777)))
        .expect("bind on h1's overlay address");
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let frame = |src: Ipv6Addr, to: Ipv6Addr, what: &[u8]| {
        vxlan_datagram(1, &udp6_frame(mac1, mac3, src, to, 5555, 7777, what))
    };
    let from = SocketAddr::from((host_ip(2), 40001));
    let to = SocketAddr::from((host_ip(0), 8472));
    let host_in = |sn: Ipv6Addr| Ipv6Addr::from(u128::from(sn) + 0x42);
    let got = |rx: &UdpSocket| {
        let mut buf = [0u8; 64];
        let mut seen = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            seen.push(buf[..n].to_vec());
        }
        seen
    };

    // The control: h3 speaking for its own subnet is delivered.
    send_udp_from(h3, from, to, frame(host_in(c.v6[2]), dst, b"legit"), 1);
    assert_eq!(
        got(&rx),
        vec![b"legit".to_vec()],
        "a valid crafted datagram arrives"
    );

    // h3 speaking for h2's subnet: spoofed.
    let spoofed0 = d1.metric("overlayd_drops_total", &["reason=\"spoofed_source\""]);
    send_udp_from(h3, from, to, frame(host_in(c.v6[1]), dst, b"spoof"), 3);
    let spoofed = drops_reach(d1, "spoofed_source", spoofed0 + 3.0) - spoofed0;
    assert_eq!(
        spoofed, 3.0,
        "three IPv6 datagrams with h2's source from h3"
    );
    // To an address that is not in h1's subnet: no route.
    let noroute0 = d1.metric("overlayd_drops_total", &["reason=\"no_route\""]);
    send_udp_from(
        h3,
        from,
        to,
        frame(host_in(c.v6[2]), c.v6[1], b"elsewhere"),
        2,
    );
    let noroute = drops_reach(d1, "no_route", noroute0 + 2.0) - noroute0;
    assert_eq!(
        noroute, 2.0,
        "two IPv6 datagrams for h2's subnet sent to h1"
    );
    assert!(got(&rx).is_empty(), "nothing refused reached h1");

    // From h1 to an IPv6 subnet without a lease: ICMPv6 destination unreachable, no route.
    let nobody = Ipv6Addr::new(0xfd00, 0x10, 0, 0xf0, 0, 0, 0, 1);
    let out = h1.output(&["ping", "-n", "-c", "1", "-W", "2", &nobody.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("No route") || text.contains("Destination unreachable"),
        "ping reports the ICMPv6 error: {text}"
    );
    assert!(d1.metric("overlayd_icmp_unreachable_sent_total", &[]) >= 1.0);
}
