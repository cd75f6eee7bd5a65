//! Proves the end-to-end harness (`tests/common`) works, without overlayd: underlay
//! reachability, etcd, a flannel-style kernel VXLAN pair, and that nothing is left behind.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Asserts none of `names` is still listed by `ip netns list`.
fn assert_gone(names: &[String]) {
    let left: Vec<String> = list_netns()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; look at its state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn lease_format_matches_flannel() {
    let v = vxlan_lease_value(Ipv4Addr::new(192, 168, 64, 3), 1, "c6:d2:32:6f:8f:44");
    assert_eq!(
        v,
        r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
    );
    let key = lease_key(ETCD_PREFIX, "10.5.34.0/24".parse().unwrap());
    assert_eq!(key, "/coreos.com/network/subnets/10.5.34.0-24");
    let l = Lease::parse(&key, &v).expect("parse");
    assert_eq!(l.subnet, "10.5.34.0/24".parse().unwrap());
    assert_eq!(l.public_ip, Ipv4Addr::new(192, 168, 64, 3));
    assert_eq!(l.backend_type.as_deref(), Some("vxlan"));
    assert_eq!(l.vni, Some(1));
    assert_eq!(l.vtep_mac.as_deref(), Some("c6:d2:32:6f:8f:44"));
    assert_eq!(l.overlay_ip(), Ipv4Addr::new(10, 5, 34, 0));

    // udp backend: only PublicIP. Dual-stack key.
    let l = Lease::parse(
        "/p/subnets/10.5.35.0-24&fd00:12:13::-56",
        r#"{"PublicIP":"192.168.64.4"}"#,
    )
    .expect("parse udp lease");
    assert_eq!(l.backend_type, None);
    assert_eq!(l.subnet, "10.5.35.0/24".parse().unwrap());
    assert!(Lease::parse("/p/subnets/garbage", "{}").is_none());

    assert_eq!(
        overlay_ip_of("10.244.37.1/24"),
        Ipv4Addr::new(10, 244, 37, 0)
    );
    assert_eq!(
        subnet_of("10.244.37.1/24"),
        "10.244.37.0/24".parse().unwrap()
    );
}

/// A skip leaves one `SKIP <test>: <reason>` line per call in the skip log, appended (what
/// scripts/test.sh counts and lists); without a log only the banner is printed.
#[test]
fn skips_are_logged_for_the_test_run() {
    let dir = TempDir::new("skiplog");
    let log = dir.path().join("skips");
    assert!(skip_to(Some(&log), "t_one", "no gretap"));
    assert!(skip_to(Some(&log), "t_two", "needs root"));
    assert!(skip_to(None, "t_three", "not logged"));
    let text = std::fs::read_to_string(&log).expect("skip log written");
    assert_eq!(text, "SKIP t_one: no gretap\nSKIP t_two: needs root\n");
    assert_eq!(skip_line("a", "b"), "SKIP a: b");
    assert!(!skip_unless(true, "t_four", "never recorded"));
}

#[test]
fn payload_is_deterministic() {
    let (mut a, mut b) = (Payload::new(7), Payload::new(7));
    let (mut x, mut y) = (vec![0u8; 1001], vec![0u8; 1001]);
    a.fill(&mut x);
    b.fill(&mut y);
    assert_eq!(x, y);
    assert!(
        x.iter().filter(|&&v| v == 0).count() < 50,
        "not random-looking"
    );
}

#[test]
fn underlay_hosts_ping_each_other() {
    if skip_unless_root("underlay_hosts_ping_each_other") {
        return;
    }
    let topo = Topology::new(2);
    let names = topo.names();
    let (h1, h2) = (topo.host(0), topo.host(1));
    assert_eq!(h1.ip, Ipv4Addr::new(192, 168, 77, 1));
    assert_eq!(h2.ip, Ipv4Addr::new(192, 168, 77, 2));
    assert!(h1.ip("link show dev eth0").contains("mtu 1500"));
    assert!(ping(h1, h2.ip, 3), "h1 -> h2 underlay");
    assert!(ping(h2, h1.ip, 3), "h2 -> h1 underlay");
    // Nothing outside the topology is reachable from a host.
    assert!(!ping(h1, "192.168.77.99", 1));

    // Cutting h2's bridge port breaks it; restoring it heals it.
    topo.set_link(1, false);
    assert!(!ping(h1, h2.ip, 2));
    topo.set_link(1, true);
    assert!(ping_until(h1, h2.ip, Duration::from_secs(5)));

    // A plain TCP transfer over the underlay.
    let (sent, received) = tcp_transfer(h1, h2, h2.ip, 0, 1_000_000);
    assert_eq!(sent, received);

    drop(topo);
    assert_gone(&names);
}

#[test]
fn etcd_put_get_from_host() {
    if skip_unless_root("etcd_put_get_from_host") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let names = topo.names();
    let ep = etcd.endpoint();
    assert_eq!(ep, "http://192.168.77.250:2379");
    let h1 = topo.host(0);

    etcdctl(h1, &ep, &["put", "/ovt/a", "hello"]).expect("put from host");
    let out = etcdctl(h1, &ep, &["get", "/ovt/a", "--print-value-only"]).expect("get");
    assert_eq!(out.trim(), "hello");
    assert_eq!(etcd.get("/ovt/a").as_deref(), Some("hello"));
    assert_eq!(etcd.get("/ovt/missing"), None);

    etcd.put("/ovt/b", r#"{"x":1}"#);
    let id = etcd.put_with_lease("/ovt/c", "leased", 60);
    assert!(!id.is_empty());
    let all = etcd.get_prefix("/ovt/");
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all["/ovt/b"], r#"{"x":1}"#);
    assert_eq!(etcd.del("/ovt/a"), 1);
    assert_eq!(etcd.del("/ovt/a"), 0);

    etcd.put_network_config(ETCD_PREFIX, OVERLAY_NETWORK, 24, "vxlan");
    let cfg: serde_json::Value =
        serde_json::from_str(&etcd.get(&format!("{ETCD_PREFIX}/config")).unwrap()).unwrap();
    assert_eq!(cfg["Network"], "10.244.0.0/16");

    // Pause makes etcd unreachable (bounded by etcdctl's timeouts), resume heals it.
    etcd.pause();
    let t = Instant::now();
    assert!(etcdctl(h1, &ep, &["get", "/ovt/b"]).is_err());
    assert!(t.elapsed() < Duration::from_secs(15));
    etcd.resume();
    assert!(etcdctl(h1, &ep, &["get", "/ovt/b"]).is_ok());

    let pid = etcd.pid().expect("running");
    drop(etcd);
    assert!(!pid_alive(pid), "etcd still running after drop");
    drop(topo);
    assert_gone(&names);
}

#[test]
fn kernel_vxlan_pair_flannel_style() {
    if skip_unless_root("kernel_vxlan_pair_flannel_style") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let names = topo.names();
    let (h1, h2) = (topo.host(0), topo.host(1));

    let n1 = KernelVxlanNode::setup(h1, h1.ip, "10.244.1.0/24".parse().unwrap());
    let n2 = KernelVxlanNode::setup(h2, h2.ip, "10.244.2.0/24".parse().unwrap());
    n1.register(&etcd, ETCD_PREFIX);
    n2.register(&etcd, ETCD_PREFIX);
    // What flanneld would have written, read back through etcd.
    let leases = etcd.leases(ETCD_PREFIX);
    assert_eq!(leases, vec![n1.lease(), n2.lease()]);
    assert_eq!(n1.sync_from_etcd(&etcd, ETCD_PREFIX), vec![n2.lease()]);
    assert_eq!(n2.sync_from_etcd(&etcd, ETCD_PREFIX), vec![n1.lease()]);

    let link = h1.ip("-d link show dev flannel.1");
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains("vxlan id 1"), "{link}");
    assert!(link.contains("dstport 8472"), "{link}");
    assert!(link.contains("nolearning"), "{link}");
    assert!(h1
        .ip("route show 10.244.2.0/24")
        .contains("via 10.244.2.0 dev flannel.1 onlink"));

    assert!(
        ping(h1, n2.overlay_ip(), 3),
        "h1 -> h2 overlay (10.244.2.0)"
    );
    assert!(
        ping(h2, n1.overlay_ip(), 3),
        "h2 -> h1 overlay (10.244.1.0)"
    );

    // A "pod" address behind the node is reachable through the overlay too.
    h2.add_pod_addr("10.244.2.1/32");
    assert!(ping(h1, "10.244.2.1", 2), "h1 -> pod address on h2");

    let t = tcp_transfer_stats(h1, h2, n2.overlay_ip(), 0, 50_000_000);
    assert_eq!(t.bytes_received, 50_000_000);
    assert_eq!(t.sent, t.received, "payload corrupted over kernel vxlan");
    eprintln!(
        "kernel vxlan: 50 MB in {:?} ({:.0} Mbit/s)",
        t.elapsed,
        400.0 / t.elapsed.as_secs_f64()
    );

    // The traffic really went through the VXLAN device.
    let rx: u64 = h2
        .run(&["cat", "/sys/class/net/flannel.1/statistics/rx_bytes"])
        .trim()
        .parse()
        .expect("rx_bytes");
    assert!(rx >= 50_000_000, "flannel.1 rx_bytes {rx}");

    // Removing the peer cuts the overlay.
    n1.remove_peer(&n2.lease());
    assert!(!ping(h1, n2.overlay_ip(), 1));

    drop(etcd);
    drop(topo);
    assert_gone(&names);
}

#[test]
fn everything_is_cleaned_up_even_on_panic() {
    if skip_unless_root("everything_is_cleaned_up_even_on_panic") {
        return;
    }
    type Payload = (Vec<String>, Vec<u32>, std::process::Child);
    let (names, pids, mut stray) = std::panic::catch_unwind(|| {
        let mut topo = Topology::new(2);
        let etcd = topo.start_etcd();
        // A stray long-running process in a host namespace must be killed too.
        let stray = topo
            .host(0)
            .command("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pids = vec![etcd.pid().unwrap(), stray.id()];
        let names = topo.names();
        let _guard = (topo, etcd);
        // Unwinding drops the guards; the payload carries what the checks below need.
        std::panic::panic_any::<Payload>((names, pids, stray));
    })
    .expect_err("closure panics")
    .downcast::<Payload>()
    .map(|b| *b)
    .expect("payload");
    assert_eq!(names.len(), 4);
    for n in &names {
        assert!(
            n.starts_with(&format!("ovt-{}-", std::process::id())),
            "{n}"
        );
    }
    assert_gone(&names);
    // Killed by the namespace cleanup: a zombie at most (the sleep is our child), never alive.
    for pid in pids {
        assert!(!pid_alive(pid), "pid {pid} survived cleanup");
    }
    let st = stray.wait().expect("reap sleep");
    assert!(!st.success(), "sleep was not killed: {st}");
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    if skip_unless_root("stale_namespaces_of_dead_processes_are_removed") {
        return;
    }
    // pid 0 never names a live test process (no /proc/0): looks like a leftover.
    let stale = "ovt-0-0-stale".to_string();
    let st = Command::new("ip").args(["netns", "add", &stale]).status();
    // (Not asserting it is listed now: a parallel test's sweep may already have removed it.)
    assert!(st.is_ok_and(|s| s.success()), "ip netns add {stale}");
    cleanup_stale();
    assert_gone(&[stale]);
}
