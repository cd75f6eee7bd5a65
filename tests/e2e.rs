//! End-to-end tests of the daemon: real etcd, real TUN devices, real packets between network
//! namespaces (made and removed by the harness in `tests/common`).

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const READY: Duration = Duration::from_secs(30);
const MB: u64 = 1_000_000;

/// Three hosts on one switch, every pair pings both ways, and 50 MB cross byte-identical.
fn three_hosts(backend: &str) {
    let mut topo = Topology::new(3);
    let etcd = topo.start_etcd();
    let mut daemons: Vec<Overlayd> = (0..3)
        .map(|i| Overlayd::spawn(topo.host(i), overlayd_args(backend, &etcd)))
        .collect();
    let subnets: Vec<String> = daemons.iter_mut().map(|d| d.wait_ready(READY)).collect();
    let distinct: HashSet<&String> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "three distinct subnets: {subnets:?}");
    for i in 0..3 {
        for (j, subnet) in subnets.iter().enumerate() {
            if i != j {
                let to = overlay_ip_of(subnet);
                assert!(
                    ping_until(topo.host(i), to, Duration::from_secs(15)),
                    "{backend}: h{} cannot ping h{} at {to}",
                    i + 1,
                    j + 1
                );
            }
        }
    }
    let (sent, got) = tcp_transfer(
        topo.host(0),
        topo.host(1),
        overlay_ip_of(&subnets[1]),
        0,
        50 * MB,
    );
    assert_eq!(
        sent, got,
        "{backend}: 50 MB h1 -> h2 must arrive byte-identical"
    );
    let (sent, got) = tcp_transfer(
        topo.host(2),
        topo.host(0),
        overlay_ip_of(&subnets[0]),
        0,
        10 * MB,
    );
    assert_eq!(
        sent, got,
        "{backend}: 10 MB h3 -> h1 must arrive byte-identical"
    );
    for d in daemons.iter_mut() {
        let st = d.terminate(Duration::from_secs(5));
        assert!(
            st.is_some_and(|s| s.success()),
            "{backend}: clean exit on SIGTERM"
        );
    }
    for i in 0..3 {
        let dev = if backend == "udp" {
            "flannel0"
        } else if backend == "vxlan" {
            "flannel.1"
        } else {
            "ovgre.1"
        };
        assert!(
            !topo.host(i).has_link(dev),
            "{backend}: device {dev} removed on exit"
        );
    }
    // The leases stay, so a restart takes the same subnets.
    assert_eq!(etcd.leases(ETCD_PREFIX).len(), 3);
}

#[test]
fn netns_three_hosts_udp() {
    if skip_unless_root("netns_three_hosts_udp") {
        return;
    }
    three_hosts("udp");
}

#[test]
fn netns_three_hosts_vxlan() {
    if skip_unless_root("netns_three_hosts_vxlan") {
        return;
    }
    three_hosts("vxlan");
}

#[test]
fn netns_three_hosts_gre() {
    if skip_unless_root("netns_three_hosts_gre") {
        return;
    }
    three_hosts("gre");
}

/// gre on the wire: from h1's address to h2's, protocol 47, TTL 64, DF clear (the socket
/// sends without path-MTU discovery, as the kernel's VXLAN), an ID per packet, a valid
/// outer checksum (tcpdump -v says "bad cksum" otherwise), the GRE key present; pings and a
/// TCP transfer cross it whole.
#[test]
fn netns_gre_outer_header_on_the_wire() {
    if skip_unless_root("netns_gre_outer_header_on_the_wire") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let mut d1 = Overlayd::spawn(topo.host(0), overlayd_args("gre", &etcd));
    let mut d2 = Overlayd::spawn(topo.host(1), overlayd_args("gre", &etcd));
    d1.wait_ready(READY);
    let to = overlay_ip_of(&d2.wait_ready(READY));
    let cap = gre_capture(&topo);
    assert!(ping_until(topo.host(0), to, Duration::from_secs(15)));
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), to, 0, 2 * MB);
    assert_eq!(sent, got, "2 MB over gre arrive byte-identical");
    let sent_by_h1 = h1_gre_headers(&topo, cap, 10);
    assert!(
        sent_by_h1.iter().any(|l| !l.contains(", id 0,")),
        "the kernel gives each packet an ID: {sent_by_h1:#?}"
    );
}

/// `Ip: OutRequests` of `ns`'s /proc/net/snmp: the IP packets its stack sent.
fn ip_out_requests(ns: &Netns) -> u64 {
    let snmp = ns.run(&["cat", "/proc/net/snmp"]);
    let ip: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Ip:")).collect();
    let (names, values) = (ip[0].split_whitespace(), ip[1].split_whitespace());
    let (_, v) = names
        .zip(values)
        .find(|(n, _)| *n == "OutRequests")
        .unwrap();
    v.parse().unwrap()
}

/// The packets `ns`'s eth0 sent.
fn eth0_tx_packets(ns: &Netns) -> u64 {
    ns.run(&["cat", "/sys/class/net/eth0/statistics/tx_packets"])
        .trim()
        .parse()
        .unwrap()
}

/// gre's link-layer send (`--gre-link-tx`): once h1's kernel has resolved h2 (the first
/// pings go through the raw socket, which makes it), h1 sends to h2 through its AF_PACKET socket: the gauge counts
/// the peer, h1's eth0 sends the transfer's GRE packets while h1's IP stack counts none of
/// them, the outer header on the wire is as the kernel's (TTL 64, no flags, a valid
/// checksum, an ID per packet, the key), and 4 MB arrive byte-identical.
#[test]
fn netns_gre_link_layer_send() {
    if skip_unless_root("netns_gre_link_layer_send") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let args = || {
        let mut a = overlayd_args("gre", &etcd);
        a.extend(["--metrics-addr", "127.0.0.1:9131", "--gre-link-tx"].map(String::from));
        a
    };
    let mut d1 = Overlayd::spawn(topo.host(0), args());
    let mut d2 = Overlayd::spawn(topo.host(1), args());
    d1.wait_ready(READY);
    let to = overlay_ip_of(&d2.wait_ready(READY));
    assert!(ping_until(topo.host(0), to, Duration::from_secs(15)));
    assert!(
        gauge_reaches(&d1, "overlayd_gre_link_peers", 1.0),
        "h1 learns h2's next hop: {}",
        d1.scrape()
    );
    let cap = gre_capture(&topo);
    let (out0, tx0) = (ip_out_requests(topo.host(0)), eth0_tx_packets(topo.host(0)));
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), to, 0, 4 * MB);
    assert_eq!(
        sent, got,
        "4 MB over gre's link-layer path arrive byte-identical"
    );
    let out = ip_out_requests(topo.host(0)) - out0;
    let tx = eth0_tx_packets(topo.host(0)) - tx0;
    // 4 MB are ~3 000 GRE packets; the raw socket's path counts each in OutRequests.
    assert!(tx > 2_500, "h1's eth0 sent the transfer: {tx} packets");
    assert!(
        out * 2 < tx,
        "h1's IP stack sent {out} packets of the {tx} on its eth0: not the link-layer path"
    );
    let sent_by_h1 = h1_gre_headers(&topo, cap, 100);
    let ids: HashSet<&str> = sent_by_h1
        .iter()
        .filter_map(|l| l.split(", id ").nth(1)?.split(',').next())
        .collect();
    assert!(
        ids.len() * 2 > sent_by_h1.len(),
        "an ID per packet: {ids:?}"
    );
    next_hop_follows_the_route(&topo, &d1, to);
}

/// `--gre-link-tx` on an L2 gre network: h1 learns the next hop toward h2, the L2 member
/// (`overlayd_l2_gre_link_peers`), and a container's 4 MB to a container on h2 leave h1's
/// eth0 without passing h1's IP stack, byte-identical.
#[test]
fn netns_l2_gre_link_layer_send() {
    if skip_unless_root("netns_l2_gre_link_layer_send") {
        return;
    }
    // Kept whole: its fields (daemons, containers, etcd, hosts) live to the end of the test.
    let pair = L2Pair::start("gre", &["--gre-link-tx"]);
    let (h1, d1, c1, c2) = (pair.topo.host(0), &pair.d1, &pair.c1, &pair.c2);
    assert!(
        ping_until(c1, c2.ip, Duration::from_secs(20)),
        "c1 pings c2"
    );
    assert!(
        gauge_reaches(d1, "overlayd_l2_gre_link_peers", 1.0),
        "h1 learns the next hop toward h2: {}",
        d1.scrape()
    );
    let (out0, tx0) = (ip_out_requests(h1), eth0_tx_packets(h1));
    let (sent, got) = tcp_transfer(c1, c2, c2.ip, 0, 4 * MB);
    assert_eq!(
        sent, got,
        "4 MB over L2 gre's link-layer path arrive byte-identical"
    );
    let (out, tx) = (ip_out_requests(h1) - out0, eth0_tx_packets(h1) - tx0);
    assert!(tx > 2_500, "h1's eth0 sent the transfer: {tx} packets");
    assert!(
        out * 2 < tx,
        "h1's IP stack sent {out} packets of the {tx} on its eth0: not the link-layer path"
    );
}

/// Whether `d`'s gauge `name` shows `want` within 10 s (a few of the 2 s checks).
fn gauge_reaches(d: &Overlayd, name: &str, want: f64) -> bool {
    wait_until(Duration::from_secs(10), || d.metric(name, &[]) == want)
}

/// h1's route to h2 moved behind a gateway that does not answer: the link-layer path stops
/// using h2's MAC within a few checks (the kernel announced the change; the remembered
/// route is asked again), and takes it up again, with traffic, when the route is back.
fn next_hop_follows_the_route(topo: &Topology, d1: &Overlayd, to: Ipv4Addr) {
    topo.host(0).ip(&format!(
        "route add {}/32 via 192.168.77.99 dev eth0",
        host_ip(1)
    ));
    assert!(
        gauge_reaches(d1, "overlayd_gre_link_peers", 0.0),
        "h2 is now behind 192.168.77.99, which has no neighbour entry: {}",
        d1.scrape()
    );
    topo.host(0).ip(&format!("route del {}/32", host_ip(1)));
    assert!(
        gauge_reaches(d1, "overlayd_gre_link_peers", 1.0),
        "the route is back, and h2's next hop with it: {}",
        d1.scrape()
    );
    assert!(ping_until(topo.host(0), to, Duration::from_secs(10)));
}

/// tcpdump -v of the GRE packets on h2's eth0 (at most 400 lines, 30 s).
fn gre_capture(topo: &Topology) -> Capture {
    Capture::start(
        topo.host(1),
        "eth0",
        "-v ip proto 47",
        400,
        Duration::from_secs(30),
    )
}

/// The lines of `cap` for h1's GRE packets to h2 (at least `min`), each checked for the
/// outer header the kernel writes: TTL 64, no flags, a valid checksum, GRE with a key.
fn h1_gre_headers(topo: &Topology, cap: Capture, min: usize) -> Vec<String> {
    let lines = cap.finish(Duration::from_millis(300));
    let ours = format!("{} > {}: GRE", topo.host(0).ip, topo.host(1).ip);
    let sent_by_h1: Vec<String> = lines.into_iter().filter(|l| l.contains(&ours)).collect();
    assert!(
        sent_by_h1.len() >= min,
        "h1's GRE packets seen: {sent_by_h1:#?}"
    );
    for l in &sent_by_h1 {
        for want in ["ttl 64,", "flags [none]", "proto GRE (47)", "key=0x"] {
            assert!(l.contains(want), "{want:?} in {l}");
        }
        assert!(!l.contains("bad cksum"), "outer checksum: {l}");
    }
    sent_by_h1
}

/// The plain path (no TUN offloads, no UDP GSO/GRO) carries the same traffic.
#[test]
fn netns_no_offload_path() {
    if skip_unless_root("netns_no_offload_path") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let mut args = overlayd_args("vxlan", &etcd);
    args.push("--no-offload".into());
    let mut d1 = Overlayd::spawn(topo.host(0), args.clone());
    let mut d2 = Overlayd::spawn(topo.host(1), args);
    let _s1 = d1.wait_ready(READY);
    let s2 = d2.wait_ready(READY);
    assert!(ping_until(
        topo.host(0),
        overlay_ip_of(&s2),
        Duration::from_secs(15)
    ));
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), overlay_ip_of(&s2), 0, 20 * MB);
    assert_eq!(sent, got);
    assert!(
        d1.log().contains("offloads=0"),
        "the forced plain path must not ask for offloads"
    );
}

/// overlayd vxlan and the kernel's VXLAN set up as flanneld does, sharing one etcd.
#[test]
fn netns_interop_kernel_vxlan() {
    if skip_unless_root("netns_interop_kernel_vxlan") {
        return;
    }
    interop_kernel_vxlan(&[]);
}

/// Joining, leaving, restarting, and the own lease deleted under a running node.
#[test]
fn netns_lifecycle() {
    if skip_unless_root("netns_lifecycle") {
        return;
    }
    let mut topo = Topology::new(3);
    let etcd = topo.start_etcd();
    let mut d1 = Overlayd::spawn(topo.host(0), overlayd_args("udp", &etcd));
    let mut d2 = Overlayd::spawn(topo.host(1), overlayd_args("udp", &etcd));
    let s1 = d1.wait_ready(READY);
    let s2 = d2.wait_ready(READY);
    assert!(ping_until(
        topo.host(0),
        overlay_ip_of(&s2),
        Duration::from_secs(15)
    ));

    // A node joining later is learned without restarting the others.
    let mut d3 = Overlayd::spawn(topo.host(2), overlayd_args("udp", &etcd));
    let s3 = d3.wait_ready(READY);
    assert!(
        ping_until(topo.host(0), overlay_ip_of(&s3), Duration::from_secs(15)),
        "h1 learns h3"
    );
    assert!(
        ping_until(topo.host(2), overlay_ip_of(&s1), Duration::from_secs(15)),
        "h3 learns h1"
    );

    // A restarted node gets its old subnet back.
    let before = d2.subnet_env().expect("subnet.env");
    assert!(d2
        .terminate(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    d2.restart();
    let again = d2.wait_ready(READY);
    assert_eq!(again, s2, "same subnet after a restart");
    assert_eq!(d2.subnet_env().expect("subnet.env"), before);
    assert!(
        ping_until(topo.host(0), overlay_ip_of(&s2), Duration::from_secs(15)),
        "traffic back after restart"
    );

    // The own lease deleted under a running node: it re-acquires the same subnet.
    let key2 = lease_key(ETCD_PREFIX, subnet_of(&s2));
    assert_eq!(etcd.del(&key2), 1);
    let t = Instant::now();
    while etcd.get(&key2).is_none() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        etcd.get(&key2).is_some(),
        "h2 re-acquired its deleted lease"
    );
    assert!(ping_until(
        topo.host(0),
        overlay_ip_of(&s2),
        Duration::from_secs(15)
    ));

    // A node that is gone and whose lease is deleted disappears from the others' forwarding:
    // its destination then gets ICMP net-unreachable.
    assert!(d3
        .terminate(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    let key3 = lease_key(ETCD_PREFIX, subnet_of(&s3));
    assert_eq!(etcd.del(&key3), 1);
    let to3 = overlay_ip_of(&s3).to_string();
    let t = Instant::now();
    let mut unreachable = false;
    while t.elapsed() < Duration::from_secs(15) {
        let out = topo
            .host(0)
            .output(&["ping", "-n", "-c", "1", "-W", "1", &to3]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("Unreachable") {
            unreachable = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        unreachable,
        "h1 answers packets to a removed peer with ICMP net-unreachable"
    );
}

/// Many acquirers racing against one etcd never share a subnet, and nobody gives up.
#[test]
fn netns_concurrent_acquisition() {
    if skip_unless_root("netns_concurrent_acquisition") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let endpoint = etcd.endpoint();
    // A /24 cut into /28s: 15 subnets between SubnetMin and SubnetMax for 12 nodes, so the
    // random choices collide often and the transactions have to settle the races.
    let subnets: Vec<String> = topo.host(0).in_ns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use overlayd::control::config::NetworkConfig;
            use overlayd::control::etcd::{EtcdOptions, Registry};
            use overlayd::control::lease::LeaseAttrs;
            let cfg = NetworkConfig::parse(
                br#"{"Network":"10.99.0.0/24","SubnetLen":28,"Backend":{"Type":"udp"}}"#,
            )
            .unwrap();
            let opts = EtcdOptions {
                endpoints: vec![endpoint],
                prefix: "/race".into(),
                ..Default::default()
            };
            let mut tasks = Vec::new();
            for i in 0..12u8 {
                let (cfg, opts) = (cfg.clone(), opts.clone());
                tasks.push(tokio::spawn(async move {
                    let reg = Registry::connect(&opts).await.unwrap();
                    let attrs = LeaseAttrs::udp(Ipv4Addr::new(10, 0, 0, i + 1));
                    reg.acquire(&cfg, &attrs, Default::default())
                        .await
                        .unwrap()
                        .subnet
                        .to_string()
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    });
    let distinct: HashSet<&String> = subnets.iter().collect();
    assert_eq!(
        distinct.len(),
        12,
        "12 acquirers, 12 distinct subnets: {subnets:?}"
    );
    assert_eq!(etcd.get_prefix("/race/subnets/").len(), 12);
}

fn overlayd_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_overlayd"))
}

/// Bad flags: one clear message naming the problem, non-zero exit, before touching anything.
#[test]
fn bad_flags_fail_clearly() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--network", "10.244.0.0/33"],
            &["--network", "10.244.0.0/33"],
        ),
        (&["--backend", "ipip"], &["ipip", "udp", "vxlan", "gre"]),
        (
            &["--network", "10.244.0.0/16", "--subnet-len", "31"],
            &["SubnetLen", "31"],
        ),
        (
            &["--network", "10.244.0.0/16", "--subnet-len", "12"],
            &["SubnetLen", "12"],
        ),
        (&["--network", "10.244.0.0/30"], &["10.244.0.0/30"]),
        (&["--subnet-len", "24"], &["--network"]),
        (&["-v", "loud"], &["loud"]),
        // flanneld's Go syntax: a bad boolean, a flag overlayd does not have.
        (&["--ip-masq=maybe"], &["-ip-masq=maybe", "true", "false"]),
        (&["-kube-subnet-mgr"], &["--kube-subnet-mgr", "etcd"]),
        (&["-no-such-flag=1"], &["-no-such-flag", "--help"]),
    ];
    for (args, needles) in cases {
        let out = overlayd_bin().args(*args).output().expect("run overlayd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        for n in *needles {
            assert!(
                err.contains(n),
                "{args:?}: message should name {n:?}, got:\n{err}"
            );
        }
        assert!(
            err.lines().filter(|l| !l.trim().is_empty()).count() <= 6,
            "{args:?}: one short message, got:\n{err}"
        );
    }
}

/// Bad network config in etcd, and a --backend that contradicts it: one clear message, exit 1.
#[test]
fn netns_bad_etcd_config_fails_clearly() {
    if skip_unless_root("netns_bad_etcd_config_fails_clearly") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            "vxlan",
            &["VNI", "16777216"],
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}"#,
            "vxlan",
            &["ipip"],
        ),
        (r#"{"Network":"10.244.0.0/33"}"#, "udp", &["Network"]),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
            "udp",
            &["SubnetLen", "31"],
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#,
            "vxlan",
            &["vxlan", "udp"],
        ),
    ];
    for (config, backend, needles) in cases {
        etcd.put(&format!("{ETCD_PREFIX}/config"), config);
        let out = topo
            .host(0)
            .command("timeout")
            .args([
                "20",
                env!("CARGO_BIN_EXE_overlayd"),
                "--backend",
                backend,
                "--etcd-endpoints",
                &etcd.endpoint(),
                "--iface",
                "eth0",
            ])
            .args(["--subnet-file", "/nonexistent/never-written.env"])
            .output()
            .expect("run overlayd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{config}: exit 1, got {:?}\n{err}",
            out.status
        );
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        assert!(
            last.starts_with("overlayd: "),
            "{config}: the error is the last line: {err}"
        );
        for n in *needles {
            assert!(
                last.contains(n),
                "{config}: message should name {n:?}, got: {last}"
            );
        }
    }
}

/// Fetches `path` from `addr` inside `ns` with a bare HTTP/1.1 request.
fn http_get(ns: &Netns, addr: &str, path: &str) -> (u16, String) {
    let (addr, path) = (addr.to_string(), path.to_string());
    ns.in_ns(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).expect("send the request");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    })
}

/// Prometheus metrics, /healthz and /readyz, and JSON logs.
#[test]
fn netns_metrics_and_health() {
    if skip_unless_root("netns_metrics_and_health") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let addr = format!("{}:9108", topo.host(0).ip);
    let mut a1 = overlayd_args("vxlan", &etcd);
    a1.extend([
        "--metrics-addr".into(),
        addr.clone(),
        "--log-format".into(),
        "json".into(),
    ]);
    let mut d1 = Overlayd::spawn(topo.host(0), a1);
    // flannel's spelling of the same listener.
    let mut a2 = overlayd_args("vxlan", &etcd);
    a2.extend([
        "--healthz-ip".into(),
        topo.host(1).ip.to_string(),
        "--healthz-port".into(),
        "9109".into(),
    ]);
    let mut d2 = Overlayd::spawn(topo.host(1), a2);
    let _s1 = d1.wait_ready(READY);
    let s2 = d2.wait_ready(READY);
    assert_eq!(http_get(topo.host(0), &addr, "/healthz").0, 200);
    assert_eq!(http_get(topo.host(0), &addr, "/readyz").0, 200);
    assert_eq!(
        http_get(
            topo.host(1),
            &format!("{}:9109", topo.host(1).ip),
            "/readyz"
        )
        .0,
        200
    );
    assert_eq!(http_get(topo.host(0), &addr, "/nope").0, 404);

    assert!(ping_until(
        topo.host(0),
        overlay_ip_of(&s2),
        Duration::from_secs(15)
    ));
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), overlay_ip_of(&s2), 0, 5 * MB);
    assert_eq!(sent, got);
    // A destination with no lease: counted as no_route, answered with ICMP.
    let _ = topo
        .host(0)
        .output(&["ping", "-n", "-c", "1", "-W", "1", "10.244.250.9"]);
    let (code, body) = http_get(topo.host(0), &addr, "/metrics");
    assert_eq!(code, 200);
    let value = |prefix: &str| -> f64 {
        body.lines()
            .find(|l| {
                l.starts_with(prefix)
                    && (!l.contains("direction") || l.contains("direction=\"tx\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {prefix} missing in:\n{body}"))
    };
    assert!(value("overlayd_packets_total{direction=\"tx\",backend=\"vxlan\"}") > 1000.0);
    assert!(value("overlayd_bytes_total{direction=\"tx\",backend=\"vxlan\"}") >= 5e6);
    assert!(value("overlayd_drops_total{reason=\"no_route\"}") >= 1.0);
    assert!(value("overlayd_icmp_unreachable_sent_total") >= 1.0);
    assert_eq!(value("overlayd_peers"), 1.0);
    assert_eq!(value("overlayd_lease_held"), 1.0);
    assert!(
        value("overlayd_lease_expiry_seconds") > 80_000.0,
        "24 h lease"
    );
    assert_eq!(value("overlayd_ready"), 1.0);
    assert_eq!(value("overlayd_offload_enabled{offload=\"udp_gso\"}"), 1.0);
    let peer = format!("overlayd_peer_bytes_total{{peer=\"{}\"", subnet_of(&s2));
    assert!(value(&peer) >= 5e6, "per-peer bytes");
    assert!(body.contains("# TYPE overlayd_drops_total counter"));
    // JSON logs: every line an object, the lease event among them.
    let log = d1.log();
    let json_lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    assert!(
        json_lines
            .iter()
            .any(|l| l.contains("\"acquired subnet lease\"")),
        "JSON log lines:\n{log}"
    );
    for l in json_lines {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

/// A plain kernel VXLAN peer (learning, a `remote`, no static entries) resolves our device
/// address with ARP: overlayd answers with its VtepMAC, and IP traffic then flows.
#[test]
fn netns_kernel_vxlan_peer_that_arps() {
    if skip_unless_root("netns_kernel_vxlan_peer_that_arps") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    etcd.put_network_config(ETCD_PREFIX, OVERLAY_NETWORK, 24, "vxlan");
    let mut d = Overlayd::spawn(topo.host(0), overlayd_args("vxlan", &etcd));
    let ours = d.wait_ready(READY);
    let (h1, h2) = (topo.host(0), topo.host(1));
    let mac = "0e:6f:76:00:02:00";
    h2.ip(&format!(
        "link add vx0 address {mac} type vxlan id 1 dstport 8472 remote {} local {} dev eth0",
        h1.ip, h2.ip
    ));
    h2.ip("link set vx0 mtu 1450 up");
    h2.ip("addr add 10.244.200.1/24 dev vx0");
    h2.ip("route add 10.244.0.0/16 dev vx0");
    // Its lease, so that overlayd accepts it as a sender and routes 10.244.200.0/24 to it.
    etcd.put(
        &lease_key(ETCD_PREFIX, "10.244.200.0/24".parse().unwrap()),
        &vxlan_lease_value(h2.ip, 1, mac),
    );
    let ours_ip = overlay_ip_of(&ours);
    assert!(
        ping_until(h2, ours_ip, Duration::from_secs(15)),
        "kernel peer pings overlayd after ARP"
    );
    let neigh = h2.ip(&format!("neigh show {ours_ip} dev vx0"));
    let our_mac = etcd
        .leases(ETCD_PREFIX)
        .into_iter()
        .find(|l| l.public_ip == h1.ip)
        .and_then(|l| l.vtep_mac)
        .expect("our lease has a VtepMAC");
    assert!(
        neigh.contains(&our_mac),
        "ARP resolved to our VtepMAC {our_mac}: {neigh}"
    );
    let (sent, got) = tcp_transfer(h2, h1, ours_ip, 0, 10 * MB);
    assert_eq!(sent, got);
}

/// A key without an etcd lease is a reservation: the node whose PublicIP it names takes
/// exactly that subnet (and leaves it without a lease); nobody else ever does.
#[test]
fn netns_reservations_are_respected() {
    if skip_unless_root("netns_reservations_are_respected") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    // A tiny network: 3 subnets between SubnetMin and SubnetMax, one reserved for h2.
    etcd.put(
        &format!("{ETCD_PREFIX}/config"),
        r#"{"Network":"10.244.0.0/22","SubnetLen":24,"Backend":{"Type":"udp"}}"#,
    );
    let reserved = lease_key(ETCD_PREFIX, "10.244.2.0/24".parse().unwrap());
    etcd.put(
        &reserved,
        &format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, topo.host(1).ip),
    );
    let mut args = overlayd_args("udp", &etcd);
    let net = args.iter().position(|a| a == "--network").unwrap();
    args.drain(net..net + 4); // the config is in etcd already
    let mut d1 = Overlayd::spawn(topo.host(0), args.clone());
    let s1 = d1.wait_ready(READY);
    assert_ne!(
        subnet_of(&s1).to_string(),
        "10.244.2.0/24",
        "h1 must not take h2's reservation"
    );
    let mut d2 = Overlayd::spawn(topo.host(1), args);
    let s2 = d2.wait_ready(READY);
    assert_eq!(
        subnet_of(&s2).to_string(),
        "10.244.2.0/24",
        "h2 takes its reservation"
    );
    let lease = etcd.ctl(&["get", &reserved, "-w", "fields"]);
    assert!(
        lease.contains("\"Lease\" : 0"),
        "the reservation stays without an etcd lease: {lease}"
    );
    assert!(ping_until(
        topo.host(0),
        overlay_ip_of(&s2),
        Duration::from_secs(15)
    ));
}

/// Flags beat the environment (OVERLAYD_* and FLANNELD_*), which beats the config file,
/// which beats the defaults. Observed through which bad value gets reported.
#[test]
fn config_file_precedence() {
    let dir = std::env::temp_dir().join(format!("ovt-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("overlayd.conf");
    // Flags that pass clap but fail right after, before touching the host.
    let fail_late = ["--network", "10.0.0.0/16", "--subnet-len", "31"];
    let run = |conf: &str, env: &[(&str, &str)], extra: &[&str]| {
        std::fs::write(&file, conf).unwrap();
        let mut c = overlayd_bin();
        c.env_remove("OVERLAYD_LOG_LEVEL")
            .env_remove("FLANNELD_LOG_LEVEL");
        c.arg("--config").arg(&file).args(fail_late).args(extra);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run overlayd");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run("log-level=loud\n", &[], &[]);
    assert_eq!(
        code,
        Some(2),
        "file value used when nothing else sets it: {err}"
    );
    assert!(err.contains("loud"), "{err}");
    let (code, err) = run("log-level=loud\n", &[("OVERLAYD_LOG_LEVEL", "debug")], &[]);
    assert_eq!(code, Some(1), "environment beats the file: {err}");
    assert!(err.contains("SubnetLen"), "{err}");
    let (code, err) = run("log-level=debug\n", &[("FLANNELD_LOG_LEVEL", "loud")], &[]);
    assert_eq!(
        code,
        Some(2),
        "FLANNELD_ environment beats the file too: {err}"
    );
    let (code, err) = run("log-level=loud\n", &[], &["-v", "info"]);
    assert_eq!(code, Some(1), "a flag beats the file: {err}");
    let (code, err) = run("what is this\n", &[], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("line 1") && err.contains("key=value"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `overlayd status`: leases from etcd joined with the local per-peer counters.
#[test]
fn netns_status_command() {
    if skip_unless_root("netns_status_command") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let addr = format!("{}:9108", topo.host(0).ip);
    let mut a1 = overlayd_args("vxlan", &etcd);
    a1.extend(["--metrics-addr".into(), addr.clone()]);
    let mut d1 = Overlayd::spawn(topo.host(0), a1);
    let mut d2 = Overlayd::spawn(topo.host(1), overlayd_args("vxlan", &etcd));
    let s1 = d1.wait_ready(READY);
    let s2 = d2.wait_ready(READY);
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), overlay_ip_of(&s2), 0, 2 * MB);
    assert_eq!(sent, got);
    let out = topo
        .host(0)
        .command(env!("CARGO_BIN_EXE_overlayd"))
        .args([
            "status",
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--metrics-addr",
            &addr,
        ])
        .output()
        .expect("overlayd status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("network 10.244.0.0/16"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&subnet_of(&s2).to_string()))
        .unwrap_or_else(|| panic!("no row for h2:\n{text}"));
    assert!(
        row.contains(&topo.host(1).ip.to_string()) && row.contains("vxlan"),
        "{row}"
    );
    let tx_bytes: u64 = row
        .split_whitespace()
        .nth(6)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(tx_bytes >= 2 * MB, "tx bytes to h2 in: {row}");
    assert!(text.contains(&subnet_of(&s1).to_string()), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("data plane: ")
            && l.contains("worker(s)")
            && l.ends_with("by flow (--steer flow)")),
        "the workers and their steering (the default): {text}"
    );
}

/// systemd `Type=notify`: READY=1 arrives on $NOTIFY_SOCKET only once subnet.env is written,
/// and STOPPING=1 on SIGTERM.
#[test]
fn netns_systemd_notify() {
    if skip_unless_root("netns_systemd_notify") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let subnet_file = dir.path().join("subnet.env");
    let mut child = topo
        .host(0)
        .command(env!("CARGO_BIN_EXE_overlayd"))
        .args(overlayd_args("udp", &etcd))
        .arg("--subnet-file")
        .arg(&subnet_file)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn overlayd");
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1"), "{msg}");
    assert!(subnet_file.exists(), "subnet.env is written before READY=1");
    assert!(signal(child.id(), "TERM"));
    let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim_end(), "STOPPING=1");
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.try_wait().unwrap().is_some_and(|s| s.success()),
        "exit 0 after SIGTERM"
    );
}

/// Collects the notify datagrams that arrive on `sock` within `window`.
fn notify_messages(sock: &std::os::unix::net::UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string()),
            Err(_) => break,
        }
    }
    out
}

/// systemd `WatchdogSec=`: WATCHDOG=1 pings arrive while the node is healthy, stop while its
/// overlay device is gone (here: deleted, and its name taken by another link so that it
/// cannot be recreated), and resume once overlayd has recreated the device.
#[test]
fn netns_systemd_watchdog_follows_health() {
    if skip_unless_root("netns_systemd_watchdog_follows_health") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let dir = TempDir::new("watchdog");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let notify_env = format!("NOTIFY_SOCKET={}", sock_path.display());
    let mut d = Overlayd::spawn_wrapped(
        topo.host(0),
        &["env", &notify_env, "WATCHDOG_USEC=6000000"],
        overlayd_args("vxlan", &etcd),
    );
    d.wait_ready(READY);
    let h = topo.host(0);
    let dev = "flannel.1";
    // Healthy: a ping every check tick (2 s).
    let msgs = notify_messages(&sock, Duration::from_secs(7));
    assert!(msgs.iter().any(|m| m.starts_with("READY=1")), "{msgs:?}");
    let pings = msgs.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 2, "pings while healthy: {msgs:?}");

    // Break it: the TUN device goes, a bridge takes its name (retried if overlayd's check
    // recreated the TUN in between).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = h.try_ip(&format!("link del {dev}"));
        if h.try_ip(&format!("link add {dev} type bridge")).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cannot replace {dev} by a bridge"
        );
    }
    // One tick may still have pinged before it noticed; after that, none.
    let _ = notify_messages(&sock, Duration::from_millis(2500));
    let msgs = notify_messages(&sock, Duration::from_secs(7));
    assert!(
        !msgs.iter().any(|m| m == "WATCHDOG=1"),
        "no ping while the device is not ours: {msgs:?}"
    );
    assert!(d.is_running(), "overlayd keeps running (systemd decides)");
    assert!(
        d.log().contains("withholding systemd watchdog pings"),
        "the log says why: {}",
        d.log()
    );
    // The bridge was not taken over: no overlay address or route on it.
    assert!(
        !h.ip(&format!("-4 addr show dev {dev}")).contains("10.244."),
        "overlayd must not configure a link it did not create"
    );

    // Repair: the name is free again, overlayd recreates its device, pings resume.
    h.ip(&format!("link del {dev}"));
    let msgs = notify_messages(&sock, Duration::from_secs(10));
    assert!(
        msgs.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2,
        "pings resume once the device is back: {msgs:?}"
    );
    assert!(h.has_link(dev));
    assert!(d.log().contains("healthy again"), "{}", d.log());
    assert!(d
        .terminate(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

/// A flanneld command line, Go flag syntax and all, starts overlayd as it is.
#[test]
fn netns_flanneld_command_line() {
    if skip_unless_root("netns_flanneld_command_line") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let dir = TempDir::new("goflags");
    let subnet_file = dir.path().join("subnet.env");
    let log = dir.path().join("overlayd.log");
    let mut child = topo
        .host(0)
        .command(env!("CARGO_BIN_EXE_overlayd"))
        .args([
            format!("-etcd-endpoints={}", etcd.endpoint()),
            format!("-etcd-prefix={ETCD_PREFIX}"),
            // flanneld's repeated -iface: tried in order, the first this host has wins.
            "-iface=nosuch0".into(),
            "-iface=eth0".into(),
            "--ip-masq=false".into(),
            "-iptables-forward-rules=false".into(),
            format!("-subnet-file={}", subnet_file.display()),
            "-subnet-lease-renew-margin".into(),
            "30".into(),
            "-v=2".into(),
            format!("--network={OVERLAY_NETWORK}"),
            "-backend=udp".into(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn overlayd");
    let subnet = wait_ready(&subnet_file, READY);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = signal(child.id(), "TERM");
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(subnet.is_some(), "not ready; log:\n{log_text}");
    let env = read_subnet_env(&subnet_file).expect("subnet.env");
    assert_eq!(env["FLANNEL_IPMASQ"], "false");
    assert!(
        log_text.contains("DEBUG"),
        "-v=2 is debug logging:\n{log_text}"
    );
    assert!(
        log_text.contains("trying the next --iface") && log_text.contains("iface=eth0"),
        "nosuch0 skipped, eth0 taken:\n{log_text}"
    );
}

/// flanneld's `--iface-can-reach` and `--iface-regex` (Go syntax): h1 takes as its underlay
/// the interface, and as PublicIP the source address, by which it reaches h2's address on a
/// link of their own (10.88.0.0/24, beside the switch); h2 the interface whose address the
/// pattern matches. The overlay runs over that link. An unreachable address, or a pattern
/// that matches nothing, is one clear error.
#[test]
fn netns_iface_can_reach_and_iface_regex_pick_the_underlay() {
    if skip_unless_root("netns_iface_can_reach_and_iface_regex_pick_the_underlay") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let (h1, h2) = (topo.host(0), topo.host(1));
    let link = unique_name("ul");
    h1.ip(&format!(
        "link add {link} type veth peer name ul1 netns {}",
        h2.name()
    ));
    h1.ip(&format!("link set {link} name ul1"));
    for (h, a) in [(h1, "10.88.0.1/24"), (h2, "10.88.0.2/24")] {
        h.ip(&format!("addr add {a} dev ul1"));
        h.ip("link set ul1 up");
    }
    let node = |h: &Netns, flag: &str| {
        let mut a = overlayd_args("vxlan", &etcd);
        let i = a.iter().position(|w| w == "--iface").expect("--iface");
        a.drain(i..i + 2);
        a.push(flag.to_owned());
        Overlayd::spawn(h, a)
    };
    let mut d1 = node(h1, "-iface-can-reach=10.88.0.2");
    let mut d2 = node(h2, r"-iface-regex=^10\.88\.");
    d1.wait_ready(READY);
    let s2 = d2.wait_ready(READY);
    let ips: Vec<Ipv4Addr> = etcd
        .leases(ETCD_PREFIX)
        .iter()
        .map(|l| l.public_ip)
        .collect();
    assert!(
        ips.contains(&"10.88.0.1".parse().unwrap()) && ips.contains(&"10.88.0.2".parse().unwrap()),
        "each lease's PublicIP is the source address toward the other: {ips:?}"
    );
    assert!(d1.log().contains("iface=ul1"), "{}", d1.log());
    assert!(ping_until(h1, overlay_ip_of(&s2), Duration::from_secs(10)));
    let (sent, received) = tcp_transfer(h1, h2, overlay_ip_of(&s2), 0, 2_000_000);
    assert_eq!(sent, received, "2 MB over the overlay on ul1");

    let err = refused(h1, &etcd, &["--iface-can-reach", "203.0.113.9"]);
    assert!(
        err.contains("no route to 203.0.113.9") && err.contains("--iface-can-reach"),
        "{err}"
    );
    let err = refused(h1, &etcd, &["--iface-regex", "^bond"]);
    assert!(err.contains("matches --iface-regex ^bond"), "{err}");
}

/// overlayd with `flags` in `ns` must exit 1 before ready; its stderr.
fn refused(ns: &Netns, etcd: &Etcd, flags: &[&str]) -> String {
    let out = ns
        .command(env!("CARGO_BIN_EXE_overlayd"))
        .args(["--etcd-endpoints", &etcd.endpoint()])
        .args(flags)
        .args(["--subnet-file", "/nonexistent/never-written.env"])
        .output()
        .expect("run overlayd");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
    err
}

/// The DaemonSet's init containers as written in deploy/kubernetes, with the mount paths
/// mapped to `dirs` (mount path → local dir); returns (name, argv) with argv[0] = the binary
/// under test.
fn init_containers(dirs: &[(&str, &std::path::Path)]) -> Vec<(String, Vec<String>)> {
    use serde::Deserialize;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/overlayd-daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read the DaemonSet");
    let ds: serde_json::Value = serde_json::to_value(
        serde_norway::Value::deserialize(serde_norway::Deserializer::from_str(&text)).unwrap(),
    )
    .unwrap();
    ds["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .map(|c| {
            let mut argv: Vec<String> = c["command"]
                .as_array()
                .expect("command")
                .iter()
                .map(|w| {
                    let mut w = w.as_str().expect("word").to_string();
                    for (mount, dir) in dirs {
                        w = w.replace(mount, &dir.display().to_string());
                    }
                    w
                })
                .collect();
            assert_eq!(argv[0], "/usr/local/bin/overlayd");
            argv[0] = env!("CARGO_BIN_EXE_overlayd").to_string();
            (c["name"].as_str().expect("name").to_string(), argv)
        })
        .collect()
}

/// The ConfigMap's data.
fn configmap_data() -> serde_json::Value {
    use serde::Deserialize;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/overlayd-configmap.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read the ConfigMap");
    let cm: serde_json::Value = serde_json::to_value(
        serde_norway::Value::deserialize(serde_norway::Deserializer::from_str(&text)).unwrap(),
    )
    .unwrap();
    cm["data"].clone()
}

/// The `install-cni` init container's command, run as written (paths mapped to a temp dir):
/// the plugin and the ConfigMap's config list land on the "host".
#[test]
fn install_cni_from_the_manifest() {
    let dir = TempDir::new("install-cni");
    let cfg = dir.path().join("cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    let data = configmap_data();
    let conflist = data["cni-conf.json"].as_str().expect("cni-conf.json");
    std::fs::write(cfg.join("cni-conf.json"), conflist).unwrap();
    let (bin, netd) = (dir.path().join("opt-cni-bin"), dir.path().join("net.d"));
    let inits = init_containers(&[
        ("/opt/cni/bin", &bin),
        ("/etc/cni/net.d", &netd),
        ("/etc/overlayd", &cfg),
    ]);
    let (_, argv) = inits
        .iter()
        .find(|(n, _)| n == "install-cni")
        .expect("install-cni");
    let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let plugin = std::fs::read(bin.join("overlay-cni")).expect("plugin installed");
    assert_eq!(
        plugin,
        std::fs::read(env!("CARGO_BIN_EXE_overlay-cni")).unwrap(),
        "the plugin next to overlayd"
    );
    assert_eq!(
        std::fs::read_to_string(netd.join("10-overlayd.conflist")).unwrap(),
        conflist
    );
}

/// The `init-network` init container's command, run as written against a real etcd: it
/// creates <prefix>/config from net-conf.json, keeps an existing one, refuses a bad file and
/// gives up on an unreachable etcd with the endpoints named; a daemon without --network then
/// starts on the config it wrote.
#[test]
fn netns_init_network_from_the_manifest() {
    if skip_unless_root("netns_init_network_from_the_manifest") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let dir = TempDir::new("init-network");
    let data = configmap_data();
    let net_conf = data["net-conf.json"].as_str().expect("net-conf.json");
    let prefix = data["OVERLAYD_ETCD_PREFIX"].as_str().expect("prefix");
    let inits = init_containers(&[("/etc/overlayd", dir.path())]);
    let (_, argv) = inits
        .iter()
        .find(|(n, _)| n == "init-network")
        .expect("init-network");
    let h = topo.host(0);
    let run = |endpoints: &str, extra: &[&str]| {
        h.command(&argv[0])
            .args(&argv[1..])
            .args(extra)
            .env("OVERLAYD_ETCD_ENDPOINTS", endpoints)
            .env("OVERLAYD_ETCD_PREFIX", prefix)
            .output()
            .expect("run init-network")
    };
    let key = format!("{prefix}/config");
    let stored = || {
        etcd.ctl(&["get", &key, "--print-value-only"])
            .trim()
            .to_string()
    };
    std::fs::write(dir.path().join("net-conf.json"), net_conf).unwrap();
    let out = run(&etcd.endpoint(), &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("created"));
    assert_eq!(stored(), net_conf.trim());
    // A second run (every node runs it) keeps what is there.
    std::fs::write(
        dir.path().join("net-conf.json"),
        r#"{"Network":"10.99.0.0/16","Backend":{"Type":"udp"}}"#,
    )
    .unwrap();
    let out = run(&etcd.endpoint(), &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept"),
        "{out:?}"
    );
    assert_eq!(stored(), net_conf.trim());
    // A bad file: refused, named.
    std::fs::write(
        dir.path().join("net-conf.json"),
        r#"{"Network":"10.0.0.0/33"}"#,
    )
    .unwrap();
    let out = run(&etcd.endpoint(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("net-conf.json"),
        "{err}"
    );
    // No etcd: gives up after --timeout, naming the endpoints.
    std::fs::write(dir.path().join("net-conf.json"), net_conf).unwrap();
    let t = Instant::now();
    let out = run("http://192.168.77.249:2379", &["--timeout=3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("192.168.77.249"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "bounded: {:?}",
        t.elapsed()
    );
    // The daemon, without --network, runs on the config init-network wrote.
    let mut args = overlayd_args("vxlan", &etcd);
    let i = args.iter().position(|a| a == "--network").unwrap();
    args.drain(i..i + 4);
    assert!(!args.iter().any(|a| a == "--network" || a == "--subnet-len"));
    let mut d = Overlayd::spawn(h, args);
    let subnet = subnet_of(&d.wait_ready(READY));
    assert!(
        "10.244.0.0/16"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&subnet),
        "{subnet}"
    );
}
