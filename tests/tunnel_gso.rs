//! The tunnel-GSO transmit path (Linux ≥ 6.17): whole encapsulated super-packets handed to
//! the kernel through the TAP `ovgso0`, checked end to end in namespaces — bytes arrive
//! intact, the path is the one the switch asked for (metrics), a kernel VXLAN peer takes
//! what it sends, and where the host refuses it the daemon says so or falls back.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;

const READY: Duration = Duration::from_secs(30);
const MB: u64 = 1_000_000;
const METRICS: &str = "127.0.0.1:9108";

fn args(backend: &str, etcd: &Etcd, mode: &str) -> Vec<String> {
    let mut a = overlayd_args(backend, etcd);
    a.extend(["--tunnel-gso", mode, "--metrics-addr", METRICS].map(String::from));
    a
}

fn tunnel_writes(d: &Overlayd) -> f64 {
    d.metric("overlayd_tunnel_gso_writes_total", &[])
}

fn tunnel_gauge(d: &Overlayd) -> f64 {
    d.metric("overlayd_offload_enabled", &["offload=\"tunnel_gso\""])
}

/// Two ready nodes of `backend` with `--tunnel-gso mode` that ping each other: the daemons,
/// their overlay addresses (then etcd, in drop order).
fn nodes(topo: &mut Topology, backend: &str, mode: &str) -> (Vec<Overlayd>, Vec<Ipv4Addr>, Etcd) {
    let etcd = topo.start_etcd();
    let mut ds: Vec<Overlayd> = (0..2)
        .map(|i| Overlayd::spawn(topo.host(i), args(backend, &etcd, mode)))
        .collect();
    let ips: Vec<Ipv4Addr> = ds
        .iter_mut()
        .map(|d| overlay_ip_of(&d.wait_ready(READY)))
        .collect();
    assert!(
        ping_until(topo.host(0), ips[1], Duration::from_secs(15)),
        "{backend}: ping"
    );
    (ds, ips, etcd)
}

/// [`nodes`], then byte-identical TCP both ways.
fn pair(topo: &mut Topology, backend: &str, mode: &str) -> (Vec<Overlayd>, Etcd) {
    let (ds, ips, etcd) = nodes(topo, backend, mode);
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), ips[1], 0, 30 * MB);
    assert_eq!(sent, got, "{backend} {mode}: 30 MB h1 -> h2 byte-identical");
    let (sent, got) = tcp_transfer(topo.host(1), topo.host(0), ips[0], 0, 10 * MB);
    assert_eq!(sent, got, "{backend} {mode}: 10 MB h2 -> h1 byte-identical");
    (ds, etcd)
}

#[test]
fn netns_tunnel_gso_vxlan_on() {
    if skip_unless_root("netns_tunnel_gso_vxlan_on") {
        return;
    }
    let mut topo = Topology::new(2);
    // Global forwarding off: the TAP's own forwarding setting is what routes its packets.
    for i in 0..2 {
        topo.host(i).sysctl("net.ipv4.ip_forward", "0");
    }
    let (mut ds, _) = pair(&mut topo, "vxlan", "on");
    for (i, d) in ds.iter().enumerate() {
        assert_eq!(tunnel_gauge(d), 1.0, "h{}: tunnel GSO reported on", i + 1);
        assert!(
            topo.host(i).has_link("ovgso0"),
            "h{}: the TAP exists",
            i + 1
        );
    }
    eprintln!(
        "tunnel GSO writes: h1 {}, h2 {}; send calls h1 {}",
        tunnel_writes(&ds[0]),
        tunnel_writes(&ds[1]),
        ds[0].metric("overlayd_send_calls_total", &[])
    );
    assert!(
        tunnel_writes(&ds[0]) > 100.0,
        "h1 sent its super-packets through the TAP: {}",
        tunnel_writes(&ds[0])
    );
    assert_eq!(
        topo.host(0)
            .run(&["sysctl", "-n", "net.ipv4.ip_forward"])
            .trim(),
        "0",
        "nothing host-wide was changed"
    );
    for (i, d) in ds.iter_mut().enumerate() {
        assert!(d
            .terminate(Duration::from_secs(5))
            .is_some_and(|s| s.success()));
        assert!(
            !topo.host(i).has_link("ovgso0"),
            "h{}: the TAP goes on exit",
            i + 1
        );
    }
}

#[test]
fn netns_tunnel_gso_off_segments_in_userspace() {
    if skip_unless_root("netns_tunnel_gso_off_segments_in_userspace") {
        return;
    }
    let mut topo = Topology::new(2);
    let (ds, _) = pair(&mut topo, "vxlan", "off");
    for (i, d) in ds.iter().enumerate() {
        assert_eq!(tunnel_gauge(d), 0.0, "h{}: reported off", i + 1);
        assert_eq!(tunnel_writes(d), 0.0, "h{}: nothing through a TAP", i + 1);
        assert!(!topo.host(i).has_link("ovgso0"), "h{}: no TAP made", i + 1);
        assert!(
            d.metric("overlayd_send_calls_total", &[]) > 0.0,
            "h{}: sent on its sockets",
            i + 1
        );
    }
}

#[test]
fn netns_tunnel_gso_udp_backend() {
    if skip_unless_root("netns_tunnel_gso_udp_backend") {
        return;
    }
    let mut topo = Topology::new(2);
    let (ds, _) = pair(&mut topo, "udp", "on");
    assert!(
        tunnel_writes(&ds[0]) > 100.0,
        "flannel's udp format through the TAP"
    );
}

/// A flannel-style kernel VXLAN node takes what the kernel segments for us, and we take its
/// whole tunnel-GSO frames back.
#[test]
fn netns_tunnel_gso_interop_kernel_vxlan() {
    if skip_unless_root("netns_tunnel_gso_interop_kernel_vxlan") {
        return;
    }
    let (d, _kernel, _etcd, _topo) =
        interop_kernel_vxlan(&["--tunnel-gso", "on", "--metrics-addr", METRICS]);
    assert!(tunnel_writes(&d) > 100.0, "the kernel segmented for us");
}

/// Dual stack (vxlan): IPv6 crosses the IPv6 underlay, and its super-packets go whole to
/// the kernel with IPv6 outer headers (GSO_UDP_TUNNEL_IPV6, routed out by the TAP's own
/// IPv6 forwarding); IPv6 TCP arrives byte for byte both ways, with global IPv6 forwarding
/// off.
#[test]
fn netns_tunnel_gso_ipv6_underlay() {
    if skip_unless_root("netns_tunnel_gso_ipv6_underlay") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    put_dual_stack_config(&etcd, ETCD_PREFIX, "vxlan");
    for i in 0..2 {
        add_underlay_ipv6(topo.host(i), i);
        topo.host(i).sysctl("net.ipv6.conf.all.forwarding", "0");
    }
    let mut ds: Vec<Overlayd> = (0..2)
        .map(|i| Overlayd::spawn(topo.host(i), args("vxlan", &etcd, "on")))
        .collect();
    let mut v6 = Vec::new();
    for d in ds.iter_mut() {
        d.wait_ready(READY);
        v6.push(
            ipv6_subnet_in(d.subnet_file())
                .expect("dual stack")
                .network(),
        );
    }
    for (i, d) in ds.iter().enumerate() {
        assert_eq!(
            d.metric("overlayd_offload_enabled", &["offload=\"tunnel_gso_ipv6\""]),
            1.0,
            "h{}: IPv6 outer headers through the TAP",
            i + 1
        );
    }
    assert!(ping_until(topo.host(0), v6[1], Duration::from_secs(15)));
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), v6[1], 0, 30 * MB);
    assert_eq!(sent, got, "30 MB over IPv6 h1 -> h2");
    let (sent, got) = tcp_transfer(topo.host(1), topo.host(0), v6[0], 0, 10 * MB);
    assert_eq!(sent, got, "10 MB over IPv6 h2 -> h1");
    assert!(
        tunnel_writes(&ds[0]) > 100.0,
        "the kernel segmented IPv6-underlay super-packets ({})",
        tunnel_writes(&ds[0])
    );
}

/// IPv6 only (udp, no IPv4 anywhere on the underlay): the TAP works with IPv6 outer headers
/// alone, `--tunnel-gso on` starts, and flannel's udp format crosses it.
#[test]
fn netns_tunnel_gso_ipv6_only() {
    if skip_unless_root("netns_tunnel_gso_ipv6_only") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = ipv6_only_underlay(&mut topo);
    etcd.put(
        &format!("{ETCD_PREFIX}/config"),
        &ipv6_only_config(OVERLAY_NETWORK6, "udp"),
    );
    let mut ds: Vec<Overlayd> = (0..2)
        .map(|i| Overlayd::spawn(topo.host(i), args("udp", &etcd, "on")))
        .collect();
    let v6: Vec<_> = ds
        .iter_mut()
        .map(|d| wait_ready6(d, READY).network())
        .collect();
    assert_eq!(tunnel_gauge(&ds[0]), 0.0, "no IPv4 outer headers");
    assert_eq!(
        ds[0].metric("overlayd_offload_enabled", &["offload=\"tunnel_gso_ipv6\""]),
        1.0
    );
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), v6[1], 0, 20 * MB);
    assert_eq!(sent, got, "20 MB over the IPv6-only underlay");
    assert!(tunnel_writes(&ds[0]) > 100.0, "{}", tunnel_writes(&ds[0]));
}

/// The userspace-segmenting path (the fallback) interoperates with the kernel's VXLAN too.
#[test]
fn netns_tunnel_gso_off_interop_kernel_vxlan() {
    if skip_unless_root("netns_tunnel_gso_off_interop_kernel_vxlan") {
        return;
    }
    let (d, _kernel, _etcd, _topo) =
        interop_kernel_vxlan(&["--tunnel-gso", "off", "--metrics-addr", METRICS]);
    assert_eq!(tunnel_writes(&d), 0.0, "segmented in userspace");
}

/// A strict host-wide rp_filter makes the TAP unusable: `on` refuses to start naming it,
/// `auto` falls back to userspace segmentation and carries traffic.
#[test]
fn netns_tunnel_gso_refused_by_the_host() {
    if skip_unless_root("netns_tunnel_gso_refused_by_the_host") {
        return;
    }
    let mut topo = Topology::new(2);
    for i in 0..2 {
        topo.host(i).sysctl("net.ipv4.conf.all.rp_filter", "1");
    }
    let etcd = topo.start_etcd();
    let mut strict = Overlayd::spawn(topo.host(0), args("vxlan", &etcd, "on"));
    let st = strict.wait_exit(Duration::from_secs(20));
    assert!(
        st.is_some_and(|s| !s.success()),
        "--tunnel-gso on must not start"
    );
    let log = strict.log();
    assert!(
        log.contains("rp_filter") && log.contains("--tunnel-gso auto"),
        "the error names the setting and the way out: {log}"
    );
    drop(strict);
    let mut ds: Vec<Overlayd> = (0..2)
        .map(|i| Overlayd::spawn(topo.host(i), args("vxlan", &etcd, "auto")))
        .collect();
    let ips: Vec<Ipv4Addr> = ds
        .iter_mut()
        .map(|d| overlay_ip_of(&d.wait_ready(READY)))
        .collect();
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), ips[1], 0, 10 * MB);
    assert_eq!(sent, got, "auto fell back and carries traffic");
    assert_eq!(tunnel_gauge(&ds[0]), 0.0);
    assert_eq!(tunnel_writes(&ds[0]), 0.0);
}

/// Inner UDP with GSO (what QUIC stacks send): the TUN hands overlayd 19 KiB UDP
/// super-packets (USO), which arrive at the peer's application as the 1200-byte datagrams
/// they were, every one, intact.
#[test]
fn netns_inner_udp_gso_is_carried() {
    if skip_unless_root("netns_inner_udp_gso_is_carried") {
        return;
    }
    let mut topo = Topology::new(2);
    let (ds, ips, _etcd) = nodes(&mut topo, "vxlan", "auto");
    assert_eq!(
        ds[0].metric("overlayd_offload_enabled", &["offload=\"tun_uso\""]),
        1.0,
        "the TUN hands over UDP super-packets"
    );
    const SEG: usize = 1200;
    const PER_SEND: usize = 16;
    const SENDS: usize = 100;
    // Receiver: counts datagrams whose bytes match what the sender wrote, until 2 s of quiet.
    let receiver = format!(
        r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("{ip}", 7000))
s.settimeout(5)
ok = bad = 0
try:
    while True:
        d = s.recv(65535)
        s.settimeout(2)
        (n,) = struct.unpack("!I", d[:4])
        if len(d) == {SEG} and d[4:] == bytes([n % 251]) * ({SEG} - 4):
            ok += 1
        else:
            bad += 1
except socket.timeout:
    pass
print(ok, bad)
"#,
        ip = ips[1]
    );
    let sender = format!(
        r#"
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, {SEG})  # SOL_UDP, UDP_SEGMENT
n = 0
for k in range({SENDS}):
    buf = b""
    for j in range({PER_SEND}):
        buf += struct.pack("!I", n) + bytes([n % 251]) * ({SEG} - 4)
        n += 1
    s.sendto(buf, ("{ip}", 7000))
    time.sleep(0.005)
print(n)
"#,
        ip = ips[1]
    );
    let rx = topo
        .host(1)
        .command("timeout")
        .args(["30", "python3", "-c", &receiver])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("receiver");
    std::thread::sleep(Duration::from_millis(500));
    let sent = topo
        .host(0)
        .run(&["timeout", "20", "python3", "-c", &sender]);
    let out = rx.wait_with_output().expect("receiver output");
    let got = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        sent.trim(),
        (SENDS * PER_SEND).to_string(),
        "sender sent all"
    );
    assert_eq!(
        got.trim(),
        format!("{} 0", SENDS * PER_SEND),
        "every datagram arrived intact (ok bad)"
    );
}

/// GRE has no GSO, but a NIC that merges GRE (GRO) — or IP reassembly, as here — hands the
/// raw socket one packet far larger than the underlay MTU. Receive slots hold 64 KiB: a
/// 30 000-byte inner datagram from a peer arrives whole, not cut at 9 KiB and dropped.
#[test]
fn netns_gre_receives_frames_larger_than_the_mtu_whole() {
    if skip_unless_root("netns_gre_receives_frames_larger_than_the_mtu_whole") {
        return;
    }
    let mut topo = Topology::new(2);
    let (ds, ips, _etcd) = nodes(&mut topo, "gre", "auto");
    let receiver = format!(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{ip}", 7002))
s.settimeout(10)
d = s.recv(65535)
print(len(d), d == bytes(i % 253 for i in range(30000)))
"#,
        ip = ips[0]
    );
    // h2 sends one GRE packet (key 1, as the backend's VNI) carrying an IPv4/UDP datagram
    // of 30 000 bytes from its own overlay address: the kernel fragments it on the way out
    // and h1's kernel reassembles it before the raw socket sees it.
    let sender = format!(
        r#"
import socket, struct
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
data = bytes(i % 253 for i in range(30000))
src, dst = socket.inet_aton("{src}"), socket.inet_aton("{dst}")
udp = struct.pack("!HHHH", 40000, 7002, 8 + len(data), 0) + data
ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst))
ip[10:12] = struct.pack("!H", csum(bytes(ip)))
gre = struct.pack("!HHI", 0x2000, 0x0800, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
s.sendto(gre + bytes(ip) + udp, ("{peer}", 0))
print("sent")
"#,
        src = ips[1],
        dst = ips[0],
        peer = topo.host(0).ip
    );
    let rx = topo
        .host(0)
        .command("timeout")
        .args(["20", "python3", "-c", &receiver])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("receiver");
    std::thread::sleep(Duration::from_millis(500));
    topo.host(1)
        .run(&["timeout", "10", "python3", "-c", &sender]);
    let out = rx.wait_with_output().expect("receiver output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "30000 True",
        "the 30 000-byte datagram arrived whole"
    );
    assert_eq!(
        ds[0].metric("overlayd_drops_total", &["reason=\"truncated\""]),
        0.0
    );
}

/// A FORWARD policy of DROP (as Docker sets it) would drop what the kernel routes from the
/// TAP: overlayd's forward rules accept it (`-i ovgso0`), and with those rules turned off
/// the daemon does not use the TAP at all rather than lose every super-packet.
#[test]
fn netns_tunnel_gso_under_a_forward_drop_policy() {
    if skip_unless_root("netns_tunnel_gso_under_a_forward_drop_policy") {
        return;
    }
    for (forward_rules, tunnel) in [("true", 1.0), ("false", 0.0)] {
        let mut topo = Topology::new(2);
        for i in 0..2 {
            topo.host(i).run(&["iptables", "-P", "FORWARD", "DROP"]);
        }
        let etcd = topo.start_etcd();
        let mut ds: Vec<Overlayd> = (0..2)
            .map(|i| {
                let mut a = args("vxlan", &etcd, "auto");
                a.push(format!("--iptables-forward-rules={forward_rules}"));
                Overlayd::spawn(topo.host(i), a)
            })
            .collect();
        let ips: Vec<Ipv4Addr> = ds
            .iter_mut()
            .map(|d| overlay_ip_of(&d.wait_ready(READY)))
            .collect();
        let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), ips[1], 0, 10 * MB);
        assert_eq!(
            sent, got,
            "forward rules {forward_rules}: 10 MB byte-identical"
        );
        assert_eq!(
            tunnel_gauge(&ds[0]),
            tunnel,
            "forward rules {forward_rules}"
        );
        assert_eq!(tunnel_writes(&ds[0]) > 0.0, tunnel == 1.0);
        let rules = topo.host(0).output(&["iptables", "-S", "OVERLAYD-FWD"]);
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert_eq!(
            rules.contains("-i ovgso0"),
            tunnel == 1.0,
            "forward rules {forward_rules}: {rules}"
        );
    }
}
