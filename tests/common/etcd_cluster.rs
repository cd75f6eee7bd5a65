//! A real multi-member etcd cluster for the tests, each member in its own namespace on the
//! topology's switch, plus the faults the cluster tests apply to it.
//!
//! ```text
//!   ns "etcd1" 192.168.77.251   ns "etcd2" .252   ns "etcd3" .253   (client 2379, peer 2380)
//!   ns "etcdc" 192.168.77.240   where etcdctl runs (a client host with no daemon)
//! ```
//!
//! Faults: [`EtcdCluster::kill`] (SIGKILL), [`EtcdCluster::restart`] (same data dir),
//! [`EtcdCluster::partition`] (iptables DROP of everything on the member's eth0, inside the
//! member's namespace only: its connections hang, as behind a dead switch port) and
//! [`EtcdCluster::isolate_peers`] (only the peer port 2380 dropped: clients still reach a
//! member that has lost the quorum), undone by [`EtcdCluster::heal`]. Every wait is bounded;
//! members are killed on drop (the namespaces go with the topology).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::etcd::{lease_id, wait_member, EtcdMember};
use super::{
    must, run_cmd, signal, stop_child, tail, unique_name, Lease, Netns, TempDir, Topology,
    ETCD_PREFIX, OVERLAY_NETWORK, UNDERLAY_NET,
};

/// Underlay address of member `i` (0-based): 192.168.77.251, .252, ...
pub fn member_ip(i: usize) -> Ipv4Addr {
    let [a, b, c] = UNDERLAY_NET;
    Ipv4Addr::new(a, b, c, 251 + i as u8)
}

/// Address of the namespace etcdctl runs in.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 240);

/// One member: its namespace, process and data.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    scheme: &'static str,
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
}

impl Member {
    /// Client URL, e.g. `http://192.168.77.251:2379` (`https` when the cluster uses TLS).
    pub fn endpoint(&self) -> String {
        format!("{}://{}:2379", self.scheme, self.ip)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

/// How clients must talk to the cluster.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS with client certificates: the directory [`make_cluster_certs`] filled.
    pub tls: Option<PathBuf>,
    /// Authentication on, with user `root` having this password.
    pub root_password: Option<String>,
}

/// A running etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<Member>,
    /// The namespace etcdctl runs in.
    pub client_ns: String,
    pub security: Security,
    initial_cluster: String,
    token: String,
    /// The member that last answered `ctl`: the next call starts there, not at a dead one.
    answered: Cell<usize>,
    _dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    must(run_cmd(Command::new("openssl").current_dir(dir).args(args)));
}

/// In `dir`: a CA (`ca.crt`), one server certificate valid for every address in `ips`
/// (`server.crt`, `server.key`) and a client certificate (`client.crt`, `client.key`),
/// P-256, valid one day.
pub fn make_cluster_certs(dir: &Path, ips: &[Ipv4Addr]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=ovt-ca",
        "-days",
        "1",
    ]);
    openssl(dir, &a);
    let sans = ips
        .iter()
        .map(|ip| format!("IP:{ip}"))
        .collect::<Vec<_>>()
        .join(",");
    for (name, ext) in [
        (
            "server",
            format!("subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n"),
        ),
        ("client", "extendedKeyUsage=clientAuth\n".to_string()),
    ] {
        let mut a = vec!["req"];
        a.extend(ec);
        let (key, csr, crt, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN=ovt-{name}");
        a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &a);
        fs::write(dir.join(&extf), ext).expect("write ext file");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &extf,
            ],
        );
    }
}

impl EtcdCluster {
    /// Attaches `n` member namespaces (`etcd1..`) and a client namespace (`etcdc`) to `topo`,
    /// starts every member with `--initial-cluster` naming them all, and waits until each
    /// is healthy and a write succeeds.
    pub fn start(topo: &mut Topology, n: usize) -> EtcdCluster {
        Self::start_with(topo, n, Security::default())
    }

    /// [`EtcdCluster::start`] with TLS (client certificates required) and/or authentication
    /// (enabled once the cluster is up; user `root` with `security.root_password`).
    pub fn start_with(topo: &mut Topology, n: usize, security: Security) -> EtcdCluster {
        assert!((1..=4).contains(&n), "1 to 4 members");
        let dir = TempDir::new("etcdc");
        let client_ns = topo.attach("etcdc", CLIENT_IP).name().to_owned();
        let mut members = Vec::new();
        for i in 0..n {
            let name = format!("etcd{}", i + 1);
            let ns = topo.attach(&name, member_ip(i)).name().to_owned();
            members.push(Member {
                data: dir.path().join(format!("{name}.data")),
                log: dir.path().join(format!("{name}.log")),
                name,
                ns,
                ip: member_ip(i),
                scheme: if security.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, m.ip))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            members,
            client_ns,
            // Authentication is enabled below, once the cluster is up.
            security: Security {
                tls: security.tls.clone(),
                root_password: None,
            },
            initial_cluster,
            token: unique_name("cluster"),
            answered: Cell::new(0),
            _dir: dir,
        };
        for i in 0..n {
            c.launch(i);
        }
        for i in 0..n {
            c.wait_member_healthy(i, Duration::from_secs(30));
        }
        c.wait_quorum(Duration::from_secs(30))
            .expect("a fresh cluster accepts writes");
        if let Some(pw) = &security.root_password {
            // Enabled as the cluster's admin would, before anyone else uses it.
            c.ctl(&["user", "add", &format!("root:{pw}")]);
            c.ctl(&["auth", "enable"]);
            c.security.root_password = Some(pw.clone());
        }
        c
    }

    /// `https` with TLS, else `http`.
    fn scheme(&self) -> &'static str {
        if self.security.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn launch(&mut self, i: usize) {
        let (initial_cluster, token) = (self.initial_cluster.clone(), self.token.clone());
        let scheme = self.scheme();
        let tls: Vec<String> = match &self.security.tls {
            Some(d) => vec![
                format!("--cert-file={}", d.join("server.crt").display()),
                format!("--key-file={}", d.join("server.key").display()),
                format!("--trusted-ca-file={}", d.join("ca.crt").display()),
                "--client-cert-auth".into(),
            ],
            None => Vec::new(),
        };
        let m = &mut self.members[i];
        let ip = m.ip.to_string();
        let member = EtcdMember {
            ns: &m.ns,
            name: &m.name,
            ip: &ip,
            data: &m.data,
            log: &m.log,
            scheme,
            tls: &tls,
            initial_cluster: &initial_cluster,
            token: Some(&token),
        };
        m.child = Some(member.spawn());
    }

    /// Every member's client URL, comma-separated (what nodes are given).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl` against `endpoints` (comma-separated), from the client namespace.
    pub fn ctl_at(&self, endpoints: &str, args: &[&str]) -> Result<String, String> {
        let mut c = Command::new("ip");
        // Bounded whatever etcdctl's own timeouts do with a dead or frozen member.
        c.args([
            "netns",
            "exec",
            &self.client_ns,
            "timeout",
            "-k",
            "2",
            "10",
            "etcdctl",
        ])
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=4s");
        if let Some(d) = &self.security.tls {
            c.arg(format!("--cacert={}", d.join("ca.crt").display()))
                .arg(format!("--cert={}", d.join("client.crt").display()))
                .arg(format!("--key={}", d.join("client.key").display()));
        }
        if let Some(pw) = &self.security.root_password {
            c.arg(format!("--user=root:{pw}"));
        }
        run_cmd(c.args(args))
    }

    /// `etcdctl` against every member (etcdctl fails over itself).
    pub fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        self.ctl_at(&self.endpoints(), args)
    }

    /// `etcdctl` retried for up to 40 s (a write during an election may fail), panicking if
    /// it never works. Each try goes to one member, the next one each time: etcdctl's own
    /// balancer may keep choosing a partitioned member (the very problem overlayd's pool
    /// solves), which would make the harness, not the daemon, fail. A call starts at the
    /// member that last answered, so a killed one costs its dial timeout once, not on every
    /// call. 40 s: a try on a killed member takes up to 6 s, and on a loaded 2-CPU machine an
    /// election after the leader's kill once outlasted 20 s of tries (CI, 2026-12-07).
    pub fn ctl(&self, args: &[&str]) -> String {
        self.ctl_within(Duration::from_secs(40), args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`EtcdCluster::ctl`]'s tries for up to `limit`; the last error if none worked.
    fn ctl_within(&self, limit: Duration, args: &[&str]) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        let first = self.answered.get();
        for i in first.. {
            let m = i % self.members.len();
            match self.ctl_at(&self.members[m].endpoint(), args) {
                Ok(out) => {
                    self.answered.set(m);
                    return Ok(out);
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
        unreachable!("the loop returns")
    }

    /// Puts `key` = `value`.
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]);
    }

    /// Deletes `key`; how many keys went.
    pub fn del(&self, key: &str) -> u64 {
        self.ctl(&["del", key]).trim().parse().unwrap_or(0)
    }

    /// Grants an etcd lease of `ttl_secs` and puts `key` = `value` on it; returns the lease
    /// id as etcdctl prints it (hex). Grant and put are retried together: a put that fails
    /// (an election, a dead member) may outlast a short lease, and no retry of the put alone
    /// could then succeed.
    pub fn put_with_lease(&self, key: &str, value: &str, ttl_secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let id = lease_id(&self.ctl(&["lease", "grant", &ttl_secs.to_string()]));
            let put = ["put", &format!("--lease={id}"), key, value];
            match self.ctl_within(Duration::from_secs(ttl_secs.min(10)), &put) {
                Ok(_) => return id,
                Err(e) if Instant::now() >= deadline => panic!("{e}"),
                Err(_) => {}
            }
        }
    }

    /// All `(key, value)` pairs under `prefix`. Values must be single-line.
    pub fn get_prefix(&self, prefix: &str) -> BTreeMap<String, String> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
            .collect()
    }

    /// The flannel leases under `prefix`.
    pub fn leases(&self, prefix: &str) -> Vec<Lease> {
        self.get_prefix(&format!("{prefix}/subnets/"))
            .iter()
            .filter_map(|(k, v)| Lease::parse(k, v))
            .collect()
    }

    /// The etcd lease id (decimal, as overlayd and `get -w json` give it) of `key`.
    pub fn lease_id_of(&self, key: &str) -> Option<i64> {
        let out = self.ctl(&["get", key, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v.get("kvs")?.get(0)?.get("lease")?.as_i64()
    }

    /// Seconds left on etcd lease `id` (decimal); `None` when etcd does not know it.
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        let out = self.ctl(&["lease", "timetolive", &format!("{id:x}")]);
        // "lease 694d5ab1c4f2b20b granted with TTL(86400s), remaining(86391s)"
        let rem = out.split("remaining(").nth(1)?.split('s').next()?;
        rem.parse().ok().filter(|t: &i64| *t >= 0)
    }

    /// Index of the current leader, asking each member that answers.
    pub fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            let Ok(out) = self.ctl_at(&m.endpoint(), &["endpoint", "status", "-w", "json"]) else {
                ids.push(None);
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let st = v.get(0)?.get("Status")?;
            ids.push(st.get("header")?.get("member_id")?.as_u64());
            leader = leader.or(st.get("leader")?.as_u64());
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// Waits until member `i` answers `endpoint health` (bounded).
    pub fn wait_member_healthy(&mut self, i: usize, timeout: Duration) -> Duration {
        let ep = self.members[i].endpoint();
        let (log, name) = (self.members[i].log.clone(), self.members[i].name.clone());
        // Out of the member while the probe borrows the cluster; back before returning (on a
        // panic the member's namespace guard kills it).
        let mut child = self.members[i].child.take();
        let healthy = || self.ctl_at(&ep, &["endpoint", "health"]).is_ok();
        let took = wait_member(&mut child, &log, &name, timeout, healthy);
        self.members[i].child = child;
        took
    }

    /// Waits until the cluster accepts a write (a quorum with a leader); how long it took.
    pub fn wait_quorum(&self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if self.try_ctl(&["put", "/ovt/quorum", "1"]).is_ok() {
                return Some(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL member `i` (its data stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data dir and waits until it is healthy.
    pub fn restart(&mut self, i: usize) -> Duration {
        self.kill(i);
        let start = Instant::now();
        self.launch(i);
        self.wait_member_healthy(i, Duration::from_secs(30));
        start.elapsed()
    }

    fn iptables(&self, i: usize, rules: &[&str]) {
        for r in rules {
            must(run_cmd(
                Command::new("ip")
                    .args(["netns", "exec", &self.members[i].ns, "iptables", "-w"])
                    .args(r.split_whitespace()),
            ));
        }
    }

    /// Drops every packet in and out of member `i`'s eth0, inside its namespace: its peers
    /// and clients see connections hang (no reset, no refusal).
    pub fn partition(&self, i: usize) {
        self.iptables(
            i,
            &["-I INPUT -i eth0 -j DROP", "-I OUTPUT -o eth0 -j DROP"],
        );
    }

    /// Drops only the peer traffic (port 2380) of member `i`: it loses the quorum but its
    /// clients still reach it.
    pub fn isolate_peers(&self, i: usize) {
        self.iptables(
            i,
            &[
                "-I INPUT -i eth0 -p tcp --dport 2380 -j DROP",
                "-I INPUT -i eth0 -p tcp --sport 2380 -j DROP",
            ],
        );
    }

    /// Removes every rule [`EtcdCluster::partition`] or [`EtcdCluster::isolate_peers`] added.
    pub fn heal(&self, i: usize) {
        self.iptables(i, &["-F INPUT", "-F OUTPUT"]);
    }

    /// The member's log so far.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if thread::panicking() {
                eprintln!("---- {} log tail ----\n{}", m.name, tail(&m.log, 15));
            }
            if let Some(mut c) = m.child.take() {
                signal(c.id(), "CONT");
                stop_child(&mut c, Duration::from_millis(500));
            }
        }
    }
}

/// Flags that make overlayd talk to `cluster` as its security requires (TLS files and the
/// user `overlayd` / `password`, which [`EtcdCluster::add_overlayd_user`] creates).
pub fn security_args(cluster: &EtcdCluster, password: &str) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(d) = &cluster.security.tls {
        for (flag, file) in [
            ("--etcd-cafile", "ca.crt"),
            ("--etcd-certfile", "client.crt"),
            ("--etcd-keyfile", "client.key"),
        ] {
            a.push(flag.to_string());
            a.push(d.join(file).display().to_string());
        }
    }
    if cluster.security.root_password.is_some() {
        // The daemon refuses a password on its command line: hand it over in a file.
        let file = cluster
            ._dir
            .path()
            .join(format!("etcd-password-{password}"));
        fs::write(&file, password).expect("write the etcd password file");
        a.extend([
            "--etcd-username".to_string(),
            "overlayd".to_string(),
            "--etcd-password-file".to_string(),
            file.display().to_string(),
        ]);
    }
    a
}

impl EtcdCluster {
    /// Creates user `overlayd` with `password`, allowed to read and write under `prefix`.
    pub fn add_overlayd_user(&self, password: &str, prefix: &str) {
        self.ctl(&["user", "add", &format!("overlayd:{password}")]);
        self.ctl(&["role", "add", "overlay"]);
        self.ctl(&[
            "role",
            "grant-permission",
            "overlay",
            "--prefix=true",
            "readwrite",
            &format!("{prefix}/"),
        ]);
        self.ctl(&["user", "grant-role", "overlayd", "overlay"]);
    }
}

/// overlayd arguments for a test host using every member of `cluster`.
pub fn cluster_args(backend: &str, cluster: &EtcdCluster) -> Vec<String> {
    [
        "--backend",
        backend,
        "--etcd-endpoints",
        &cluster.endpoints(),
        "--etcd-prefix",
        ETCD_PREFIX,
        "--iface",
        "eth0",
        "--network",
        OVERLAY_NETWORK,
        "--subnet-len",
        "24",
        "-v",
        "debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A `ping` running in the background at a fixed interval, to count losses over a fault.
#[derive(Debug)]
pub struct PingStream {
    child: Option<Child>,
    out: PathBuf,
    _dir: TempDir,
}

/// What a [`PingStream`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingCount {
    pub sent: u64,
    pub received: u64,
}

impl PingStream {
    /// Starts `ping -i interval_s -W 1 to` in `from` (at most `max` packets).
    pub fn start(from: &Netns, to: Ipv4Addr, interval_s: &str, max: u32) -> PingStream {
        let dir = TempDir::new("ping");
        let out = dir.path().join("ping.txt");
        let f = File::create(&out).expect("ping output");
        let child = from
            .command("ping")
            .args(["-n", "-W", "1", "-i", interval_s, "-c", &max.to_string()])
            .arg(to.to_string())
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .expect("start ping");
        PingStream {
            child: Some(child),
            out,
            _dir: dir,
        }
    }

    /// Stops the ping (SIGINT: it prints its summary) and returns the counts.
    pub fn finish(mut self) -> PingCount {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "INT");
            let deadline = Instant::now() + Duration::from_secs(3);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        // "12 packets transmitted, 12 received, 0% packet loss, time 2203ms"
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
        let num = |word: &str| -> u64 {
            line.split(',')
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        PingCount {
            sent: num("transmitted"),
            received: num("received"),
        }
    }
}

impl Drop for PingStream {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
