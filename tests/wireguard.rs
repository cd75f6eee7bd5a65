//! The wireguard backend end to end: overlayd nodes configured as flannel's
//! `"Backend":{"Type":"wireguard"}` in network namespaces, pinging and moving hashed TCP
//! streams both ways over WireGuard, with the engine's figures on `/metrics` (handshakes,
//! bytes, a garbage datagram counted as a drop, the data path's drop reasons); a node whose
//! lease is deleted while its subnet is taken moving to a new one; a dual-stack mesh of
//! three nodes on `flannel-wg` and `flannel-wg-v6` and a late joiner; `Mode: "ipv6"` (one
//! device, both families over the IPv6 underlay); an IPv6-only network; `--backend` against
//! the config; then a node set up as flanneld's wireguard backend sets it up (wireguard-go
//! + `wg`), talking to an overlayd node.

mod common;

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const READY: Duration = Duration::from_secs(30);
const MB: u64 = 1_000_000;
const METRICS: &str = "127.0.0.1:9108";

/// The net-conf.json of these tests, with `backend` extra fields (e.g. `,"PSK":"..."`).
fn put_config(etcd: &Etcd, backend: &str) {
    let cfg = format!(
        r#"{{"Network":"{OVERLAY_NETWORK}","SubnetLen":24,"Backend":{{"Type":"wireguard"{backend}}}}}"#
    );
    etcd.put(&format!("{ETCD_PREFIX}/config"), &cfg);
}

/// overlayd on `ns` with its own key file `key` (the default path is shared by every
/// namespace), `--backend wireguard`, a metrics listener and `extra` flags.
fn spawn(ns: &Netns, etcd: &Etcd, key: &std::path::Path, extra: &[String]) -> Overlayd {
    let env = format!("WIREGUARD_KEY_FILE={}", key.display());
    let mut args = overlayd_args("wireguard", etcd);
    args.extend(["--metrics-addr", METRICS].map(String::from));
    args.extend(extra.iter().cloned());
    Overlayd::spawn_wrapped(ns, &["env", &env], args)
}

/// The `PublicKey` of the lease holding `subnet`.
fn lease_key(etcd: &Etcd, subnet: &str) -> String {
    let key = lease_key_of(subnet_of(subnet));
    let v: serde_json::Value = serde_json::from_str(&etcd.get(&key).expect("lease")).unwrap();
    assert_eq!(v["BackendType"], "wireguard", "{v}");
    v["BackendData"]["PublicKey"]
        .as_str()
        .expect("PublicKey")
        .to_string()
}

fn lease_key_of(sn: ipnet::Ipv4Net) -> String {
    common::lease_key(ETCD_PREFIX, sn)
}

fn both_ways(a: &Netns, a_ip: std::net::Ipv4Addr, b: &Netns, b_ip: std::net::Ipv4Addr, mb: u64) {
    assert!(ping_until(a, b_ip, Duration::from_secs(20)), "ping {b_ip}");
    assert!(ping_until(b, a_ip, Duration::from_secs(20)), "ping {a_ip}");
    let (sent, got) = tcp_transfer(a, b, b_ip, 0, mb * MB);
    assert_eq!(sent, got, "{mb} MB to {b_ip} byte-identical");
    let (sent, got) = tcp_transfer(b, a, a_ip, 0, mb * MB);
    assert_eq!(sent, got, "{mb} MB to {a_ip} byte-identical");
}

/// Two nodes, as test `test` starts them.
type TwoNodes = (TempDir, Topology, Etcd, Overlayd, Overlayd);

/// Two hosts, etcd with the wireguard network config, and an overlayd on each with its
/// own key file under the returned directory (`h1/wgkey`, `h2/wgkey`); `None` when `test`
/// is skipped (not root).
fn two_nodes(test: &str) -> Option<TwoNodes> {
    if skip_unless_root(test) {
        return None;
    }
    let keys = TempDir::new("wgkeys");
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    put_config(&etcd, "");
    let d1 = spawn(topo.host(0), &etcd, &keys.path().join("h1/wgkey"), &[]);
    let d2 = spawn(topo.host(1), &etcd, &keys.path().join("h2/wgkey"), &[]);
    Some((keys, topo, etcd, d1, d2))
}

/// [`two_nodes`], both ready and h1 pinging h2's overlay address (returned beside them).
fn two_nodes_pinging(test: &str) -> Option<(TwoNodes, Ipv4Addr)> {
    let (keys, topo, etcd, mut d1, mut d2) = two_nodes(test)?;
    let b_ip = overlay_ip_of(&d2.wait_ready(READY));
    d1.wait_ready(READY);
    assert!(
        ping_until(topo.host(0), b_ip, Duration::from_secs(20)),
        "ping {b_ip} before"
    );
    Some(((keys, topo, etcd, d1, d2), b_ip))
}

#[test]
fn netns_wireguard_two_overlayd_nodes() {
    let Some((keys, topo, etcd, mut d1, mut d2)) = two_nodes("netns_wireguard_two_overlayd_nodes")
    else {
        return;
    };
    let k1: PathBuf = keys.path().join("h1/wgkey");
    let s1 = d1.wait_ready(READY);
    let s2 = d2.wait_ready(READY);
    let env = d1.subnet_env().unwrap();
    assert_eq!(env["FLANNEL_MTU"], (UNDERLAY_MTU - 80).to_string());
    assert!(topo.host(0).has_link("flannel-wg"));
    let key1 = lease_key(&etcd, &s1);
    assert_eq!(key1.len(), 44);
    let file = std::fs::read_to_string(&k1).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&k1).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "key file mode");
    assert_ne!(
        file.trim(),
        key1,
        "the file holds the private key, the lease the public one"
    );
    both_ways(
        topo.host(0),
        overlay_ip_of(&s1),
        topo.host(1),
        overlay_ip_of(&s2),
        5,
    );
    engine_figures(&d1, topo.host(1), host_ip(0));
    // Restart: the same key and subnet, and the tunnel comes back without touching h2.
    d1.restart();
    let again = d1.wait_ready(READY);
    assert_eq!(again, s1);
    assert_eq!(lease_key(&etcd, &s1), key1, "the key survives a restart");
    both_ways(
        topo.host(0),
        overlay_ip_of(&s1),
        topo.host(1),
        overlay_ip_of(&s2),
        1,
    );
    for d in [&mut d1, &mut d2] {
        let st = d.terminate(Duration::from_secs(5));
        assert!(st.is_some_and(|s| s.success()), "clean exit on SIGTERM");
    }
    assert!(
        !topo.host(0).has_link("flannel-wg"),
        "device removed on exit"
    );
    let log = d2.log();
    assert!(
        log.contains("ready (wireguard)"),
        "{}",
        tail(d2.log_path(), 30)
    );
    let stopped = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped;"))
        .unwrap_or("");
    assert!(
        !stopped.contains("rx_packets=0"),
        "h2 received over WireGuard: {stopped}"
    );
    assert!(stopped.contains("not_allowed=0,"), "{stopped}");
}

/// The blocking waits (so the wakeups) of `pid`'s wireguard data path thread (`wg`) over
/// 2 s, after `settle`.
fn wg_thread_wakeups(pid: u32, settle: Duration) -> u64 {
    let wg = |comm: &str| comm == "wg";
    std::thread::sleep(settle);
    let (_, w0) = thread_load(pid, wg);
    std::thread::sleep(Duration::from_secs(2));
    let (_, w1) = thread_load(pid, wg);
    w1 - w0
}

/// An idle node's wireguard thread sleeps: alone (no peer), then with a peer it never
/// talked to, it wakes at most 4 times in 2 s (a 50 ms poll timeout woke it ~40 times).
/// Nothing is lost by it: a new peer list still reaches the thread at once (its eventfd),
/// and the first packet starts the handshake and its timers.
#[test]
fn netns_wireguard_idle_thread_sleeps() {
    if skip_unless_root("netns_wireguard_idle_thread_sleeps") {
        return;
    }
    let keys = TempDir::new("wgkeys");
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    put_config(&etcd, "");
    let mut d1 = spawn(topo.host(0), &etcd, &keys.path().join("h1/wgkey"), &[]);
    let s1 = d1.wait_ready(READY);
    let pid = d1.pid().expect("h1's daemon runs");
    let alone = wg_thread_wakeups(pid, Duration::from_millis(500));
    eprintln!("h1's wg thread, no peer: {alone} wakeups in 2 s");
    assert!(
        alone <= 4,
        "with no peer the wg thread woke {alone} times in 2 s"
    );
    let mut d2 = spawn(topo.host(1), &etcd, &keys.path().join("h2/wgkey"), &[]);
    let s2 = d2.wait_ready(READY);
    let has_peer = wait_until(Duration::from_secs(10), || {
        d1.scrape().contains("overlayd_wireguard_peer_bytes_total{")
    });
    assert!(
        has_peer,
        "h1's engine never got h2 as a peer:\n{}",
        d1.scrape()
    );
    let quiet = wg_thread_wakeups(pid, Duration::from_millis(300));
    eprintln!("h1's wg thread, one peer never contacted: {quiet} wakeups in 2 s");
    assert!(
        quiet <= 4,
        "with an idle peer the wg thread woke {quiet} times in 2 s"
    );
    both_ways(
        topo.host(0),
        overlay_ip_of(&s1),
        topo.host(1),
        overlay_ip_of(&s2),
        1,
    );
}

/// The route to the network through `flannel-wg` deleted under a running node (host
/// network scripts do that): the 2 s check restores it, counts the repair, and pings go
/// over it again, as with the other backends.
#[test]
fn netns_wireguard_deleted_route_is_restored() {
    let Some(((_keys, topo, _etcd, d1, _d2), b_ip)) =
        two_nodes_pinging("netns_wireguard_deleted_route_is_restored")
    else {
        return;
    };
    let repairs = d1.metric("overlayd_device_repairs_total", &[]);
    let show = format!("-4 route show {OVERLAY_NETWORK} dev flannel-wg");
    topo.host(0)
        .ip(&format!("-4 route del {OVERLAY_NETWORK} dev flannel-wg"));
    assert_eq!(topo.host(0).ip(&show).trim(), "", "route deleted");
    let back = wait_until(Duration::from_secs(10), || {
        !topo.host(0).ip(&show).trim().is_empty()
    });
    assert!(back, "route not restored:\n{}", tail(d1.log_path(), 20));
    assert!(
        ping_until(topo.host(0), b_ip, Duration::from_secs(10)),
        "ping {b_ip} after"
    );
    assert!(
        d1.metric("overlayd_device_repairs_total", &[]) > repairs,
        "the repair counted"
    );
}

/// `flannel-wg` itself deleted under a running node: the 2 s check recreates it with its
/// address and route, the same engine goes on in a new thread (its session kept: no new
/// handshake on either node), the repair is counted, and a TCP transfer crosses whole.
#[test]
fn netns_wireguard_deleted_device_is_recreated_with_its_sessions() {
    let Some(((_keys, topo, _etcd, d1, d2), b_ip)) =
        two_nodes_pinging("netns_wireguard_deleted_device_is_recreated_with_its_sessions")
    else {
        return;
    };
    let dev = ["device=\"flannel-wg\""];
    // Figures are published at the engine's timer turns, 250 ms apart.
    let counted = wait_until(Duration::from_secs(2), || {
        d1.metric("overlayd_wireguard_handshakes_total", &dev) >= 1.0
    });
    assert!(counted, "the first handshake counted:\n{}", d1.scrape());
    let handshakes = |d: &Overlayd| d.metric("overlayd_wireguard_handshakes_total", &dev);
    let (hs1, hs2) = (handshakes(&d1), handshakes(&d2));
    let repairs = d1.metric("overlayd_device_repairs_total", &[]);
    topo.host(0).ip("link del flannel-wg");
    assert!(!topo.host(0).has_link("flannel-wg"), "device deleted");
    let back = wait_until(Duration::from_secs(10), || {
        topo.host(0).has_link("flannel-wg")
            && !topo
                .host(0)
                .ip(&format!("-4 route show {OVERLAY_NETWORK} dev flannel-wg"))
                .trim()
                .is_empty()
    });
    assert!(back, "device not recreated:\n{}", tail(d1.log_path(), 20));
    assert!(
        ping_until(topo.host(0), b_ip, Duration::from_secs(10)),
        "ping {b_ip} after"
    );
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), b_ip, 0, 5 * MB);
    assert_eq!(sent, got, "5 MB over the recreated device arrive whole");
    assert!(
        d1.metric("overlayd_device_repairs_total", &[]) > repairs,
        "the repair counted"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        (handshakes(&d1), handshakes(&d2)),
        (hs1, hs2),
        "the session went on: no new handshake"
    );
    assert!(d1.log().contains("recreating it with its sessions"));
}

/// A node's lease deleted while another key takes its subnet: the control loop re-acquires
/// a new subnet, and the device's address and route, subnet.env and the peer's AllowedIPs
/// follow it without a restart (pings both ways over the new subnet).
#[test]
fn netns_wireguard_reacquired_subnet_moves_the_device() {
    let Some((_keys, topo, etcd, mut d1, mut d2)) =
        two_nodes("netns_wireguard_reacquired_subnet_moves_the_device")
    else {
        return;
    };
    let (s1, s2) = (d1.wait_ready(READY), d2.wait_ready(READY));
    let (old, b_ip) = (subnet_of(&s1), overlay_ip_of(&s2));
    assert!(
        ping_until(topo.host(0), b_ip, Duration::from_secs(20)),
        "ping {b_ip} before"
    );
    // Half of our subnet under another key (a reservation of another node) makes it taken
    // for the re-acquisition; then our own lease goes.
    let half = format!("{ETCD_PREFIX}/subnets/{}-25", old.network());
    etcd.put(&half, r#"{"PublicIP":"192.0.2.99"}"#);
    assert_eq!(etcd.del(&lease_key_of(old)), 1, "our lease deleted");
    let mut moved = None;
    wait_until(Duration::from_secs(15), || {
        moved = d1.subnet_env().map(|e| e["FLANNEL_SUBNET"].clone());
        moved.as_ref().is_some_and(|m| subnet_of(m) != old)
    });
    let new = moved
        .filter(|m| subnet_of(m) != old)
        .unwrap_or_else(|| panic!("subnet.env still names {old}:\n{}", tail(d1.log_path(), 30)));
    let (sn, a_ip) = (subnet_of(&new), overlay_ip_of(&new));
    assert!(
        etcd.get(&lease_key_of(sn)).is_some(),
        "lease for {sn} in etcd"
    );
    let shown = topo.host(0).ip("-4 addr show dev flannel-wg");
    assert!(
        shown.contains(&format!("{a_ip}/32")),
        "{a_ip} on flannel-wg:\n{shown}"
    );
    let route = topo.host(0).ip(&format!("-4 route show {OVERLAY_NETWORK}"));
    assert!(
        route.contains(&format!("src {a_ip}")),
        "route from {a_ip}: {route}"
    );
    assert!(
        ping_until(topo.host(0), b_ip, Duration::from_secs(10)),
        "ping {b_ip} from {sn}"
    );
    assert!(
        ping_until(topo.host(1), a_ip, Duration::from_secs(10)),
        "ping {a_ip}"
    );
    assert!(
        d1.metric("overlayd_lease_reacquisitions_total", &[]) >= 1.0,
        "{}",
        d1.scrape()
    );
    for d in [&mut d1, &mut d2] {
        let st = d.terminate(Duration::from_secs(5));
        assert!(st.is_some_and(|s| s.success()), "clean exit on SIGTERM");
    }
}

/// `--backend` against the network config in etcd, both ways round: the daemon exits
/// with the one error naming both backends, before taking a lease.
#[test]
fn netns_wireguard_backend_flag_mismatch() {
    if skip_unless_root("netns_wireguard_backend_flag_mismatch") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    for (config, flag) in [("wireguard", "vxlan"), ("vxlan", "wireguard")] {
        let cfg = format!(r#"{{"Network":"{OVERLAY_NETWORK}","Backend":{{"Type":"{config}"}}}}"#);
        etcd.put(&format!("{ETCD_PREFIX}/config"), &cfg);
        let mut d = Overlayd::spawn(topo.host(0), overlayd_args(flag, &etcd));
        let st = d.wait_exit(Duration::from_secs(20));
        assert!(
            st.is_some_and(|s| !s.success()),
            "{flag} against {config}: exits"
        );
        let want = format!("--backend {flag} conflicts with the network config in etcd, whose Backend.Type is {config}");
        assert!(d.log().contains(&want), "{}", tail(d.log_path(), 20));
    }
    assert_eq!(
        etcd.get_prefix(&format!("{ETCD_PREFIX}/subnets/")).len(),
        0,
        "no lease taken"
    );
}

/// After traffic: `d`'s `/metrics` count a handshake, bytes both ways with its peer and
/// (after a garbage handshake initiation sent from `from` to `d`'s port at `to`) a drop.
fn engine_figures(d: &Overlayd, from: &Netns, to: Ipv4Addr) {
    let dev = ["device=\"flannel-wg\""];
    // The engine's figures are published at its timer turns, 250 ms apart.
    let hs = wait_until(Duration::from_secs(2), || {
        d.metric("overlayd_wireguard_handshakes_total", &dev) >= 1.0
    });
    assert!(hs, "no handshake counted:\n{}", d.scrape());
    for dir in ["direction=\"tx\"", "direction=\"rx\""] {
        let b = d.metric("overlayd_wireguard_peer_bytes_total", &[dir]);
        assert!(b > 0.0, "peer bytes {dir} = {b}");
    }
    let age = d.metric("overlayd_wireguard_peer_last_handshake_seconds", &dev);
    assert!((0.0..120.0).contains(&age), "last handshake {age} s ago");
    let bad_mac = ["reason=\"bad_mac\""];
    let before = d.metric("overlayd_wireguard_dropped_total", &bad_mac);
    // A handshake initiation (type 1, 148 bytes) whose MACs are zeros.
    let mut junk = [0u8; 148];
    junk[0] = 1;
    from.in_ns(move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        s.send_to(&junk, (to, 51820)).expect("send");
    });
    let raised = wait_until(Duration::from_secs(5), || {
        d.metric("overlayd_wireguard_dropped_total", &bad_mac) > before
    });
    assert!(raised, "garbage not counted as bad_mac:\n{}", d.scrape());
    data_path_drops_exported(&d.scrape());
}

/// The data path's own drop reasons (device and socket side) are series of the same
/// family as the engine's, one per reason name.
fn data_path_drops_exported(text: &str) {
    for reason in ["truncated", "io_error", "too_big", "bad_inner", "no_route"] {
        let label = format!("reason=\"{reason}\"");
        let series = text
            .lines()
            .filter(|l| l.starts_with("overlayd_wireguard_dropped_total{"))
            .filter(|l| l.contains("device=\"flannel-wg\"") && l.contains(&label))
            .count();
        assert_eq!(series, 1, "one {label} series on /metrics:\n{text}");
    }
}

/// Pings `to` (an overlay address of either family) from `from`, or fails naming both.
fn ping(topo: &Topology, from: usize, to: IpAddr, what: &str) {
    assert!(
        ping_until(topo.host(from), to, Duration::from_secs(15)),
        "{what}: h{} -> {to}",
        from + 1
    );
}

/// `overlayd status` on h4: a wireguard row per peer and device (3 peers on each of the
/// two devices), each with a handshake seconds ago and bytes received.
fn status_shows_peers(topo: &Topology, etcd: &Etcd) {
    let status = || {
        let out = topo
            .host(3)
            .command(env!("CARGO_BIN_EXE_overlayd"))
            .args(["status", "--etcd-endpoints", &etcd.endpoint()])
            .args(["--metrics-addr", METRICS])
            .output()
            .expect("overlayd status");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Each row as the engine published it at its last timer turn (every 100 ms).
    let all_up = |text: &str| {
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("wireguard peers:"))
            .skip(2)
            .collect();
        let per_dev = |d: &str| rows.iter().filter(|r| r.starts_with(d)).count();
        let up = |r: &&str| {
            let f: Vec<&str> = r.split_whitespace().collect();
            r.contains("s ago") && f[f.len() - 2].parse::<u64>().is_ok_and(|rx| rx > 0)
        };
        rows.len() == 6 && per_dev("flannel-wg ") == 3 && rows.iter().all(up)
    };
    let mut text = String::new();
    let ok = wait_until(Duration::from_secs(3), || {
        text = status();
        all_up(&text)
    });
    assert!(
        ok,
        "3 peers on each device, each with a handshake and bytes received:\n{text}"
    );
}

/// overlayd on host `i` with an IPv6 underlay address, given as `--public-ipv6`, and a
/// key file of its own under `keys`.
fn spawn_dual(topo: &Topology, i: usize, etcd: &Etcd, keys: &TempDir) -> Overlayd {
    let key = keys.path().join(format!("h{}/wgkey", i + 1));
    let ip6 = add_underlay_ipv6(topo.host(i), i);
    let extra = ["--public-ipv6".to_string(), ip6.to_string()];
    spawn(topo.host(i), etcd, &key, &extra)
}

/// `Mode: "ipv6"` on a dual-stack network: one `flannel-wg` carries both families, each
/// peer reached at its `PublicIPv6` on `ListenPort`; two nodes ping both ways in both.
#[test]
fn netns_wireguard_mode_ipv6_one_device() {
    if skip_unless_root("netns_wireguard_mode_ipv6_one_device") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let mut cfg: serde_json::Value = serde_json::from_str(&dual_stack_config(
        OVERLAY_NETWORK,
        OVERLAY_NETWORK6,
        "wireguard",
    ))
    .unwrap();
    cfg["Backend"]["Mode"] = "ipv6".into();
    etcd.put(&format!("{ETCD_PREFIX}/config"), &cfg.to_string());
    let keys = TempDir::new("wgkeys");
    let mut ds: Vec<Overlayd> = (0..2).map(|i| spawn_dual(&topo, i, &etcd, &keys)).collect();
    let addrs: Vec<(IpAddr, IpAddr)> = ds.iter_mut().map(overlay_addrs).collect();
    for (i, j) in [(0, 1), (1, 0)] {
        ping(&topo, i, addrs[j].0, "IPv4 over the IPv6 underlay");
        ping(&topo, i, addrs[j].1, "IPv6 over the IPv6 underlay");
    }
    for (i, d) in ds.iter().enumerate() {
        assert!(!topo.host(i).has_link("flannel-wg-v6"), "one device only");
        let page = d.scrape();
        let peer = page
            .lines()
            .find(|l| l.starts_with("overlayd_wireguard_peer_bytes_total{"))
            .unwrap_or_else(|| panic!("h{}: no peer on /metrics:\n{page}", i + 1));
        let other = host_ip6(1 - i);
        assert!(
            peer.contains(&format!("endpoint=\"[{other}]:51820\"")),
            "{peer}"
        );
    }
}

/// An IPv6-only network (IPv6-only underlay, etcd over IPv6): in `separate` mode only
/// `flannel-wg-v6` exists, and two nodes ping each other over it.
#[test]
fn netns_wireguard_ipv6_only() {
    if skip_unless_root("netns_wireguard_ipv6_only") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = ipv6_only_underlay(&mut topo);
    let cfg = ipv6_only_config(OVERLAY_NETWORK6, "wireguard");
    etcd.put(&format!("{ETCD_PREFIX}/config"), &cfg);
    let keys = TempDir::new("wgkeys");
    let mut ds: Vec<Overlayd> = (0..2)
        .map(|i| {
            let env = format!("WIREGUARD_KEY_FILE={}/h{i}", keys.path().display());
            let args = [
                "--backend",
                "wireguard",
                "--etcd-endpoints",
                &etcd.endpoint(),
            ];
            let more = [
                "--etcd-prefix",
                ETCD_PREFIX,
                "--iface",
                "eth0",
                "-v",
                "debug",
            ];
            let args: Vec<&str> = args.into_iter().chain(more).collect();
            Overlayd::spawn_wrapped(topo.host(i), &["env", &env], args)
        })
        .collect();
    let sn6: Vec<ipnet::Ipv6Net> = ds.iter_mut().map(|d| wait_ready6(d, READY)).collect();
    for (i, j) in [(0, 1), (1, 0)] {
        ping(&topo, i, sn6[j].network().into(), "IPv6 only");
        assert!(topo.host(i).has_link("flannel-wg-v6"));
        assert!(!topo.host(i).has_link("flannel-wg"), "no IPv4 device");
    }
}

/// Once `d` is ready: its overlay addresses (the network address of each subnet).
fn overlay_addrs(d: &mut Overlayd) -> (IpAddr, IpAddr) {
    let a4 = overlay_ip_of(&d.wait_ready(READY));
    let sn6 = ipv6_subnet_in(d.subnet_file()).expect("a dual-stack node has an IPv6 subnet");
    (a4.into(), sn6.network().into())
}

/// Three overlayd nodes on wireguard with flannel's dual-stack config (`separate` mode:
/// `flannel-wg` over the IPv4 underlay, `flannel-wg-v6` over the IPv6 one, each node with
/// `--public-ipv6`): every pair pings over IPv4 and IPv6; then a fourth node joins and
/// every pair with it pings both families.
#[test]
fn netns_wireguard_dual_stack_mesh_with_late_joiner() {
    if skip_unless_root("netns_wireguard_dual_stack_mesh_with_late_joiner") {
        return;
    }
    let t = Instant::now();
    let mut topo = Topology::new(4);
    let etcd = topo.start_etcd();
    put_dual_stack_config(&etcd, ETCD_PREFIX, "wireguard");
    let keys = TempDir::new("wgkeys");
    let start = |i: usize| spawn_dual(&topo, i, &etcd, &keys);
    let mut ds: Vec<Overlayd> = (0..3).map(start).collect();
    let (mut v4, mut v6): (Vec<IpAddr>, Vec<IpAddr>) = (Vec::new(), Vec::new());
    for d in ds.iter_mut() {
        let (a4, a6) = overlay_addrs(d);
        v4.push(a4);
        v6.push(a6);
    }
    for (i, j) in (0..3).flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j))) {
        ping(&topo, i, v4[j], "IPv4");
        ping(&topo, i, v6[j], "IPv6");
    }
    let mesh = t.elapsed();
    ds.push(start(3));
    let (a4, a6) = overlay_addrs(&mut ds[3]);
    v4.push(a4);
    v6.push(a6);
    for i in 0..3 {
        for (a, b) in [(i, 3), (3, i)] {
            ping(&topo, a, v4[b], "late joiner, IPv4");
            ping(&topo, a, v6[b], "late joiner, IPv6");
        }
    }
    for (i, d) in ds.iter().enumerate() {
        assert!(topo.host(i).has_link("flannel-wg") && topo.host(i).has_link("flannel-wg-v6"));
        for dev in ["flannel-wg", "flannel-wg-v6"] {
            // Counted at the engine's next timer turn (100 ms).
            let label = format!("device=\"{dev}\"");
            let counted = wait_until(Duration::from_secs(3), || {
                d.metric("overlayd_wireguard_handshakes_total", &[&label]) >= 1.0
            });
            assert!(counted, "h{}: no handshake on {dev}", i + 1);
        }
    }
    status_shows_peers(&topo, &etcd);
    eprintln!(
        "mesh of 3 in {mesh:?}, with the late joiner in {:?}",
        t.elapsed()
    );
}

/// A node set up as flanneld's wireguard backend sets one up, on wireguard-go (userspace)
/// with `wg`: its own key, `listen-port` 51820, the device address and the route to the
/// network, and a lease written as flanneld writes it. Its control socket lives in
/// /var/run/wireguard, shared by every namespace, so the device has a name of its own;
/// the socket is removed on drop (the process goes with its namespace).
struct FlannelNode {
    dev: String,
    key: String,
    public: String,
    subnet: ipnet::Ipv4Net,
}

impl Drop for FlannelNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.dev));
    }
}

/// Whether wireguard-go and wg are installed (scripts/install-deps.sh installs them).
fn skip_without_wireguard_go(test: &str) -> bool {
    let have = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("wireguard-go") && have("wg") {
        return false;
    }
    eprintln!(
        "!!! SKIPPED {test}: needs wireguard-go and wg (scripts/install-deps.sh installs them)"
    );
    true
}

impl FlannelNode {
    fn start(
        ns: &Netns,
        etcd: &Etcd,
        ip: std::net::Ipv4Addr,
        subnet: &str,
        tag: &str,
    ) -> FlannelNode {
        let dev = format!("wgt{}{tag}", std::process::id() % 100_000);
        let key = ns.run(&["wg", "genkey"]).trim().to_string();
        let public = ns.sh(&format!("echo {key} | wg pubkey")).trim().to_string();
        let node = FlannelNode {
            dev,
            key,
            public,
            subnet: subnet.parse().unwrap(),
        };
        let d = &node.dev;
        ns.sh(&format!(
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go {d}"
        ));
        ns.sh(&format!(
            "echo {} > /tmp/{d}.key && wg set {d} private-key /tmp/{d}.key listen-port 51820 && rm /tmp/{d}.key",
            node.key
        ));
        ns.ip(&format!("addr add {}/32 dev {d}", node.subnet.network()));
        ns.ip(&format!("link set {d} mtu {} up", UNDERLAY_MTU - 80));
        ns.ip(&format!("route add {OVERLAY_NETWORK} dev {d}"));
        let lease = format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{}"}}}}"#,
            node.public
        );
        etcd.put_with_lease(&lease_key_of(node.subnet), &lease, 3600);
        node
    }

    /// `wg set ... peer` for the overlayd node holding `subnet` at `ip`, as flanneld's
    /// AddPeer does (endpoint PublicIP:port, AllowedIPs = the lease's subnet, the PSK).
    fn add_peer(
        &self,
        ns: &Netns,
        etcd: &Etcd,
        ip: std::net::Ipv4Addr,
        subnet: &str,
        psk: Option<&str>,
    ) {
        let d = &self.dev;
        let psk = match psk {
            Some(p) => {
                ns.sh(&format!("echo {p} > /tmp/{d}.psk"));
                format!("preshared-key /tmp/{d}.psk")
            }
            None => String::new(),
        };
        ns.sh(&format!(
            "wg set {d} peer {} endpoint {ip}:51820 allowed-ips {} {psk}; rm -f /tmp/{d}.psk",
            lease_key(etcd, subnet),
            subnet_of(subnet)
        ));
    }
}

/// overlayd (h1) and a flanneld-style wireguard-go node (h2): ping and TCP both ways, then
/// overlayd restarts with the same key and the tunnel comes back without touching h2.
fn interop(psk: Option<&str>, test: &str) {
    if skip_unless_root(test) || skip_without_wireguard_go(test) {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let extra = psk.map(|p| format!(r#","PSK":"{p}""#)).unwrap_or_default();
    put_config(&etcd, &extra);
    let (h1, h2) = (topo.host(0), topo.host(1));
    let flannel = FlannelNode::start(h2, &etcd, h2.ip, "10.244.200.0/24", "f");
    let keys = TempDir::new("wgkeys");
    let mut d1 = spawn(h1, &etcd, &keys.path().join("wgkey"), &[]);
    let s1 = d1.wait_ready(READY);
    let flannel_ip = flannel.subnet.network();
    if psk.is_some() {
        // Without the PSK on the flanneld side no handshake completes: the PSK is in use.
        flannel.add_peer(h2, &etcd, h1.ip, &s1, None);
        assert!(
            !ping_until(h1, flannel_ip, Duration::from_secs(3)),
            "PSK ignored"
        );
    }
    flannel.add_peer(h2, &etcd, h1.ip, &s1, psk);
    both_ways(h1, overlay_ip_of(&s1), h2, flannel_ip, 2);
    d1.restart();
    assert_eq!(d1.wait_ready(READY), s1);
    both_ways(h1, overlay_ip_of(&s1), h2, flannel_ip, 1);
    let wg = h2.run(&["wg", "show", &flannel.dev, "latest-handshakes"]);
    assert!(wg.contains(&lease_key(&etcd, &s1)), "{wg}");
    let st = d1.terminate(Duration::from_secs(5));
    assert!(st.is_some_and(|s| s.success()), "clean exit on SIGTERM");
}

#[test]
fn netns_wireguard_interop_with_wireguard_go() {
    interop(None, "netns_wireguard_interop_with_wireguard_go");
}

#[test]
fn netns_wireguard_interop_with_psk() {
    // As `wg genpsk` prints one.
    let psk = "sY5pDqyS2PZzvKZSUzJWTWzxGx3hD8nG1QGq8A7WJ1w=";
    interop(Some(psk), "netns_wireguard_interop_with_psk");
}
