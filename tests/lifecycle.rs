//! The daemon's own lifecycle: SIGTERM ends it within 2 s whatever it is waiting on
//! (etcd frozen or absent at start-up, no config yet, no free subnet, an L2 network not
//! defined yet, etcd frozen under a running node), cleaning up what it made; and a second
//! instance for the same host and device refuses to start, naming the running one, without
//! disturbing it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const READY: Duration = Duration::from_secs(30);
/// The issue's bound on a stop.
const STOP: Duration = Duration::from_secs(2);

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lock files left in a run dir.
fn lock_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for `needle` in the log (the phase is reached), lets it sit there for `linger`, then
/// SIGTERMs: the daemon must exit 0 within [`STOP`], leaving no device and no lock behind.
fn stop_in_phase(h: &Netns, d: &mut Overlayd, phase: &str, needle: &str, linger: Duration) -> f64 {
    assert!(
        wait_until(Duration::from_secs(30), || d.log().contains(needle)),
        "{phase}: never reached ({needle:?}):\n{}",
        tail(d.log_path(), 30)
    );
    std::thread::sleep(linger);
    assert!(d.is_running(), "{phase}: still running before the signal");
    let t = Instant::now();
    let st = d.terminate(Duration::from_secs(10));
    let took = t.elapsed();
    assert!(
        st.is_some_and(|s| s.success()),
        "{phase}: exit 0 on SIGTERM, got {st:?}:\n{}",
        tail(d.log_path(), 20)
    );
    assert!(
        took <= STOP,
        "{phase}: stopped in {took:?}, more than {STOP:?}:\n{}",
        tail(d.log_path(), 20)
    );
    assert!(!h.has_link("flannel.1"), "{phase}: the device is gone");
    assert!(
        lock_files(&d.dir().join("run")).is_empty(),
        "{phase}: the lock file is removed"
    );
    println!("{phase}: SIGTERM -> exit 0 in {:.3} s", took.as_secs_f64());
    took.as_secs_f64()
}

/// SIGTERM in each phase the daemon can wait in.
#[test]
fn netns_sigterm_in_every_phase() {
    if skip_unless_root("netns_sigterm_in_every_phase") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let h = topo.host(0);

    // 1. etcd frozen at start-up: the config read hangs (bounded by the request timeout).
    etcd.pause();
    let mut d = Overlayd::spawn(h, overlayd_args("vxlan", &etcd));
    stop_in_phase(
        h,
        &mut d,
        "etcd frozen at start-up",
        "etcd endpoints",
        Duration::from_secs(1),
    );
    etcd.resume();

    // 2. No etcd at all (nothing answers at the address): connect attempts and back-off.
    let mut a = overlayd_args("vxlan", &etcd);
    let i = a.iter().position(|x| x == "--etcd-endpoints").unwrap() + 1;
    a[i] = "http://192.168.77.99:2379".into();
    let mut d = Overlayd::spawn(h, a);
    stop_in_phase(
        h,
        &mut d,
        "etcd absent, retrying",
        "cannot read the network config; retrying",
        Duration::from_millis(500),
    );

    // 3. etcd up but no config (and no --network): waiting for one.
    let mut a: Vec<String> = overlayd_args("vxlan", &etcd)
        .into_iter()
        .take_while(|x| x != "--network")
        .collect();
    a.extend(["-v".into(), "debug".into()]);
    let i = a.iter().position(|x| x == "--etcd-prefix").unwrap() + 1;
    a[i] = "/empty".into();
    let mut d = Overlayd::spawn(h, a);
    stop_in_phase(
        h,
        &mut d,
        "waiting for the config",
        "no network config in etcd yet",
        Duration::from_millis(1500),
    );

    // 4. No free subnet: the only one is held by another node; acquisition retries.
    etcd.put(
        "/full/config",
        r#"{"Network":"10.250.0.0/16","SubnetLen":24,"SubnetMin":"10.250.5.0","SubnetMax":"10.250.5.0","Backend":{"Type":"vxlan"}}"#,
    );
    etcd.put_with_lease(
        "/full/subnets/10.250.5.0-24",
        &vxlan_lease_value("192.168.77.77".parse().unwrap(), 1, "0e:00:00:00:00:77"),
        600,
    );
    let mut a: Vec<String> = overlayd_args("vxlan", &etcd)
        .into_iter()
        .take_while(|x| x != "--network")
        .collect();
    let i = a.iter().position(|x| x == "--etcd-prefix").unwrap() + 1;
    a[i] = "/full".into();
    let mut d = Overlayd::spawn(h, a);
    stop_in_phase(
        h,
        &mut d,
        "lease acquisition retrying",
        "cannot acquire a subnet lease yet",
        Duration::from_millis(1500),
    );

    // 5. Running, with an L2 network whose config is not written yet (the L2 start waits).
    let mut a = overlayd_args("vxlan", &etcd);
    a.extend(["--l2".into(), "later".into()]);
    let mut d = Overlayd::spawn(h, a);
    d.wait_ready(READY);
    stop_in_phase(
        h,
        &mut d,
        "L2 network awaited",
        "no L2 network config in etcd yet",
        Duration::from_millis(500),
    );

    // 6. Running with an L2 network, then etcd frozen: watches and keepalives hang, and the
    //    stop's membership withdrawal cannot reach etcd.
    etcd.put_l2_network(ETCD_PREFIX, "ten", 100, "vxlan");
    let mut a = overlayd_args("vxlan", &etcd);
    a.extend(["--l2".into(), "ten".into()]);
    let mut d = Overlayd::spawn(h, a);
    d.wait_ready(READY);
    assert!(wait_until(Duration::from_secs(20), || d
        .log()
        .contains("announced L2 membership")));
    etcd.pause();
    stop_in_phase(
        h,
        &mut d,
        "running, etcd frozen",
        "announced L2 membership",
        Duration::from_secs(6),
    );
    etcd.resume();
}

/// A second overlayd for the same device on the same host refuses to start, names the
/// running one, and changes nothing: no queue attached to its device, its lease untouched.
#[test]
fn netns_second_instance_refused() {
    if skip_unless_root("netns_second_instance_refused") {
        return;
    }
    let mut topo = Topology::new(3);
    let etcd = topo.start_etcd();
    let (h1, h2, h3) = (topo.host(0), topo.host(1), topo.host(2));
    let run = TempDir::new("run");
    let run_dir = run.path().display().to_string();
    let with_run = |dir: &str| {
        let mut a = overlayd_args("vxlan", &etcd);
        a.extend(["--run-dir".into(), dir.to_string()]);
        a
    };
    let mut d1 = Overlayd::spawn(h1, with_run(&run_dir));
    let s1 = subnet_of(&d1.wait_ready(READY));
    let mut peer = Overlayd::spawn(h2, overlayd_args("vxlan", &etcd));
    peer.wait_ready(READY);
    assert!(ping_until(h2, s1.network(), Duration::from_secs(10)));
    let pid = d1.pid().expect("running").to_string();
    let queues = || h1.run(&["ls", "/sys/class/net/flannel.1/queues"]);
    let before_queues = queues();
    let key = lease_key(ETCD_PREFIX, s1);
    let lease_state = || etcd.ctl(&["get", &key, "-w", "json"]);
    let kv = |json: &str| {
        let v: serde_json::Value = serde_json::from_str(json).expect("etcdctl json");
        let kv = &v["kvs"][0];
        (kv["mod_revision"].as_i64(), kv["lease"].as_i64())
    };
    let before_lease = kv(&lease_state());

    // The same run dir: the lock refuses it.
    let mut second = Overlayd::spawn(h1, with_run(&run_dir));
    let st = second.wait_exit(Duration::from_secs(15));
    let log = second.log();
    let last = log.lines().last().unwrap_or("");
    assert!(
        st.is_some_and(|s| s.code() == Some(1)),
        "second instance exits 1: {st:?}\n{log}"
    );
    assert!(
        last.contains(&format!("pid {pid}"))
            && last.contains("flannel.1")
            && last.contains("already running"),
        "the message names the running instance: {last}"
    );
    println!("same run dir: {last}");
    // Another run dir: the device itself is found held by the first one.
    let other = TempDir::new("run2");
    let mut third = Overlayd::spawn(h1, with_run(&other.path().display().to_string()));
    let st = third.wait_exit(Duration::from_secs(15));
    let log = third.log();
    let last = log.lines().last().unwrap_or("");
    assert!(
        st.is_some_and(|s| s.code() == Some(1)),
        "third instance exits 1: {st:?}\n{log}"
    );
    assert!(
        last.contains(&format!("pid {pid}")) && last.contains("in use"),
        "the message names the process holding the device: {last}"
    );
    println!("other run dir: {last}");
    assert!(
        !log.contains("acquired subnet lease") && !log.contains("data plane configured"),
        "the refused instance touched neither the lease nor the device:\n{log}"
    );

    // The first one is undisturbed.
    assert_eq!(queues(), before_queues, "no queue attached to flannel.1");
    assert_eq!(kv(&lease_state()), before_lease, "the lease is untouched");
    assert!(d1.is_running());
    assert!(ping_until(h2, s1.network(), Duration::from_secs(5)));
    assert!(!d1.log().contains("SIGTERM"));

    // A non-TUN device with the name (what flanneld's vxlan backend leaves): refused too.
    h3.ip("link add flannel.1 type vxlan id 1 dstport 8472 dev eth0");
    let mut fourth = Overlayd::spawn(h3, overlayd_args("vxlan", &etcd));
    let st = fourth.wait_exit(Duration::from_secs(15));
    let log = fourth.log();
    let last = log.lines().last().unwrap_or("");
    assert!(
        st.is_some_and(|s| s.code() == Some(1)) && last.contains("vxlan device"),
        "a kernel vxlan flannel.1 is refused with its kind named: {st:?} {last}"
    );
    assert!(h3.has_link("flannel.1"), "and left alone");

    // Once the first one stops, its lock is gone and a new instance starts in its place.
    assert!(d1
        .terminate(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    assert!(
        lock_files(run.path()).is_empty(),
        "lock file removed at stop"
    );
    let mut again = Overlayd::spawn(h1, with_run(&run_dir));
    assert_eq!(subnet_of(&again.wait_ready(READY)), s1, "same subnet");
    assert_eq!(
        lock_files(run.path()).len(),
        1,
        "the new instance holds the lock"
    );
}
