//! Access to etcd: TLS with client certificates, and username/password, against an etcd
//! started by the test that way (certificates made by the test with openssl).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const READY: Duration = Duration::from_secs(30);

/// Starts etcd in `ns` with `extra` flags; killed when the namespace goes.
// The child is reaped by the namespace guard (which kills every pid in the namespace).
#[allow(clippy::zombie_processes)]
fn start_etcd(ns: &Netns, data: &Path, scheme: &str, ip: &str, extra: &[String]) {
    let log = std::fs::File::create(data.join("etcd.log")).unwrap();
    ns.command("etcd")
        .arg(format!("--data-dir={}", data.join("etcd").display()))
        .arg(format!("--listen-client-urls={scheme}://{ip}:2379"))
        .arg(format!("--advertise-client-urls={scheme}://{ip}:2379"))
        .arg(format!("--listen-peer-urls=http://{ip}:2380"))
        .arg(format!("--initial-advertise-peer-urls=http://{ip}:2380"))
        .arg(format!("--initial-cluster=default=http://{ip}:2380"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcd");
}

fn ctl(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let out = ns
        .command("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--dial-timeout=3s", "--command-timeout=5s"])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let t = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if t.elapsed() > timeout => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Base flags for overlayd in these tests (no --etcd-endpoints: each test gives its own).
/// Writes `password` into a file under `dir` for `--etcd-password-file` (the daemon refuses
/// a password on its command line).
fn password_file(dir: &Path, password: &str) -> String {
    let file = dir.join(format!("etcd-password-{password}"));
    std::fs::write(&file, password).expect("write the etcd password file");
    file.display().to_string()
}

fn args(endpoint: &str) -> Vec<String> {
    [
        "--backend",
        "udp",
        "--etcd-endpoints",
        endpoint,
        "--iface",
        "eth0",
        "--network",
        OVERLAY_NETWORK,
        "-v",
        "debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn netns_etcd_tls_client_certificates() {
    if skip_unless_root("netns_etcd_tls_client_certificates") {
        return;
    }
    let mut topo = Topology::new(2);
    let ip = ETCD_IP.to_string();
    let dir = TempDir::new("tls");
    make_cluster_certs(dir.path(), &[ip.parse().expect("an IPv4 address")]);
    let p = |f: &str| dir.path().join(f).display().to_string();
    let etcd_ns = topo.attach("etcd", ETCD_IP);
    start_etcd(
        etcd_ns,
        dir.path(),
        "https",
        &ip,
        &[
            format!("--cert-file={}", p("server.crt")),
            format!("--key-file={}", p("server.key")),
            format!("--trusted-ca-file={}", p("ca.crt")),
            "--client-cert-auth".into(),
        ],
    );
    let endpoint = format!("https://{ip}:2379");
    let tls = [
        format!("--cacert={}", p("ca.crt")),
        format!("--cert={}", p("client.crt")),
        format!("--key={}", p("client.key")),
    ];
    let ep = format!("--endpoints={endpoint}");
    let ctl_args = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![ep.clone()];
        v.extend(tls.iter().cloned());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let probe = ctl_args(&["endpoint", "health"]);
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    wait_for("etcd with TLS comes up", Duration::from_secs(20), || {
        ctl(topo.host(0), &probe)
    });

    // With the CA and a client certificate: ready, and no clear-text warning.
    let mut a = args(&endpoint);
    a.extend([
        "--etcd-cafile".into(),
        p("ca.crt"),
        "--etcd-certfile".into(),
        p("client.crt"),
        "--etcd-keyfile".into(),
        p("client.key"),
    ]);
    let mut good = Overlayd::spawn(topo.host(0), a);
    good.wait_ready(READY);
    assert!(
        !good.log().contains("without TLS"),
        "no clear-text warning over TLS"
    );
    let leases = ctl_args(&[
        "get",
        "--prefix",
        "--keys-only",
        "/coreos.com/network/subnets/",
    ]);
    let leases: Vec<&str> = leases.iter().map(String::as_str).collect();
    let keys = ctl(topo.host(0), &leases).unwrap();
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 1, "{keys}");

    // Without a client certificate etcd refuses us: never ready, the daemon keeps retrying.
    let mut a = args(&endpoint);
    a.extend(["--etcd-cafile".into(), p("ca.crt")]);
    let mut bad = Overlayd::spawn(topo.host(1), a);
    std::thread::sleep(Duration::from_secs(5));
    assert!(bad.is_running(), "keeps retrying rather than exiting");
    assert!(
        bad.subnet_env().is_none(),
        "no lease without a client certificate"
    );
    // tonic connects lazily: the refusal shows at the first request.
    let log = bad.log();
    assert!(
        log.contains("retrying") && log.contains("etcd"),
        "says why: {log}"
    );
}

#[test]
fn netns_etcd_username_password() {
    if skip_unless_root("netns_etcd_username_password") {
        return;
    }
    let mut topo = Topology::new(2);
    let ip = ETCD_IP.to_string();
    let dir = TempDir::new("auth");
    let etcd_ns = topo.attach("etcd", ETCD_IP);
    start_etcd(etcd_ns, dir.path(), "http", &ip, &[]);
    let endpoint = format!("http://{ip}:2379");
    let ep = format!("--endpoints={endpoint}");
    let h = topo.host(0);
    wait_for("etcd comes up", Duration::from_secs(20), || {
        ctl(h, &[&ep, "endpoint", "health"])
    });
    for cmd in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "add", "overlayd:s3cret"],
        vec!["role", "add", "overlay"],
        vec![
            "role",
            "grant-permission",
            "overlay",
            "--prefix=true",
            "readwrite",
            "/coreos.com/network/",
        ],
        vec!["user", "grant-role", "overlayd", "overlay"],
        vec!["auth", "enable"],
    ] {
        let mut a = vec![ep.as_str()];
        a.extend(cmd.iter().copied());
        ctl(h, &a).unwrap_or_else(|e| panic!("etcdctl {cmd:?}: {e}"));
    }
    let mut a = args(&endpoint);
    a.extend([
        "--etcd-username".into(),
        "overlayd".into(),
        "--etcd-password-file".into(),
        password_file(dir.path(), "s3cret"),
    ]);
    let mut good = Overlayd::spawn(topo.host(0), a);
    good.wait_ready(READY);

    let mut a = args(&endpoint);
    a.extend([
        "--etcd-username".into(),
        "overlayd".into(),
        "--etcd-password-file".into(),
        password_file(dir.path(), "wrong"),
    ]);
    let mut bad = Overlayd::spawn(topo.host(1), a);
    std::thread::sleep(Duration::from_secs(5));
    assert!(bad.is_running(), "keeps retrying rather than exiting");
    assert!(bad.subnet_env().is_none(), "no lease with a wrong password");
    assert!(
        bad.log().contains("authentication failed"),
        "says why: {}",
        bad.log()
    );
}

/// The daemon needs CAP_NET_ADMIN (and CAP_NET_RAW for gre) and nothing else: run as root
/// with every other capability removed from the bounding set, the overlay still works.
#[test]
fn netns_runs_with_only_net_admin_and_net_raw() {
    if skip_unless_root("netns_runs_with_only_net_admin_and_net_raw") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let only = [
        "setpriv",
        "--bounding-set",
        "-all,+net_admin,+net_raw",
        "--inh-caps",
        "-all",
    ];
    let mut d1 = Overlayd::spawn_wrapped(topo.host(0), &only, overlayd_args("gre", &etcd));
    let mut d2 = Overlayd::spawn_wrapped(topo.host(1), &only, overlayd_args("gre", &etcd));
    let _s1 = d1.wait_ready(READY);
    let s2 = d2.wait_ready(READY);
    let pid = d1.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    // `ip netns exec` execs the wrapper, which execs overlayd: the pid is the daemon's.
    let eff = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or("")
        .to_string();
    assert!(
        eff.ends_with("0000000000003000"),
        "effective capabilities are NET_ADMIN|NET_RAW only: {eff}"
    );
    assert!(ping_until(
        topo.host(0),
        overlay_ip_of(&s2),
        Duration::from_secs(15)
    ));
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), overlay_ip_of(&s2), 0, 5_000_000);
    assert_eq!(sent, got);
}
