//! An etcd cluster, not one etcd: every node is given the client URLs of a real 3-member
//! cluster (each member in its own namespace, `tests/common/etcd_cluster.rs`), and members
//! fail under it — the leader killed, a follower killed, a member partitioned (packets
//! dropped inside its namespace, so connections hang) or cut from its peers only, a member
//! restarted on its data. Proved each time: nodes start, renew, learn joins and leaves
//! within seconds, keep forwarding, never exit, and hold exactly one lease each.
//!
//! The figures measured are printed (`--no-capture`) and recorded in docs/reliability.md.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ipnet::Ipv4Net;

const READY: Duration = Duration::from_secs(30);
/// How soon a node must learn a join or a leave, whatever the fault.
const LEARN: Duration = Duration::from_secs(20);

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Whether `d`'s log has a line with every one of `needles`.
fn log_has(d: &Overlayd, needles: &[&str]) -> bool {
    d.log()
        .lines()
        .any(|l| needles.iter().all(|n| l.contains(n)))
}

/// A stand-in node: a vxlan lease for `10.244.(200+n).0/24` at `192.168.77.(100+n)`,
/// written as a flannel node writes it (on an etcd lease).
fn fake_node(n: u8) -> (String, Ipv4Net, String) {
    let subnet: Ipv4Net = format!("10.244.{}.0/24", 200 + n as u32).parse().unwrap();
    let ip = Ipv4Addr::new(192, 168, 77, 100 + n);
    let value = vxlan_lease_value(ip, 1, &format!("0e:00:00:00:00:{n:02x}"));
    (lease_key(ETCD_PREFIX, subnet), subnet, value)
}

/// A node joins (a lease appears) and then leaves (it is deleted): how long until every
/// daemon in `ds` logged each. Panics past [`LEARN`].
fn join_and_leave(cluster: &EtcdCluster, ds: &[&Overlayd], n: u8, what: &str) -> (f64, f64) {
    let (key, subnet, value) = fake_node(n);
    let sn = format!("subnet={subnet}");
    // Timed from before the write: etcdctl's own start-up is included.
    let t = Instant::now();
    cluster.put_with_lease(&key, &value, 600);
    wait_until(LEARN, || {
        ds.iter().all(|d| log_has(d, &["peer added", &sn]))
    })
    .unwrap_or_else(|| panic!("{what}: a join ({subnet}) not learned within {LEARN:?}"));
    let joined = t.elapsed();
    let t = Instant::now();
    assert_eq!(
        cluster.del(&key),
        1,
        "{what}: the stand-in lease is deleted"
    );
    wait_until(LEARN, || {
        ds.iter().all(|d| log_has(d, &["peer removed", &sn]))
    })
    .unwrap_or_else(|| panic!("{what}: a leave ({subnet}) not learned within {LEARN:?}"));
    let left = t.elapsed();
    println!(
        "{what}: join learned by {} node(s) in {:.2} s, leave in {:.2} s",
        ds.len(),
        joined.as_secs_f64(),
        left.as_secs_f64()
    );
    (joined.as_secs_f64(), left.as_secs_f64())
}

/// Exactly one lease per node, each on its expected subnet and on a live etcd lease.
fn one_live_lease_each(cluster: &EtcdCluster, nodes: &BTreeMap<Ipv4Addr, Ipv4Net>, what: &str) {
    let leases = cluster.leases(ETCD_PREFIX);
    for (ip, subnet) in nodes {
        let mine: Vec<&Lease> = leases.iter().filter(|l| l.public_ip == *ip).collect();
        assert_eq!(
            mine.len(),
            1,
            "{what}: node {ip} holds exactly one lease: {mine:?}"
        );
        assert_eq!(mine[0].subnet, *subnet, "{what}: node {ip} kept its subnet");
        let id = cluster
            .lease_id_of(&lease_key(ETCD_PREFIX, *subnet))
            .unwrap_or_else(|| panic!("{what}: {subnet} has no etcd lease id"));
        let ttl = cluster.lease_ttl(id);
        assert!(
            ttl.is_some_and(|t| t > 3600),
            "{what}: {subnet}'s etcd lease {id:x} is alive (ttl {ttl:?})"
        );
    }
}

/// The member the daemon in `ns` has a connection to (the first one `ss` lists).
fn member_in_use(cluster: &EtcdCluster, ns: &Netns) -> Option<usize> {
    let out = ns.run(&["ss", "-Htn", "state", "established", "( dport = :2379 )"]);
    cluster
        .members
        .iter()
        .position(|m| out.contains(&format!("{}:2379", m.ip)))
}

/// `overlayd status` with every endpoint, from `ns`: (ok, seconds, output).
fn status(ns: &Netns, cluster: &EtcdCluster) -> (bool, f64, String) {
    status_with(ns, cluster, &[])
}

/// `overlayd status` against every member, with `extra` flags (TLS, credentials), bounded:
/// whether it succeeded, how long it took, its output.
fn status_with(ns: &Netns, cluster: &EtcdCluster, extra: &[String]) -> (bool, f64, String) {
    let t = Instant::now();
    let endpoints = cluster.endpoints();
    let mut cmd = vec![
        "timeout",
        "60",
        Overlayd::bin(),
        "status",
        "--etcd-endpoints",
        &endpoints,
    ];
    cmd.extend(extra.iter().map(String::as_str));
    let out = ns.output(&cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), t.elapsed().as_secs_f64(), text)
}

fn assert_running(ds: &mut [&mut Overlayd], what: &str) {
    for d in ds.iter_mut() {
        assert!(
            d.is_running(),
            "{what}: a daemon exited:\n{}",
            tail(d.log_path(), 30)
        );
    }
}

/// Waits (bounded) for a lease keepalive logged after `since_count` earlier ones.
fn renewed(d: &Overlayd, since_count: usize, timeout: Duration) -> Option<Duration> {
    wait_until(timeout, || {
        count_lines(&d.log(), "lease kept alive") > since_count
    })
}

/// The issue's scenario, with figures: the leader killed (a node starts during the
/// election), the leader restarted on its data, then a follower killed and three nodes
/// started with two members left. Two fixed nodes ping each other throughout.
#[test]
fn netns_etcd_cluster_leader_and_follower_killed() {
    if skip_unless_root("netns_etcd_cluster_leader_and_follower_killed") {
        return;
    }
    let mut topo = Topology::new(6);
    let mut cluster = EtcdCluster::start(&mut topo, 3);
    // Keepalives every 30 s (the shortest the daemon does), so a renewal is seen in the test.
    let base = {
        let mut a = cluster_args("vxlan", &cluster);
        a.extend(["--subnet-lease-renew-margin".into(), "1".into()]);
        a
    };
    let mut d1 = Overlayd::spawn(topo.host(0), base.clone());
    let mut d2 = Overlayd::spawn(topo.host(1), base.clone());
    let s1 = subnet_of(&d1.wait_ready(READY));
    let s2 = subnet_of(&d2.wait_ready(READY));
    assert!(ping_until(
        topo.host(0),
        s2.network(),
        Duration::from_secs(10)
    ));
    let ping = PingStream::start(topo.host(0), s2.network(), "0.2", 3000);
    let mut nodes: BTreeMap<Ipv4Addr, Ipv4Net> =
        [(host_ip(0), s1), (host_ip(1), s2)].into_iter().collect();
    let keepalives = (
        count_lines(&d1.log(), "lease kept alive"),
        count_lines(&d2.log(), "lease kept alive"),
    );

    // 1. The leader dies; a node starts at once, during the election.
    let leader = cluster.leader().expect("a leader");
    let (mut d3, s3) = kill_leader_while_a_node_starts(&mut cluster, &topo, &base, leader, s1);
    nodes.insert(host_ip(2), s3);
    join_and_leave(&cluster, &[&d1, &d2, &d3], 1, "leader killed");
    assert_running(&mut [&mut d1, &mut d2, &mut d3], "leader killed");

    // 2. The old leader comes back on its data.
    let back = cluster.restart(leader);
    println!(
        "{} restarted on its data: healthy after {:.2} s",
        cluster.members[leader].name,
        back.as_secs_f64()
    );
    join_and_leave(&cluster, &[&d1, &d2, &d3], 2, "member restarted");

    // 3. A follower dies; three nodes start with two members left (each node's client
    //    starts on a random endpoint, so some begin with the dead one).
    let mut late = kill_a_follower_while_nodes_start(&mut cluster, &topo, &base, s1, &mut nodes);
    let late_refs: Vec<&Overlayd> = late.iter().collect();
    let mut all: Vec<&Overlayd> = vec![&d1, &d2, &d3];
    all.extend(late_refs);
    join_and_leave(&cluster, &all, 3, "follower killed");
    let (ok, secs, out) = status(topo.host(0), &cluster);
    assert!(ok, "overlayd status with a member down: {out}");
    assert!(
        out.lines().filter(|l| l.starts_with("10.244.")).count() == nodes.len(),
        "status lists every lease: {out}"
    );
    println!("overlayd status with a member down: {secs:.2} s");

    // Renewal: each fixed node renewed its lease after the faults began.
    for (d, before) in [(&d1, keepalives.0), (&d2, keepalives.1)] {
        let r = renewed(d, before, Duration::from_secs(45));
        assert!(r.is_some(), "the lease is kept alive through the faults");
    }
    assert_forwarded_throughout(ping, "all of it");
    let mut ds: Vec<&mut Overlayd> = vec![&mut d1, &mut d2, &mut d3];
    ds.extend(late.iter_mut());
    assert_running(&mut ds, "end");
    one_live_lease_each(&cluster, &nodes, "end");
}

/// Kills the leader and starts a node on host 2 at once, during the election: the cluster
/// elects another, the node gets ready, and it and h1, h2 reach each other. Returns the node
/// and its subnet.
fn kill_leader_while_a_node_starts(
    cluster: &mut EtcdCluster,
    topo: &Topology,
    args: &[String],
    leader: usize,
    s1: Ipv4Net,
) -> (Overlayd, Ipv4Net) {
    let t = Instant::now();
    cluster.kill(leader);
    let mut d3 = Overlayd::spawn(topo.host(2), args);
    let elected = cluster
        .wait_quorum(Duration::from_secs(30))
        .expect("two members elect a leader");
    let s3 = subnet_of(&d3.wait_ready(READY));
    let ready3 = t.elapsed();
    println!(
        "leader {} killed: writes accepted again after {:.2} s; a node started then was ready after {:.2} s",
        cluster.members[leader].name,
        elected.as_secs_f64(),
        ready3.as_secs_f64()
    );
    for (from, to) in [(0, s3), (2, s1), (1, s3)] {
        assert!(
            ping_until(topo.host(from), to.network(), Duration::from_secs(10)),
            "leader killed: h{} reaches {to}",
            from + 1
        );
    }
    (d3, s3)
}

/// Kills a follower; with two members left, nodes start on hosts 3..6, get ready and reach
/// h1 (their subnets go into `nodes`). Returns them.
fn kill_a_follower_while_nodes_start(
    cluster: &mut EtcdCluster,
    topo: &Topology,
    args: &[String],
    s1: Ipv4Net,
    nodes: &mut BTreeMap<Ipv4Addr, Ipv4Net>,
) -> Vec<Overlayd> {
    let current = cluster.leader().expect("a leader after the restart");
    let follower = (0..3).find(|&i| i != current).unwrap();
    cluster.kill(follower);
    cluster
        .wait_quorum(Duration::from_secs(30))
        .expect("two members keep the quorum");
    let t = Instant::now();
    let mut late: Vec<Overlayd> = (3..6)
        .map(|i| Overlayd::spawn(topo.host(i), args))
        .collect();
    for (k, d) in late.iter_mut().enumerate() {
        let s = subnet_of(&d.wait_ready(READY));
        nodes.insert(host_ip(3 + k), s);
        assert!(
            ping_until(topo.host(3 + k), s1.network(), Duration::from_secs(10)),
            "follower killed: h{} reaches h1",
            4 + k
        );
    }
    println!(
        "follower {} killed: 3 nodes started with 2 members left, all ready after {:.2} s",
        cluster.members[follower].name,
        t.elapsed().as_secs_f64()
    );
    late
}

/// A member partitioned (every packet to and from it dropped inside its namespace, so
/// connections hang), then healed; then a member cut from its peers only (it loses the
/// quorum but clients still reach it). The fault is applied to the member h1's daemon is
/// talking to. L2 membership rides the same failover.
#[test]
fn netns_etcd_cluster_partitioned_member() {
    if skip_unless_root("netns_etcd_cluster_partitioned_member") {
        return;
    }
    let mut topo = Topology::new(4);
    let cluster = EtcdCluster::start(&mut topo, 3);
    cluster.put(
        &l2_network_key(ETCD_PREFIX, "ten"),
        r#"{"VNI":100,"Backend":"vxlan"}"#,
    );
    let args = |l2: bool| {
        let mut a = cluster_args("vxlan", &cluster);
        a.extend(["--metrics-addr".into(), "127.0.0.1:9108".into()]);
        if l2 {
            a.extend(["--l2".into(), "ten".into()]);
        }
        a
    };
    let mut d1 = Overlayd::spawn(topo.host(0), args(true));
    let mut d2 = Overlayd::spawn(topo.host(1), args(true));
    let s1 = subnet_of(&d1.wait_ready(READY));
    let s2 = subnet_of(&d2.wait_ready(READY));
    assert!(ping_until(
        topo.host(0),
        s2.network(),
        Duration::from_secs(10)
    ));
    let l2_members = |d: &Overlayd| d.metric("overlayd_l2_members", &["network=\"ten\""]);
    wait_until(Duration::from_secs(20), || l2_members(&d1) == 1.0)
        .expect("h1 sees h2 in the L2 network");
    let ping = PingStream::start(topo.host(0), s2.network(), "0.2", 3000);
    let mut nodes: BTreeMap<Ipv4Addr, Ipv4Net> =
        [(host_ip(0), s1), (host_ip(1), s2)].into_iter().collect();

    // 1. Full partition of the member h1 uses.
    let m = wait_until(Duration::from_secs(10), || {
        member_in_use(&cluster, topo.host(0)).is_some()
    })
    .and_then(|_| member_in_use(&cluster, topo.host(0)))
    .expect("h1's daemon holds a connection to a member");
    let ep = cluster.members[m].endpoint();
    let failovers = count_lines(&d1.log(), "moving to the next endpoint");
    let t = Instant::now();
    cluster.partition(m);
    // A join written right away (through the healthy members): h1 learns it once its watch
    // moved off the partitioned member.
    let (learned, join) = learn_a_join(&cluster, &d1, 4, t, "while a member is partitioned");
    let moved = count_lines(&d1.log(), "moving to the next endpoint") > failovers;
    println!(
        "{} partitioned (DROP inside its namespace): h1 learned a join {:.2} s after the partition began{}",
        cluster.members[m].name,
        learned.as_secs_f64(),
        if moved { " (after moving off the member)" } else { "" }
    );
    assert!(
        moved && log_has(&d1, &["moving to the next endpoint", &ep]),
        "h1 left the partitioned member {ep}"
    );
    learn_the_leave(&cluster, &d1, join);
    // Two new nodes whose endpoint lists start with the partitioned member (each client
    // starts at a random member; one that starts at the partitioned one pays its connect
    // timeout, then moves on).
    let (mut d3, mut d4, s3) = start_two_nodes(
        &topo,
        endpoints_first(args(false), &cluster, &ep),
        &mut nodes,
    );
    assert!(ping_until(
        topo.host(0),
        s3.network(),
        Duration::from_secs(10)
    ));
    let (ok, secs, out) = status(topo.host(0), &cluster);
    assert!(ok, "overlayd status with a member partitioned: {out}");
    println!("overlayd status with a member partitioned: {secs:.2} s");
    // L2: a member appears and is learned through the failed-over watch (announced: it
    // holds no subnet lease, so it is counted apart, not used).
    cluster.put(
        &l2_member_key(ETCD_PREFIX, "ten", Ipv4Addr::new(192, 168, 77, 99)),
        r#"{"PublicIP":"192.168.77.99"}"#,
    );
    let announced =
        |d: &Overlayd| d.metric("overlayd_l2_members_without_lease", &["network=\"ten\""]);
    let l2 = wait_until(Duration::from_secs(30), || announced(&d1) == 1.0)
        .expect("an L2 member is learned with a member partitioned");
    println!("L2 member learned in {:.2} s", l2.as_secs_f64());
    cluster.heal(m);

    // 2. The member h1 now uses loses its peers (clients still reach it).
    cut_a_member_from_its_peers(&cluster, topo.host(0), &d1);

    assert_forwarded_throughout(ping, "both faults");
    assert_running(&mut [&mut d1, &mut d2, &mut d3, &mut d4], "end");
    one_live_lease_each(&cluster, &nodes, "end");
}

/// The member `h1`'s daemon uses loses its peers (clients still reach it): a join written
/// then is learned, and its leave, then the member is healed.
fn cut_a_member_from_its_peers(cluster: &EtcdCluster, h1: &Host, d1: &Overlayd) {
    thread::sleep(Duration::from_secs(2));
    let k = member_in_use(cluster, h1).expect("h1 is connected to a member");
    let failovers = count_lines(&d1.log(), "moving to the next endpoint");
    let t = Instant::now();
    cluster.isolate_peers(k);
    let (learned, join) = learn_a_join(cluster, d1, 5, t, "while a member has lost its peers");
    println!(
        "{} cut from its peers: h1 learned a join {:.2} s after the cut ({} endpoint move(s))",
        cluster.members[k].name,
        learned.as_secs_f64(),
        count_lines(&d1.log(), "moving to the next endpoint") - failovers
    );
    learn_the_leave(cluster, d1, join);
    cluster.heal(k);
}

/// The ping h1 -> h2 (every 0.2 s) left running through `what`: answered all but at most one.
fn assert_forwarded_throughout(ping: PingStream, what: &str) {
    let p = ping.finish();
    println!(
        "h1 -> h2 every 0.2 s through {what}: {}/{} answered",
        p.received, p.sent
    );
    assert!(
        p.sent > 50 && p.received + 1 >= p.sent,
        "forwarding never stopped: {p:?}"
    );
}

/// Writes fake node `n`'s lease (through whichever members answer) and waits until `d` logs
/// it as added; returns how long after `t` that was, and the (key, "subnet=...") to remove.
fn learn_a_join(
    cluster: &EtcdCluster,
    d: &Overlayd,
    n: u8,
    t: Instant,
    fault: &str,
) -> (Duration, (String, String)) {
    let (key, subnet, value) = fake_node(n);
    cluster.put_with_lease(&key, &value, 600);
    let sn = format!("subnet={subnet}");
    let learned = wait_until(Duration::from_secs(30), || log_has(d, &["peer added", &sn]))
        .map(|_| t.elapsed())
        .unwrap_or_else(|| panic!("a join is learned {fault}"));
    (learned, (key, sn))
}

/// Deletes the lease [`learn_a_join`] wrote and waits until `d` logs the peer removed.
fn learn_the_leave(cluster: &EtcdCluster, d: &Overlayd, (key, sn): (String, String)) {
    assert_eq!(cluster.del(&key), 1);
    wait_until(LEARN, || log_has(d, &["peer removed", &sn])).expect("the leave is learned");
}

/// Starts nodes on hosts 2 and 3 with `a` (their subnets go into `nodes`); returns them and
/// the first one's subnet.
fn start_two_nodes(
    topo: &Topology,
    a: Vec<String>,
    nodes: &mut BTreeMap<Ipv4Addr, Ipv4Net>,
) -> (Overlayd, Overlayd, Ipv4Net) {
    let t = Instant::now();
    let mut d3 = Overlayd::spawn(topo.host(2), a.clone());
    let mut d4 = Overlayd::spawn(topo.host(3), a);
    let s3 = subnet_of(&d3.wait_ready(READY));
    let s4 = subnet_of(&d4.wait_ready(READY));
    nodes.insert(host_ip(2), s3);
    nodes.insert(host_ip(3), s4);
    println!(
        "two nodes started with the partitioned member first in their list: both ready after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    (d3, d4, s3)
}

/// `args` with its `--etcd-endpoints` list starting with `first`, then the other members.
fn endpoints_first(mut args: Vec<String>, cluster: &EtcdCluster, first: &str) -> Vec<String> {
    let i = args.iter().position(|x| x == "--etcd-endpoints").unwrap() + 1;
    let others: Vec<String> = cluster
        .members
        .iter()
        .filter(|x| x.endpoint() != first)
        .map(|x| x.endpoint())
        .collect();
    args[i] = format!("{first},{}", others.join(","));
    args
}

/// VmRSS of a process in KiB.
/// The soak's daemons: h1 and h2 fixed (in L2 network "ten" too), h3 and h4 the churners,
/// each run once so that their leases exist (as flannel's, leases outlive a stop); all at
/// info level (a debug line per forwarding-table update would be most of the log). Returns
/// them and every node's subnet.
fn start_soak_nodes(
    topo: &Topology,
    cluster: &EtcdCluster,
) -> (
    Overlayd,
    Overlayd,
    Vec<Overlayd>,
    BTreeMap<Ipv4Addr, Ipv4Net>,
) {
    let fixed = |l2: bool| {
        let mut a = cluster_args("vxlan", cluster);
        a.extend(["--metrics-addr".into(), "127.0.0.1:9108".into()]);
        if l2 {
            a.extend(["--l2".into(), "ten".into()]);
        }
        // Info level: a debug line per forwarding-table update would be most of the log.
        let i = a.iter().position(|x| x == "-v").unwrap();
        a[i + 1] = "info".into();
        a
    };
    let mut d1 = Overlayd::spawn(topo.host(0), fixed(true));
    let mut d2 = Overlayd::spawn(topo.host(1), fixed(true));
    let s1 = subnet_of(&d1.wait_ready(READY));
    let s2 = subnet_of(&d2.wait_ready(READY));
    let mut churners: Vec<Overlayd> = (2..4)
        .map(|i| Overlayd::spawn(topo.host(i), fixed(false)))
        .collect();
    let mut nodes: BTreeMap<Ipv4Addr, Ipv4Net> =
        [(host_ip(0), s1), (host_ip(1), s2)].into_iter().collect();
    for (k, d) in churners.iter_mut().enumerate() {
        nodes.insert(host_ip(2 + k), subnet_of(&d.wait_ready(READY)));
    }
    (d1, d2, churners, nodes)
}

/// RSS of the fixed daemons stays flat: what the churn added after the first samples stays
/// small.
fn assert_rss_flat(rss: &[(u64, u64)]) {
    let first = rss.get(1).or(rss.first()).copied().unwrap_or((0, 0));
    let last = rss.last().copied().unwrap_or((0, 0));
    let max = rss.iter().fold((0, 0), |m, r| (m.0.max(r.0), m.1.max(r.1)));
    println!(
        "soak: RSS h1 {} -> {} KiB (max {}), h2 {} -> {} KiB (max {})",
        first.0, last.0, max.0, first.1, last.1, max.1
    );
    for (a, z, h) in [(first.0, last.0, "h1"), (first.1, last.1, "h2")] {
        assert!(
            z <= a + 4096,
            "{h}: RSS grew from {a} to {z} KiB during the churn"
        );
    }
}

/// The churners stop cleanly, leaving no device and no process behind.
fn stop_churners(topo: &Topology, churners: &mut [Overlayd]) {
    for (k, d) in churners.iter_mut().enumerate() {
        assert!(d
            .terminate(Duration::from_secs(5))
            .is_some_and(|s| s.success()));
        let ns = topo.host(2 + k);
        assert!(!ns.has_link("flannel.1"), "h{}: device removed", 3 + k);
        assert!(ns.pids().is_empty(), "h{}: no process left", 3 + k);
    }
}

/// What the soak's churn has done so far, and what it still has to undo.
#[derive(Debug, Default)]
struct Churn {
    joins: u64,
    deletes: u64,
    expiring: u64,
    restarts: u64,
    /// Long-lease stand-ins to delete, and when.
    pending_delete: Vec<(Instant, String)>,
    /// The killed leader and when to restart it.
    member_restart: Option<(usize, Instant)>,
    restarted_member: bool,
    /// RSS of h1's and h2's daemons (KiB), sampled every 5 s.
    rss: Vec<(u64, u64)>,
}

impl Churn {
    /// One second's stand-ins: an L3 lease (2 s and left to expire, or 600 s and deleted 2 s
    /// later), every other second an L2 member on a 2 s lease; the due deletes.
    fn stand_ins(&mut self, cluster: &EtcdCluster, tick: u64) {
        let n = (tick % 50) as u8;
        let (key, _, value) = fake_node(n);
        if tick % 2 == 0 {
            cluster.put_with_lease(&key, &value, 2);
            self.expiring += 1;
        } else {
            cluster.put_with_lease(&key, &value, 600);
            self.pending_delete
                .push((Instant::now() + Duration::from_secs(2), key));
        }
        self.joins += 1;
        if tick % 2 == 1 {
            let ip = Ipv4Addr::new(192, 168, 77, 150 + (tick % 40) as u8);
            cluster.put_with_lease(
                &l2_member_key(ETCD_PREFIX, "ten", ip),
                &format!(r#"{{"PublicIP":"{ip}"}}"#),
                2,
            );
        }
        let now = Instant::now();
        for (_, k) in self.pending_delete.iter().filter(|(at, _)| *at <= now) {
            self.deletes += cluster.del(k);
        }
        self.pending_delete.retain(|(at, _)| *at > now);
    }

    /// A running churner stops cleanly; a stopped one starts again.
    fn stop_or_start(&mut self, d: &mut Overlayd) {
        if d.is_running() {
            assert!(
                d.terminate(Duration::from_secs(5))
                    .is_some_and(|s| s.success()),
                "a churning daemon stops cleanly"
            );
        } else {
            d.restart();
        }
        self.restarts += 1;
    }

    /// The leader killed a third of the way in, restarted on its data 5 s later.
    fn leader_fault(&mut self, cluster: &mut EtcdCluster, start: Instant, secs: u64) {
        if !self.restarted_member
            && self.member_restart.is_none()
            && start.elapsed().as_secs() >= secs / 3
        {
            let l = cluster.leader().expect("a leader");
            cluster.kill(l);
            println!(
                "soak: t={:.0} s: leader {} killed",
                start.elapsed().as_secs_f64(),
                cluster.members[l].name
            );
            self.member_restart = Some((l, Instant::now() + Duration::from_secs(5)));
        }
        if let Some((l, at)) = self.member_restart {
            if Instant::now() >= at {
                let took = cluster.restart(l);
                println!(
                    "soak: t={:.0} s: {} restarted on its data, healthy after {:.2} s",
                    start.elapsed().as_secs_f64(),
                    cluster.members[l].name,
                    took.as_secs_f64()
                );
                self.member_restart = None;
                self.restarted_member = true;
            }
        }
    }
}

/// After the churn: no metric series, FDB entry, link or route more than before it on the
/// fixed nodes h1 and h2.
fn assert_nothing_leaked(
    topo: &Topology,
    (base1, after1): (&BTreeMap<String, usize>, &BTreeMap<String, usize>),
    fdb_after: f64,
    links: &(Vec<String>, Vec<String>),
    routes: &(Vec<String>, Vec<String>),
) {
    for (name, n) in after1 {
        let before = base1.get(name).copied().unwrap_or(0);
        assert!(
            *n <= before,
            "metric {name} leaked series: {before} before the churn, {n} after"
        );
    }
    // Only the two fixed nodes' TAPs send frames (stand-ins send none): at most their MACs.
    assert!(fdb_after <= 2.0, "no leaked FDB entries: {}", fdb_after);
    for (k, ns) in [(0, topo.host(0)), (1, topo.host(1))] {
        let (l, r) = if k == 0 {
            (&links.0, &routes.0)
        } else {
            (&links.1, &routes.1)
        };
        assert_eq!(
            &ip_lines(ns, "link").len(),
            &l.len(),
            "h{}: no leaked link",
            k + 1
        );
        assert_eq!(&ip_lines(ns, "route"), r, "h{}: routes unchanged", k + 1);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How many series each metric has in a Prometheus text page.
fn series_counts(page: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = l.split(['{', ' ']).next().unwrap_or("").to_string();
        *m.entry(name).or_insert(0) += 1;
    }
    m
}

/// Lines of `ip <what> show` in `ns` (for leak checks).
fn ip_lines(ns: &Netns, what: &str) -> Vec<String> {
    ns.ip(&format!("-o {what} show"))
        .lines()
        .map(|l| l.to_string())
        .collect()
}

/// Churn soak: for `SOAK_SECS` (default 150) stand-in nodes join and leave every second
/// (some deleted, some left to expire on a 2 s lease), L2 members likewise, two real
/// daemons are started and stopped in turn, and the etcd leader is killed and restarted on
/// its data once — while two fixed nodes ping each other every 0.1 s and are scraped every
/// 5 s. Then: no ping lost, both fixed daemons alive with one lease each, RSS flat, and no
/// leaked device, route, forwarding entry, L2 member, FDB entry or metric series.
#[test]
fn netns_etcd_churn_soak() {
    if skip_unless_root("netns_etcd_churn_soak") {
        return;
    }
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut topo = Topology::new(4);
    let mut cluster = EtcdCluster::start(&mut topo, 3);
    cluster.put(
        &l2_network_key(ETCD_PREFIX, "ten"),
        r#"{"VNI":100,"Backend":"vxlan"}"#,
    );
    let (mut d1, mut d2, mut churners, nodes) = start_soak_nodes(&topo, &cluster);
    let (s1, s2) = (nodes[&host_ip(0)], nodes[&host_ip(1)]);
    assert!(ping_until(
        topo.host(0),
        s2.network(),
        Duration::from_secs(10)
    ));
    wait_until(Duration::from_secs(20), || {
        d1.metric("overlayd_l2_members", &["network=\"ten\""]) == 1.0
    })
    .expect("h1 sees h2 in the L2 network");
    let baseline = |d: &Overlayd| {
        (
            series_counts(&d.scrape()),
            d.metric("overlayd_peers", &[]),
            d.metric("overlayd_l2_members", &["network=\"ten\""]),
            d.metric("overlayd_l2_fdb_entries", &["network=\"ten\""]),
        )
    };
    let base1 = baseline(&d1);
    let links = (
        ip_lines(topo.host(0), "link"),
        ip_lines(topo.host(1), "link"),
    );
    let routes = (
        ip_lines(topo.host(0), "route"),
        ip_lines(topo.host(1), "route"),
    );
    let ping = PingStream::start(topo.host(0), s2.network(), "0.1", 100_000);
    let back = PingStream::start(topo.host(1), s1.network(), "0.1", 100_000);

    let start = Instant::now();
    let mut churn = Churn::default();
    let mut tick = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        tick += 1;
        churn.stand_ins(&cluster, tick);
        // A real daemon stopped or started every 6 s, in turn.
        if tick % 6 == 0 {
            churn.stop_or_start(&mut churners[((tick / 6) % 2) as usize]);
        }
        churn.leader_fault(&mut cluster, start, secs);
        // A scrape every 5 s, as Prometheus would; RSS sampled with it.
        if tick % 5 == 0 {
            let _ = d1.scrape();
            let _ = d2.scrape();
            churn
                .rss
                .push((rss_kib(d1.pid().unwrap()), rss_kib(d2.pid().unwrap())));
        }
        assert_running(&mut [&mut d1, &mut d2], "soak");
        if let Some(rest) = Duration::from_secs(1).checked_sub(t.elapsed()) {
            thread::sleep(rest);
        }
    }
    let churn_secs = start.elapsed().as_secs_f64();
    for (_, k) in churn.pending_delete.drain(..) {
        churn.deletes += cluster.del(&k);
    }
    for d in churners.iter_mut() {
        if !d.is_running() {
            d.restart();
            d.wait_ready(READY);
        }
    }
    // The stand-ins' leases run out; the tables and series must come back to the baseline.
    let settled = wait_until(Duration::from_secs(30), || {
        d1.metric("overlayd_peers", &[]) == base1.1
            && d1.metric("overlayd_l2_members", &["network=\"ten\""]) == base1.2
    });
    // A series unwritten for 1 s goes at the next scrape: let the last stand-in's age out.
    thread::sleep(Duration::from_millis(1500));
    let _ = d1.scrape();
    let p = ping.finish();
    let b = back.finish();
    let after1 = baseline(&d1);
    let Churn {
        joins,
        expiring,
        deletes,
        restarts,
        ref rss,
        ..
    } = churn;
    println!(
        "soak: {churn_secs:.0} s: {joins} joins ({expiring} left to expire, {deletes} deleted), {restarts} daemon stops/starts, 1 leader restart"
    );
    println!(
        "soak: pings h1->h2 {}/{}, h2->h1 {}/{} answered",
        p.received, p.sent, b.received, b.sent
    );
    assert_rss_flat(rss);
    println!(
        "soak: h1 peers {} -> {}, L2 members {} -> {}, FDB entries {} -> {}, metric series {} -> {}",
        base1.1,
        after1.1,
        base1.2,
        after1.2,
        base1.3,
        after1.3,
        base1.0.values().sum::<usize>(),
        after1.0.values().sum::<usize>()
    );
    assert!(
        settled.is_some(),
        "forwarding table and L2 members back to the baseline"
    );
    assert!(
        p.sent > 10 * secs / 2 && p.received + 2 >= p.sent && b.received + 2 >= b.sent,
        "no loss between the fixed nodes: {p:?} {b:?}"
    );
    assert_nothing_leaked(&topo, (&base1.0, &after1.0), after1.3, &links, &routes);
    stop_churners(&topo, &mut churners);
    assert_running(&mut [&mut d1, &mut d2], "end");
    one_live_lease_each(&cluster, &nodes, "end");
}

/// TLS with client certificates and username/password, across failover: every member
/// serves https and requires both; the leader is killed and restarted (its auth tokens die
/// with it), then another member killed. Nodes start, learn joins and leaves, and keep
/// their leases through it.
#[test]
fn netns_etcd_cluster_tls_and_auth_failover() {
    if skip_unless_root("netns_etcd_cluster_tls_and_auth_failover") {
        return;
    }
    let mut topo = Topology::new(3);
    let certs = TempDir::new("certs");
    make_cluster_certs(certs.path(), &[member_ip(0), member_ip(1), member_ip(2)]);
    let mut cluster = EtcdCluster::start_with(
        &mut topo,
        3,
        Security {
            tls: Some(certs.path().to_path_buf()),
            root_password: Some("r00t".into()),
        },
    );
    cluster.add_overlayd_user("s3cret", ETCD_PREFIX);
    let base = {
        let mut a = cluster_args("vxlan", &cluster);
        a.extend(security_args(&cluster, "s3cret"));
        a
    };
    assert!(base.iter().any(|a| a.starts_with("https://")));
    let mut d1 = Overlayd::spawn(topo.host(0), base.clone());
    let mut d2 = Overlayd::spawn(topo.host(1), base.clone());
    let s1 = subnet_of(&d1.wait_ready(READY));
    let s2 = subnet_of(&d2.wait_ready(READY));
    assert!(ping_until(
        topo.host(0),
        s2.network(),
        Duration::from_secs(10)
    ));
    let mut nodes: BTreeMap<Ipv4Addr, Ipv4Net> =
        [(host_ip(0), s1), (host_ip(1), s2)].into_iter().collect();

    let leader = cluster.leader().expect("a leader");
    cluster.kill(leader);
    cluster
        .wait_quorum(Duration::from_secs(30))
        .expect("quorum");
    join_and_leave(&cluster, &[&d1, &d2], 6, "TLS+auth, leader killed");
    cluster.restart(leader);
    let other = (0..3).find(|&i| i != leader).unwrap();
    cluster.kill(other);
    cluster
        .wait_quorum(Duration::from_secs(30))
        .expect("quorum");
    let t = Instant::now();
    let mut d3 = Overlayd::spawn(topo.host(2), base.clone());
    let s3 = subnet_of(&d3.wait_ready(READY));
    nodes.insert(host_ip(2), s3);
    println!(
        "TLS+auth: a node started with a member down, ready after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    join_and_leave(
        &cluster,
        &[&d1, &d2, &d3],
        7,
        "TLS+auth, another member killed",
    );
    assert!(ping_until(
        topo.host(2),
        s1.network(),
        Duration::from_secs(10)
    ));
    let (ok, _, out) = status_with(topo.host(0), &cluster, &security_args(&cluster, "s3cret"));
    assert!(
        ok,
        "overlayd status over TLS+auth with a member down: {out}"
    );
    for d in [&d1, &d2, &d3] {
        assert!(!d.log().contains("without TLS"), "no clear-text warning");
    }
    assert_running(&mut [&mut d1, &mut d2, &mut d3], "end");
    one_live_lease_each(&cluster, &nodes, "end");
}
