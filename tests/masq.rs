//! `--ip-masq` and `--iptables-forward-rules` end to end, with real iptables inside the test's
//! namespaces and containers plugged in by overlay-cni and the reference CNI plugins.
//!
//! Two nodes and an "outside" host on the underlay that is not in the overlay. FORWARD's
//! policy is DROP on both nodes, as Docker sets it. A container on node 1 reaching the outside
//! host must arrive from node 1's address (masqueraded), a container on node 2 must see node
//! 1's container's own address (no NAT inside the pod network), and the rules must come back
//! when deleted, stay identical across restarts, and go when their flag is turned off.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use common::{cni_add, cni_conf, skip_without_cni_plugins};
use overlayd::masq::{forward_chain, masq_chain};

const READY: Duration = Duration::from_secs(30);
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 200);

/// The source address a TCP connection from `client` to `ip:port` arrives with at `server`,
/// or None when it never arrives within `timeout`.
fn seen_source(
    server: &Netns,
    ip: Ipv4Addr,
    port: u16,
    client: &Netns,
    timeout: Duration,
) -> Option<Ipv4Addr> {
    let accept = server.spawn_in(move || {
        let l = TcpListener::bind((ip, port)).expect("bind the probe listener");
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok((_, peer)) = l.accept() {
                return match peer {
                    SocketAddr::V4(a) => Some(*a.ip()),
                    SocketAddr::V6(_) => None,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    });
    client.in_ns(move || {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let to = SocketAddr::from((ip, port));
            if TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    accept.join().expect("probe listener thread")
}

fn iptables_s(h: &Netns, table: &str, chain: &str) -> Option<Vec<String>> {
    h.try_run(&["iptables", "-w", "-t", table, "-S", chain])
        .ok()
        .map(|s| s.lines().map(str::to_string).collect())
}

/// Both tables as `iptables -S` prints them (policies, chains and rules).
fn ruleset(h: &Netns) -> String {
    let nat = h.run(&["iptables", "-w", "-t", "nat", "-S"]);
    let filter = h.run(&["iptables", "-w", "-t", "filter", "-S"]);
    format!("{nat}{filter}")
}

/// Polls until `ok` holds (bounded).
fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn count(haystack: &str, line: &str) -> usize {
    haystack.lines().filter(|l| *l == line).count()
}

#[test]
fn netns_ip_masq_and_forward_rules() {
    let test = "netns_ip_masq_and_forward_rules";
    if skip_unless_root(test) || skip_without_cni_plugins(test) {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    topo.attach("out", OUTSIDE_IP);
    let outside = &topo.extra.last().expect("outside").ns;
    let (h1, h2) = (topo.host(0), topo.host(1));
    for h in [h1, h2] {
        h.sysctl("net.ipv4.ip_forward", "1");
        // What Docker does to every host it runs on.
        h.run(&["iptables", "-w", "-P", "FORWARD", "DROP"]);
    }
    let args = |extra: &[&str]| {
        let mut a = overlayd_args("vxlan", &etcd);
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["--iptables-resync".to_string(), "1".to_string()]);
        a
    };
    let mut d1 = Overlayd::spawn(h1, args(&["--ip-masq"]));
    let mut d2 = Overlayd::spawn(h2, args(&["--ip-masq"]));
    let s1 = subnet_of(&d1.wait_ready(READY));
    let s2 = subnet_of(&d2.wait_ready(READY));
    assert_eq!(d1.subnet_env().unwrap()["FLANNEL_IPMASQ"], "true");
    let network = OVERLAY_NETWORK.parse().unwrap();

    // The chains hold exactly flanneld's rules, one jump each.
    let masq = masq_chain(network, s1, true);
    let want: Vec<String> = std::iter::once(format!("-N {}", masq.name))
        .chain(masq.rules.iter().map(|r| format!("-A {} {r}", masq.name)))
        .collect();
    assert_eq!(iptables_s(h1, "nat", masq.name), Some(want.clone()));
    let fwd = forward_chain(network, Some(overlayd::gso_tap::NAME));
    let want_fwd: Vec<String> = std::iter::once(format!("-N {}", fwd.name))
        .chain(fwd.rules.iter().map(|r| format!("-A {} {r}", fwd.name)))
        .collect();
    assert_eq!(iptables_s(h1, "filter", fwd.name), Some(want_fwd.clone()));
    let jump = format!("-A POSTROUTING {}", masq.jump);
    let fwd_jump = format!("-A FORWARD {}", fwd.jump);
    let before = ruleset(h1);
    assert_eq!(count(&before, &jump), 1, "{before}");
    assert_eq!(count(&before, &fwd_jump), 1, "{before}");

    // Containers through the real CNI chain; FLANNEL_IPMASQ=true: the bridge plugin adds no
    // NAT of its own, so whatever is masqueraded is overlayd's doing.
    let tmp = TempDir::new("masq");
    let c1 = cni_add(
        h1,
        "m1",
        &cni_conf(d1.subnet_file(), &tmp.path().join("h1")),
    );
    let c2 = cni_add(
        h2,
        "m2",
        &cni_conf(d2.subnet_file(), &tmp.path().join("h2")),
    );
    assert!(s1.contains(&c1.ip) && s2.contains(&c2.ip));
    assert!(
        !h1.run(&["iptables-save", "-t", "nat"]).contains("CNI-"),
        "the bridge plugin must not masquerade with FLANNEL_IPMASQ=true"
    );

    let t = Duration::from_secs(20);
    assert_eq!(
        seen_source(outside, OUTSIDE_IP, 7001, &c1.ns, t),
        Some(h1.ip),
        "the outside host sees the node's address"
    );
    assert_eq!(
        seen_source(&c2.ns, c2.ip, 7002, &c1.ns, t),
        Some(c1.ip),
        "a container on another node sees the container's own address"
    );
    assert_eq!(
        seen_source(&c1.ns, c1.ip, 7003, &c2.ns, t),
        Some(c2.ip),
        "and the other way"
    );

    // Deleted by hand (a rule, the jump, the forward chain's rules): put back.
    h1.run(&["iptables", "-w", "-t", "nat", "-D", masq.name, "5"]);
    h1.run(&["iptables", "-w", "-t", "filter", "-F", fwd.name]);
    let jump_words: Vec<&str> = ["-w", "-t", "nat", "-D", "POSTROUTING", "-m", "comment"]
        .into_iter()
        .chain(["--comment", "overlayd masq", "-j", masq.name])
        .collect();
    h1.run(&[&["iptables"][..], &jump_words].concat());
    assert_ne!(ruleset(h1), before);
    wait_for("the rules restored", Duration::from_secs(15), || {
        ruleset(h1) == before
    });
    assert!(d1.log().contains("restoring them"), "{}", d1.log());
    assert_eq!(
        seen_source(outside, OUTSIDE_IP, 7004, &c1.ns, t),
        Some(h1.ip),
        "masquerading again"
    );

    // A restart, and a crash: the same rules, nothing duplicated.
    d1.restart();
    d1.wait_ready(READY);
    assert_eq!(ruleset(h1), before, "after a restart");
    d1.kill();
    d1.restart();
    d1.wait_ready(READY);
    assert_eq!(ruleset(h1), before, "after a crash and a start");
    // Stopped: the rules stay (pods keep reaching the outside while overlayd restarts).
    assert!(d1.terminate(Duration::from_secs(10)).is_some());
    assert_eq!(ruleset(h1), before, "left in place at exit");
    assert_eq!(
        seen_source(outside, OUTSIDE_IP, 7005, &c1.ns, t),
        Some(h1.ip),
        "pods still reach the outside with overlayd stopped"
    );

    // --iptables-forward-rules=false: its chain goes, and with FORWARD's policy DROP the
    // container no longer gets out (the control that the rule was what let it through).
    let mut d1b = Overlayd::spawn(h1, args(&["--ip-masq", "--iptables-forward-rules=false"]));
    d1b.wait_ready(READY);
    let now = ruleset(h1);
    assert!(!now.contains(fwd.name), "OVERLAYD-FWD removed:\n{now}");
    assert_eq!(count(&now, &jump), 1);
    assert_eq!(
        seen_source(outside, OUTSIDE_IP, 7006, &c1.ns, Duration::from_secs(4)),
        None,
        "FORWARD drops the container's traffic without the forward rules"
    );
    assert!(d1b.terminate(Duration::from_secs(10)).is_some());

    // Without --ip-masq: the masquerade chain goes, the forward rules come back.
    let mut d1c = Overlayd::spawn(h1, args(&[]));
    d1c.wait_ready(READY);
    let now = ruleset(h1);
    assert!(!now.contains(masq.name), "OVERLAYD-POSTRTG removed:\n{now}");
    assert_eq!(count(&now, &fwd_jump), 1, "{now}");
    assert_eq!(d1c.subnet_env().unwrap()["FLANNEL_IPMASQ"], "false");
    assert!(d1c.terminate(Duration::from_secs(10)).is_some());
    assert!(d2.terminate(Duration::from_secs(10)).is_some());
}
