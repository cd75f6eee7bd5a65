//! End-to-end test harness: hosts are network namespaces on a bridge, plus etcd, overlayd and probes.
//!
//! Layout of a [`Topology`] (every name below is really `ovt-<pid>-<seq>-<role>`):
//!
//! ```text
//!   ns "sw": bridge br0 ── h1 ─┐  h2 ─┐ ... etcd ─┐          (veth ends, in "sw")
//!   ns "h1": eth0 192.168.77.2/24 ┘     │           │
//!   ns "h2": eth0 192.168.77.3/24 ──────┘           │
//!   ns "etcd": eth0 192.168.77.250/24 ──────────────┘        (only after `start_etcd`)
//! ```
//!
//! Rules this module keeps, so tests can run in parallel and never harm the machine:
//! - the root namespace is never changed: every `ip` command runs with `-n <ns>` or inside
//!   `ip netns exec`, and veth pairs are made from inside the switch namespace;
//! - namespace names carry the test process's pid and a sequence number; [`cleanup_stale`]
//!   removes `ovt-` namespaces whose process is gone (`scripts/cleanup-netns.sh` removes all);
//! - every guard ([`Netns`], [`Etcd`], [`Overlayd`], [`TempDir`]) cleans up on drop, also while
//!   a test panics: processes are killed (every pid in a namespace, via `ip netns pids`) before
//!   the namespace is deleted;
//! - every probe is bounded in count and time.
//!
//! For L2 mode (tests/l2.rs): [`add_bridge`] makes a bridge inside a host, [`Container`] a
//! namespace plugged into it by a veth (fixed MAC/IP, MTU 1450, movable to another host),
//! [`KernelL2Vxlan`] / [`KernelL2Gretap`] a kernel VTEP on a bridge, [`Etcd::put_l2_network`] /
//! [`Etcd::put_l2_member`] the etcd keys, [`Overlayd::metric`] one Prometheus value, and
//! [`Capture`] a bounded tcpdump (one line per frame).
//!
//! Tests that need root call [`skip_unless_root`] first. A typical end-to-end test:
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! #[test]
//! fn udp_two_hosts() {
//!     if skip_unless_root("udp_two_hosts") { return; }
//!     let mut topo = Topology::new(2);
//!     let etcd = topo.start_etcd();                      // ns "etcd" at 192.168.77.250
//!     let (h1, h2) = (topo.host(0), topo.host(1));       // 192.168.77.1, .2
//!     let mut d1 = Overlayd::spawn(h1, overlayd_args("udp", &etcd));
//!     let mut d2 = Overlayd::spawn(h2, overlayd_args("udp", &etcd));
//!     let s1 = d1.wait_ready(Duration::from_secs(20));   // "10.244.X.1/24"
//!     let s2 = d2.wait_ready(Duration::from_secs(20));
//!     assert!(ping_until(h1, overlay_ip_of(&s2), Duration::from_secs(10)));
//!     let (sent, got) = tcp_transfer(h1, h2, overlay_ip_of(&s2), 0, 10_000_000);
//!     assert_eq!(sent, got);
//!     assert!(d1.terminate(Duration::from_secs(5)).is_some_and(|s| s.success()));
//! }   // drops: overlayd (log tail printed if panicking), etcd, namespaces
//! ```
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use overlayd::sys::netns::{run_in_netns, spawn_in_netns, NetnsThread};
use sha2::{Digest, Sha256};

pub mod cni;

/// Prefix of every namespace (and temp dir) the tests create.
pub const NS_PREFIX: &str = "ovt-";
/// The underlay /24 every topology uses; host `hN` gets `.N` (see [`host_ip`]).
pub const UNDERLAY_NET: [u8; 3] = [192, 168, 77];
/// Underlay address of the etcd namespace.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 250);
/// flannel's default etcd prefix.
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// The overlay network the tests use.
pub const OVERLAY_NETWORK: &str = "10.244.0.0/16";
/// Underlay MTU of every eth0.
pub const UNDERLAY_MTU: u32 = 1500;

static SEQ: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------------------------
// Privileges, names, commands
// ---------------------------------------------------------------------------------------------

/// Whether the effective uid is 0 (read from `/proc/self/status`, no unsafe needed).
pub fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        == Some("0")
}

/// Returns `true` (and prints a loud banner) when the test must be skipped for lack of root.
///
/// Use as `if common::skip_unless_root("name") { return; }`.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED {test}: needs root (network namespaces). Run scripts/test.sh as root.");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!();
    true
}

/// A name unique to this process and call: `ovt-<pid>-<seq>-<role>`.
pub fn unique_name(role: &str) -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{NS_PREFIX}{}-{seq}-{role}", std::process::id())
}

/// Runs a command to completion; `Err` holds the command line, exit status and stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

fn must(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Sends a signal (`"TERM"`, `"KILL"`, `"STOP"`, `"CONT"`) to a pid with kill(1).
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Waits for a child to exit for at most `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL and reap.
fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    signal(child.id(), "TERM");
    if let Some(st) = wait_timeout(child, grace) {
        return Some(st);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// The last `n` lines of a file, for failure reports.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read: {e}>"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop (kept if `OVT_KEEP_TMP` is set).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(role: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(role));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("OVT_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------------------------

/// All named namespaces (`ip netns list`).
pub fn list_netns() -> Vec<String> {
    run_cmd(Command::new("ip").args(["netns", "list"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Pids of the processes living in namespace `name`.
pub fn netns_pids(name: &str) -> Vec<u32> {
    run_cmd(Command::new("ip").args(["netns", "pids", name]))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills every process in the namespace, waits (bounded) for them to die, deletes it.
pub fn delete_netns(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = netns_pids(name);
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            signal(pid, "KILL");
        }
        thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = run_cmd(Command::new("ip").args(["netns", "del", name])) {
        if list_netns().iter().any(|n| n == name) {
            eprintln!("warning: cannot delete netns {name}: {e}");
        }
    }
}

/// Deletes `ovt-<pid>-...` namespaces whose creating process no longer exists (left behind by
/// a test process that was killed). Namespaces of running test processes are left alone.
pub fn cleanup_stale() {
    for name in list_netns() {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete_netns(&name);
        }
    }
}

/// A network namespace owned by the test; everything in it is killed and it is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `ovt-<pid>-<seq>-<role>` with `lo` up.
    pub fn new(role: &str) -> Netns {
        let name = unique_name(role);
        must(run_cmd(Command::new("ip").args(["netns", "add", &name])));
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// The full namespace name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> <program>`: add args and run or spawn it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `args[0] args[1..]` in the namespace; `Err` on failure.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let (prog, rest) = args.split_first().expect("try_run: empty command");
        run_cmd(self.command(prog).args(rest))
    }

    /// Runs a command in the namespace, panicking on failure; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        must(self.try_run(args))
    }

    /// Runs a command in the namespace and returns its raw output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Output {
        let (prog, rest) = args.split_first().expect("output: empty command");
        self.command(prog)
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
    }

    /// `ip -n <ns> <words>`, words split on whitespace; panics on failure.
    pub fn ip(&self, words: &str) -> String {
        must(self.try_ip(words))
    }

    /// `ip -n <ns> <words>`; `Err` on failure.
    pub fn try_ip(&self, words: &str) -> Result<String, String> {
        run_cmd(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(words.split_whitespace()),
        )
    }

    /// `bridge -n <ns> <words>`; panics on failure.
    pub fn bridge(&self, words: &str) -> String {
        must(run_cmd(
            Command::new("bridge")
                .args(["-n", &self.name])
                .args(words.split_whitespace()),
        ))
    }

    /// `sh -c <script>` in the namespace; panics on failure.
    pub fn sh(&self, script: &str) -> String {
        self.run(&["sh", "-c", script])
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread inside the namespace (sockets made there stay there).
    pub fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in_netns(&self.name, f).unwrap_or_else(|e| panic!("enter netns {}: {e}", self.name))
    }

    /// Starts `f` on a thread inside the namespace and returns its handle.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> NetnsThread<T> {
        spawn_in_netns(&self.name, f).unwrap_or_else(|e| panic!("enter netns {}: {e}", self.name))
    }

    /// Pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        netns_pids(&self.name)
    }

    /// Adds a "pod" address (e.g. `10.244.3.1/32`) to `lo`, so it answers pings and TCP like
    /// a workload behind the node. (`lo` rather than a dummy device: not every kernel has the
    /// dummy driver.)
    pub fn add_pod_addr(&self, cidr: &str) {
        self.ip(&format!("addr add {cidr} dev lo"));
    }

    /// Whether interface `ifname` exists in the namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.try_ip(&format!("link show dev {ifname}")).is_ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------------------------

/// Underlay address of host index `i` (0-based): 192.168.77.(i+1), so `h1` is .1, `h2` is .2.
pub fn host_ip(i: usize) -> Ipv4Addr {
    assert!(i < 200, "too many hosts");
    let [a, b, c] = UNDERLAY_NET;
    Ipv4Addr::new(a, b, c, i as u8 + 1)
}

/// A namespace attached to the switch, with its underlay address on `eth0`.
#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// Name of the veth end in the switch namespace (the bridge port).
    pub port: String,
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// A switch namespace with bridge `br0` and hosts on it.
#[derive(Debug)]
pub struct Topology {
    /// Hosts `h1..hN`, underlay addresses from [`host_ip`].
    pub hosts: Vec<Host>,
    /// Other attached namespaces (e.g. etcd), in attach order.
    pub extra: Vec<Host>,
    /// The switch; declared last so it is deleted after the hosts.
    pub switch: Netns,
}

impl Topology {
    /// Builds the switch and `n` hosts `h1..hn` (eth0 = 192.168.77.(i+1)/24, mtu 1500, lo up).
    pub fn new(n: usize) -> Topology {
        cleanup_stale();
        let switch = Netns::new("sw");
        switch.ip("link add br0 type bridge");
        switch.ip("link set br0 up");
        let mut topo = Topology {
            hosts: Vec::new(),
            extra: Vec::new(),
            switch,
        };
        for i in 0..n {
            let host = topo.make_host(&format!("h{}", i + 1), host_ip(i));
            topo.hosts.push(host);
        }
        topo
    }

    fn make_host(&self, role: &str, ip: Ipv4Addr) -> Host {
        assert!(
            role.len() <= 15,
            "role {role:?} too long for an interface name"
        );
        let ns = Netns::new(role);
        // Made from inside the switch namespace; the peer goes straight into the host.
        self.switch.ip(&format!(
            "link add {role} mtu {UNDERLAY_MTU} type veth peer name eth0 mtu {UNDERLAY_MTU} netns {}",
            ns.name()
        ));
        self.switch.ip(&format!("link set {role} master br0"));
        self.switch.ip(&format!("link set {role} up"));
        ns.ip(&format!("addr add {ip}/24 dev eth0"));
        ns.ip("link set eth0 up");
        Host {
            ns,
            ip,
            port: role.to_owned(),
        }
    }

    /// Attaches one more namespace `role` to the bridge with underlay address `ip`.
    pub fn attach(&mut self, role: &str, ip: Ipv4Addr) -> &Host {
        let host = self.make_host(role, ip);
        self.extra.push(host);
        self.extra.last().expect("just pushed")
    }

    /// Attaches namespace "etcd" at [`ETCD_IP`] and starts etcd there.
    pub fn start_etcd(&mut self) -> Etcd {
        self.attach("etcd", ETCD_IP);
        let host = self.extra.last().expect("just attached");
        Etcd::start(host, ETCD_IP)
    }

    /// Host `i` (0-based).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Every namespace name of this topology (for leak checks).
    pub fn names(&self) -> Vec<String> {
        let mut v = vec![self.switch.name().to_owned()];
        v.extend(self.hosts.iter().map(|h| h.name().to_owned()));
        v.extend(self.extra.iter().map(|h| h.name().to_owned()));
        v
    }

    /// Cuts host `i` off the switch (bridge port down) or reconnects it.
    pub fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.switch
            .ip(&format!("link set {} {state}", self.hosts[i].port));
    }
}

// ---------------------------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------------------------

/// `etcdctl` (API v3) run inside namespace `from` against `endpoint`.
pub fn etcdctl(from: &Netns, endpoint: &str, args: &[&str]) -> Result<String, String> {
    run_cmd(
        from.command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=5s")
            .args(args),
    )
}

/// A single-member etcd running in a namespace; killed on drop.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    ns: String,
    ip: Ipv4Addr,
    log: PathBuf,
    data: PathBuf,
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd in `ns` listening on `ip` (client 2379, peer 2380), waits until healthy.
    pub fn start(ns: &Netns, ip: Ipv4Addr) -> Etcd {
        let dir = TempDir::new("etcd");
        let mut etcd = Etcd {
            child: None,
            ns: ns.name().to_owned(),
            ip,
            log: dir.path().join("etcd.log"),
            data: dir.path().join("data"),
            dir,
        };
        etcd.launch();
        etcd
    }

    fn launch(&mut self) {
        let ip = self.ip;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open etcd log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcd"])
            .arg("--name=ovt")
            .arg(format!("--data-dir={}", self.data.display()))
            .arg(format!("--listen-client-urls=http://{ip}:2379"))
            .arg(format!("--advertise-client-urls=http://{ip}:2379"))
            .arg(format!("--listen-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-advertise-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-cluster=ovt=http://{ip}:2380"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd (installed? scripts/install-deps.sh): {e}")
            });
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(30));
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("etcd exited early ({st}); log:\n{}", tail(&self.log, 30));
                }
            }
            if self.try_ctl(&["endpoint", "health"]).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd not healthy after {timeout:?}; log:\n{}",
                    tail(&self.log, 30)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Client URL, e.g. `http://192.168.77.250:2379`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// Pid of the etcd process (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `etcdctl` run from etcd's own namespace; `Err` on failure.
    pub fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        run_cmd(
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "etcdctl"])
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.endpoint()))
                .arg("--dial-timeout=3s")
                .arg("--command-timeout=5s")
                .args(args),
        )
    }

    /// `etcdctl` run from etcd's own namespace; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        must(self.try_ctl(args))
    }

    /// Puts `key` = `value` (no lease).
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]);
    }

    /// Grants an etcd lease of `ttl_secs` and puts `key` = `value` bound to it; returns the
    /// lease id (hex, as etcdctl prints it).
    pub fn put_with_lease(&self, key: &str, value: &str, ttl_secs: u64) -> String {
        let out = self.ctl(&["lease", "grant", &ttl_secs.to_string()]);
        // "lease 694d5ab1c4f2b20b granted with TTL(86400s)"
        let id = out
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected lease grant output {out:?}"))
            .to_owned();
        self.ctl(&["put", &format!("--lease={id}"), key, value]);
        id
    }

    /// The value of `key`, if present. Values must be single-line (JSON is).
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", key]);
        let mut lines = out.lines();
        match (lines.next(), lines.next()) {
            (Some(k), Some(v)) if k == key => Some(v.to_owned()),
            _ => None,
        }
    }

    /// All `(key, value)` pairs under `prefix`, in key order. Values must be single-line.
    pub fn get_prefix(&self, prefix: &str) -> BTreeMap<String, String> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
            .collect()
    }

    /// Deletes `key`; returns how many keys were deleted.
    pub fn del(&self, key: &str) -> u64 {
        self.ctl(&["del", key]).trim().parse().unwrap_or(0)
    }

    /// Puts flannel's network config `<prefix>/config`, e.g.
    /// `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`.
    pub fn put_network_config(&self, prefix: &str, network: &str, subnet_len: u8, backend: &str) {
        let cfg = serde_json::json!({
            "Network": network,
            "SubnetLen": subnet_len,
            "Backend": { "Type": backend },
        });
        self.put(&format!("{prefix}/config"), &cfg.to_string());
    }

    /// All leases under `<prefix>/subnets/`, parsed (unparsable ones are skipped).
    pub fn leases(&self, prefix: &str) -> Vec<Lease> {
        self.get_prefix(&format!("{prefix}/subnets/"))
            .iter()
            .filter_map(|(k, v)| Lease::parse(k, v))
            .collect()
    }

    /// Freezes etcd (SIGSTOP) to simulate an unreachable etcd; [`Etcd::resume`] undoes it.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
        }
    }

    /// Undoes [`Etcd::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
        }
    }

    /// Stops etcd (data kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "CONT");
            stop_child(&mut child, Duration::from_secs(5));
        }
    }

    /// Starts etcd again on the same data dir and waits until healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The etcd log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- etcd log tail ({}) ----\n{}",
                self.ns,
                tail(&self.log, 20)
            );
        }
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// flannel leases
// ---------------------------------------------------------------------------------------------

/// etcd key of a lease: `<prefix>/subnets/10.244.3.0-24`.
pub fn lease_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{prefix}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

/// A lease as stored in etcd by flannel (or overlayd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub backend_type: Option<String>,
    pub vni: Option<u32>,
    pub vtep_mac: Option<String>,
}

impl Lease {
    /// Parses key `<prefix>/subnets/10.244.3.0-24` and its JSON value.
    pub fn parse(key: &str, value: &str) -> Option<Lease> {
        let tail = key.rsplit('/').next()?;
        let v4 = tail.split('&').next()?; // dual-stack keys: "<v4>&<v6>"
        let (net, len) = v4.split_once('-')?;
        let subnet = Ipv4Net::new(net.parse().ok()?, len.parse().ok()?).ok()?;
        let json: serde_json::Value = serde_json::from_str(value).ok()?;
        let public_ip = json.get("PublicIP")?.as_str()?.parse().ok()?;
        let backend_type = json
            .get("BackendType")
            .and_then(|t| t.as_str())
            .map(str::to_owned);
        let data = json.get("BackendData");
        let vni = data
            .and_then(|d| d.get("VNI"))
            .and_then(|v| v.as_u64())
            .map(|v| v as u32);
        let vtep_mac = data
            .and_then(|d| d.get("VtepMAC"))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        Some(Lease {
            subnet,
            public_ip,
            backend_type,
            vni,
            vtep_mac,
        })
    }

    /// The subnet's network address: the address flannel puts on its device (/32).
    pub fn overlay_ip(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// flannel's vxlan lease value, byte for byte in flannel's field order.
pub fn vxlan_lease_value(public_ip: Ipv4Addr, vni: u32, vtep_mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}}}}"#
    )
}

// ---------------------------------------------------------------------------------------------
// Kernel VXLAN node (what flanneld's vxlan backend sets up)
// ---------------------------------------------------------------------------------------------

/// A namespace configured exactly like a flanneld vxlan node, using the kernel VXLAN driver.
///
/// Device `flannel.<VNI>` (dstport 8472, nolearning, MTU underlay − 50) with address = subnet
/// network address /32; per peer a permanent neighbour, a permanent fdb entry and an onlink
/// route. The node does not watch etcd by itself: call [`KernelVxlanNode::sync_from_etcd`] (or
/// `add_peer`) after peers have registered.
#[derive(Debug)]
pub struct KernelVxlanNode {
    ns: String,
    pub public_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub vni: u32,
    pub port: u16,
    pub vtep_mac: String,
    pub dev: String,
}

impl KernelVxlanNode {
    /// flannel defaults: VNI 1, port 8472, a MAC derived from the subnet, underlay `eth0`.
    pub fn setup(ns: &Netns, public_ip: Ipv4Addr, subnet: Ipv4Net) -> KernelVxlanNode {
        let o = subnet.network().octets();
        // Locally administered (0x02 bit), unicast (0x01 bit clear).
        let mac = format!("0e:6f:76:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3]);
        Self::setup_with(ns, public_ip, subnet, 1, 8472, &mac)
    }

    /// Explicit VNI, UDP port and VtepMAC.
    pub fn setup_with(
        ns: &Netns,
        public_ip: Ipv4Addr,
        subnet: Ipv4Net,
        vni: u32,
        port: u16,
        vtep_mac: &str,
    ) -> KernelVxlanNode {
        let dev = format!("flannel.{vni}");
        let mtu = UNDERLAY_MTU - 50;
        ns.ip(&format!(
            "link add {dev} address {vtep_mac} mtu {mtu} type vxlan id {vni} dev eth0 local {public_ip} dstport {port} nolearning"
        ));
        ns.ip(&format!("addr add {}/32 dev {dev}", subnet.network()));
        ns.ip(&format!("link set {dev} up"));
        KernelVxlanNode {
            ns: ns.name().to_owned(),
            public_ip,
            subnet,
            vni,
            port,
            vtep_mac: vtep_mac.to_owned(),
            dev,
        }
    }

    fn ip(&self, words: &str) {
        must(run_cmd(
            Command::new("ip")
                .args(["-n", &self.ns])
                .args(words.split_whitespace()),
        ));
    }

    /// The address on the device: the subnet's network address.
    pub fn overlay_ip(&self) -> Ipv4Addr {
        self.subnet.network()
    }

    /// This node's lease as a [`Lease`].
    pub fn lease(&self) -> Lease {
        Lease {
            subnet: self.subnet,
            public_ip: self.public_ip,
            backend_type: Some("vxlan".into()),
            vni: Some(self.vni),
            vtep_mac: Some(self.vtep_mac.clone()),
        }
    }

    /// Writes this node's lease the way flanneld does: bound to a 24 h etcd lease.
    pub fn register(&self, etcd: &Etcd, prefix: &str) {
        etcd.put_with_lease(
            &lease_key(prefix, self.subnet),
            &vxlan_lease_value(self.public_ip, self.vni, &self.vtep_mac),
            86_400,
        );
    }

    /// Installs forwarding state for a peer (neighbour, fdb, route), like flanneld on a PUT.
    pub fn add_peer(&self, peer: &Lease) {
        let mac = peer
            .vtep_mac
            .as_deref()
            .unwrap_or_else(|| panic!("peer lease {peer:?} has no VtepMAC"));
        let (dev, addr) = (&self.dev, peer.overlay_ip());
        self.ip(&format!(
            "neigh replace {addr} lladdr {mac} dev {dev} nud permanent"
        ));
        must(run_cmd(Command::new("bridge").args([
            "-n",
            &self.ns,
            "fdb",
            "replace",
            mac,
            "dev",
            dev,
            "dst",
            &peer.public_ip.to_string(),
            "self",
            "permanent",
        ])));
        self.ip(&format!(
            "route replace {} via {addr} dev {dev} onlink",
            peer.subnet
        ));
    }

    /// Removes a peer's forwarding state, like flanneld on a DELETE.
    pub fn remove_peer(&self, peer: &Lease) {
        let (dev, addr) = (&self.dev, peer.overlay_ip());
        let ns = &self.ns;
        let _ =
            run_cmd(Command::new("ip").args(["-n", ns, "route", "del", &peer.subnet.to_string()]));
        let _ = run_cmd(Command::new("ip").args([
            "-n",
            ns,
            "neigh",
            "del",
            &addr.to_string(),
            "dev",
            dev,
        ]));
        if let Some(mac) = peer.vtep_mac.as_deref() {
            let _ = run_cmd(Command::new("bridge").args(["-n", ns, "fdb", "del", mac, "dev", dev]));
        }
    }

    /// Reads every lease under `prefix` and installs each vxlan peer with our VNI (not us).
    /// Returns the peers installed.
    pub fn sync_from_etcd(&self, etcd: &Etcd, prefix: &str) -> Vec<Lease> {
        let peers: Vec<Lease> = etcd
            .leases(prefix)
            .into_iter()
            .filter(|l| l.subnet != self.subnet)
            .filter(|l| l.backend_type.as_deref() == Some("vxlan"))
            .filter(|l| l.vni.unwrap_or(1) == self.vni && l.vtep_mac.is_some())
            .collect();
        for p in &peers {
            self.add_peer(p);
        }
        peers
    }
}

// ---------------------------------------------------------------------------------------------
// overlayd
// ---------------------------------------------------------------------------------------------

/// Parses a subnet.env file into its `KEY=value` pairs.
pub fn read_subnet_env(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

/// Waits until `subnet_file` exists with a `FLANNEL_SUBNET`, returns it (e.g. `10.244.37.1/24`).
pub fn wait_ready(subnet_file: &Path, timeout: Duration) -> Option<String> {
    wait_ready_since(subnet_file, SystemTime::UNIX_EPOCH, timeout)
}

/// Like [`wait_ready`], but only a file (re)written at or after `since` counts.
pub fn wait_ready_since(
    subnet_file: &Path,
    since: SystemTime,
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let fresh = fs::metadata(subnet_file)
            .and_then(|m| m.modified())
            .map(|t| t >= since)
            .unwrap_or(false);
        if fresh {
            if let Some(s) =
                read_subnet_env(subnet_file).and_then(|m| m.get("FLANNEL_SUBNET").cloned())
            {
                return Some(s);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `FLANNEL_SUBNET` (`10.244.37.1/24`) → the subnet `10.244.37.0/24`.
pub fn subnet_of(flannel_subnet: &str) -> Ipv4Net {
    flannel_subnet
        .parse::<Ipv4Net>()
        .unwrap_or_else(|e| panic!("bad FLANNEL_SUBNET {flannel_subnet:?}: {e}"))
        .trunc()
}

/// `FLANNEL_SUBNET` (`10.244.37.1/24`) → the TUN address `10.244.37.0`.
pub fn overlay_ip_of(flannel_subnet: &str) -> Ipv4Addr {
    subnet_of(flannel_subnet).network()
}

/// The usual overlayd arguments for a test host (the subnet file is added by [`Overlayd::spawn`]).
pub fn overlayd_args(backend: &str, etcd: &Etcd) -> Vec<String> {
    [
        "--backend",
        backend,
        "--etcd-endpoints",
        &etcd.endpoint(),
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

/// An overlayd process in a namespace; its output goes to a log file. Killed on drop (after a
/// SIGTERM grace period); the log tail is printed if the test is panicking.
#[derive(Debug)]
pub struct Overlayd {
    child: Option<Child>,
    ns: String,
    /// Command words put before the binary (e.g. `setpriv ...` to drop capabilities).
    wrapper: Vec<String>,
    args: Vec<String>,
    started: SystemTime,
    subnet_file: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Overlayd {
    /// Path of the binary under test.
    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_overlayd")
    }

    /// Starts overlayd in `ns` with `args`; adds `--subnet-file <tmp>/subnet.env` unless given.
    /// Like [`Overlayd::spawn`], with `wrapper` words run in front of the binary.
    pub fn spawn_wrapped<S: AsRef<str>>(
        ns: &Netns,
        wrapper: &[&str],
        args: impl IntoIterator<Item = S>,
    ) -> Overlayd {
        Self::spawn_inner(ns, wrapper, args)
    }

    pub fn spawn<S: AsRef<str>>(ns: &Netns, args: impl IntoIterator<Item = S>) -> Overlayd {
        Self::spawn_inner(ns, &[], args)
    }

    fn spawn_inner<S: AsRef<str>>(
        ns: &Netns,
        wrapper: &[&str],
        args: impl IntoIterator<Item = S>,
    ) -> Overlayd {
        let mut args: Vec<String> = args.into_iter().map(|s| s.as_ref().to_owned()).collect();
        let dir = TempDir::new("overlayd");
        let subnet_file = match args.iter().position(|a| a == "--subnet-file") {
            Some(i) => PathBuf::from(args.get(i + 1).expect("--subnet-file needs a value")),
            None => {
                let p = dir.path().join("subnet.env");
                args.push("--subnet-file".into());
                args.push(p.display().to_string());
                p
            }
        };
        let mut d = Overlayd {
            child: None,
            ns: ns.name().to_owned(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            args,
            started: SystemTime::now(),
            subnet_file,
            log: dir.path().join("overlayd.log"),
            dir,
        };
        d.launch();
        d
    }

    fn launch(&mut self) {
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open overlayd log");
        let _ = writeln!(log, "==== {} {}", Self::bin(), self.args.join(" "));
        self.started = SystemTime::now();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(&self.wrapper)
            .arg(Self::bin())
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", Self::bin()));
        self.child = Some(child);
    }

    /// Waits until the subnet file is written by this run; returns `FLANNEL_SUBNET`.
    /// Panics (with the log tail) on timeout or if the process exits first.
    pub fn wait_ready(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) =
                wait_ready_since(&self.subnet_file, self.started, Duration::from_millis(100))
            {
                return s;
            }
            if let Some(st) = self.try_wait() {
                panic!(
                    "overlayd in {} exited before ready ({st}); log:\n{}",
                    self.ns,
                    tail(&self.log, 40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "overlayd in {} not ready after {timeout:?}; log:\n{}",
                    self.ns,
                    tail(&self.log, 40)
                );
            }
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait up to `timeout`; returns the exit status, or `None` if it had to be
    /// SIGKILLed (i.e. it did not exit cleanly in time).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        signal(child.id(), "TERM");
        let st = wait_timeout(&mut child, timeout);
        if st.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        st
    }

    /// SIGKILL (a crash, as far as the daemon is concerned).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGTERM, 10 s grace) and starts again with the same arguments and subnet file.
    pub fn restart(&mut self) {
        self.terminate(Duration::from_secs(10));
        self.launch();
    }

    /// The subnet file this instance writes.
    pub fn subnet_file(&self) -> &Path {
        &self.subnet_file
    }

    /// The parsed subnet file.
    pub fn subnet_env(&self) -> Option<BTreeMap<String, String>> {
        read_subnet_env(&self.subnet_file)
    }

    /// Path of the log file (stdout + stderr of every run).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Temp dir of this instance (for extra files the test wants next to the log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Overlayd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- overlayd log tail ({}) ----\n{}\n---- end ----",
                self.ns,
                tail(&self.log, 60)
            );
        }
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(3));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------------------

/// `ping -c count -W 1 -i 0.2 to` from `from`; true if the command succeeds (≥ 1 reply).
pub fn ping(from: &Netns, to: impl Display, count: u32) -> bool {
    let count = count.clamp(1, 100).to_string();
    from.output(&[
        "ping",
        "-q",
        "-n",
        "-c",
        &count,
        "-W",
        "1",
        "-i",
        "0.2",
        &to.to_string(),
    ])
    .status
    .success()
}

/// Pings once per try until a reply arrives or `timeout` passes.
pub fn ping_until(from: &Netns, to: impl Display, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let to = to.to_string();
    loop {
        if ping(from, &to, 1) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), the same for the same seed.
pub struct Payload(u64);

impl Payload {
    pub fn new(seed: u64) -> Payload {
        Payload(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The result of [`tcp_transfer_stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// sha256 of what the sender wrote.
    pub sent: String,
    /// sha256 of what the receiver read until EOF.
    pub received: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub elapsed: Duration,
}

const IO_STALL: Duration = Duration::from_secs(20);

/// Sends `bytes` of deterministic data over TCP from namespace `from` to `to_ip:port`, where a
/// listener is bound in namespace `to` (port 0 = any free port). Returns the sha256 of what was
/// sent and of what was received (equal on success). Bounded: connect retries for 10 s, any
/// read/write stalled for 20 s fails, and the whole transfer must finish within
/// 60 s + 1 s per MB.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    to_ip: Ipv4Addr,
    port: u16,
    bytes: u64,
) -> (String, String) {
    let t = tcp_transfer_stats(from, to, to_ip, port, bytes);
    (t.sent, t.received)
}

/// [`tcp_transfer`] with byte counts and timing; panics on any I/O error or timeout.
pub fn tcp_transfer_stats(
    from: &Netns,
    to: &Netns,
    to_ip: Ipv4Addr,
    port: u16,
    bytes: u64,
) -> Transfer {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60 + bytes / 1_000_000);
    let listener = to
        .in_ns(move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap_or_else(|e| panic!("bind port {port} in {}: {e}", to.name()));
    let port = listener.local_addr().expect("local_addr").port();
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");

    let give_up = Arc::new(AtomicBool::new(false));
    let give_up_server = Arc::clone(&give_up);
    let server = thread::spawn(move || -> io::Result<(String, u64)> {
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline || give_up_server.load(Ordering::Relaxed) {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "accept timed out"));
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(IO_STALL))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0u64;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            n_total += n as u64;
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "receive deadline"));
            }
        }
        Ok((hex(&hasher.finalize()), n_total))
    });

    let addr = SocketAddr::from((to_ip, port));
    let client = from.in_ns(move || -> io::Result<(String, u64)> {
        let connect_deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= connect_deadline => {
                    return Err(io::Error::new(e.kind(), format!("connect {addr}: {e}")))
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        };
        stream.set_write_timeout(Some(IO_STALL))?;
        let mut gen = Payload::new(0x6f76_6572_6c61_7964);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            gen.fill(&mut buf[..n]);
            stream.write_all(&buf[..n])?;
            hasher.update(&buf[..n]);
            left -= n as u64;
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "send deadline"));
            }
        }
        stream.shutdown(Shutdown::Write)?;
        Ok((hex(&hasher.finalize()), bytes))
    });
    let (sent, bytes_sent) = client.unwrap_or_else(|e| {
        give_up.store(true, Ordering::Relaxed);
        panic!("tcp_transfer sender: {e}")
    });
    let server = server.join().expect("server thread panicked");
    let (received, bytes_received) =
        server.unwrap_or_else(|e| panic!("tcp_transfer receiver: {e}"));
    Transfer {
        sent,
        received,
        bytes_sent,
        bytes_received,
        elapsed: start.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------------
// L2 mode: bridges, containers, kernel L2 VXLAN, etcd keys, metrics, captures
// ---------------------------------------------------------------------------------------------

/// MTU of every L2 "container" interface (underlay 1500 − 50 of VXLAN).
pub const L2_CONTAINER_MTU: u32 = 1450;
/// Port of the metrics listener [`overlayd_l2_args`] adds (on each namespace's loopback).
pub const L2_METRICS_PORT: u16 = 9477;
/// The VXLAN UDP port L2 networks use by default (IANA's, as the kernel's `dstport 4789`).
pub const L2_VXLAN_PORT: u16 = 4789;

/// Turns IPv6 off in a namespace (before its interfaces exist), so captures see no router
/// solicitations or MLD reports: only the frames a test makes.
pub fn disable_ipv6(ns: &Netns) {
    for key in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6"), "1");
    }
}

/// Creates Linux bridge `name` in `ns` and sets it up; `vlan_filtering` as
/// `ip link add NAME type bridge vlan_filtering 1` (then every port needs `bridge vlan add`;
/// needs CONFIG_BRIDGE_VLAN_FILTERING). Multicast snooping is off, so the bridge sends no IGMP
/// reports of its own into the segment (tests count frames).
pub fn add_bridge(ns: &Netns, name: &str, vlan_filtering: bool) {
    let vf = if vlan_filtering {
        " vlan_filtering 1"
    } else {
        ""
    };
    disable_ipv6(ns);
    ns.ip(&format!("link add {name} type bridge mcast_snooping 0{vf}"));
    ns.ip(&format!("link set {name} up"));
}

/// Waits until interface `ifname` exists in `ns` (e.g. overlayd's TAP); false on timeout.
pub fn wait_link(ns: &Netns, ifname: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ns.has_link(ifname) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The MTU of `ifname` in `ns` (None if absent).
pub fn link_mtu(ns: &Netns, ifname: &str) -> Option<u32> {
    let out = ns.try_ip(&format!("-o link show dev {ifname}")).ok()?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "mtu")?;
    words.get(i + 1)?.parse().ok()
}

/// The bridge `ifname` is enslaved to in `ns` (None if none or absent).
pub fn link_master(ns: &Netns, ifname: &str) -> Option<String> {
    let out = ns.try_ip(&format!("-o link show dev {ifname}")).ok()?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "master")?;
    words.get(i + 1).map(|s| s.to_string())
}

/// A locally administered unicast MAC `02:<a>:00:00:<b>:<c>`, e.g. `l2_mac(0xaa, 1, 2)`.
pub fn l2_mac(tenant: u8, host: u8, n: u8) -> String {
    format!("02:{tenant:02x}:00:00:{host:02x}:{n:02x}")
}

/// A "container": its own namespace, attached to a bridge in a host namespace by a veth pair
/// (`eth0` inside, MTU [`L2_CONTAINER_MTU`], fixed MAC and address, IPv6 off). The namespace
/// (and so the veth pair) is deleted on drop.
#[derive(Debug)]
pub struct Container {
    pub ns: Netns,
    /// Address with prefix, e.g. `10.50.0.1/24`.
    pub cidr: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Name of the veth end in the host namespace (the bridge port).
    pub port: String,
    /// Namespace currently holding the host end, and the bridge it is on.
    host_ns: Option<String>,
    bridge: String,
    /// Access VLAN on a vlan_filtering bridge (pvid untagged), if any.
    vlan: Option<u16>,
}

impl Deref for Container {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl Container {
    /// New container `role` (≤ 11 chars) on `bridge` in `host`, with `cidr` (e.g.
    /// `10.50.0.1/24`) and `mac` on its `eth0`.
    pub fn attach(host: &Netns, bridge: &str, role: &str, cidr: &str, mac: &str) -> Container {
        Self::make(host, bridge, role, cidr, mac, None)
    }

    /// Like [`Container::attach`], on a vlan_filtering bridge as an access port of `vid`
    /// (`bridge vlan add dev PORT vid VID pvid untagged`, VLAN 1 removed).
    pub fn attach_vlan(
        host: &Netns,
        bridge: &str,
        role: &str,
        cidr: &str,
        mac: &str,
        vid: u16,
    ) -> Container {
        Self::make(host, bridge, role, cidr, mac, Some(vid))
    }

    fn make(
        host: &Netns,
        bridge: &str,
        role: &str,
        cidr: &str,
        mac: &str,
        vlan: Option<u16>,
    ) -> Container {
        assert!(role.len() <= 11, "role {role:?} too long for a port name");
        let ns = Netns::new(role);
        disable_ipv6(&ns);
        let ip = cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad container address {cidr:?}"));
        // Port names must be unique per host namespace: the sequence number of the namespace.
        let seq = ns.name().split('-').nth(2).unwrap_or("0");
        let port = format!("c{seq}{}", &role[..role.len().min(8)]);
        let port = port[..port.len().min(15)].to_owned();
        let mut c = Container {
            ns,
            cidr: cidr.to_owned(),
            ip,
            mac: mac.to_owned(),
            port,
            host_ns: None,
            bridge: bridge.to_owned(),
            vlan,
        };
        c.plug(host, bridge);
        c.ns.ip(&format!("addr add {cidr} dev eth0"));
        c
    }

    /// Makes the veth pair from `host` (peer `eth0` into the container), sets MAC/MTU/up and
    /// enslaves the host end to `bridge` (with the access VLAN, if any).
    fn plug(&mut self, host: &Netns, bridge: &str) {
        let (port, mtu) = (&self.port, L2_CONTAINER_MTU);
        host.ip(&format!(
            "link add {port} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {}",
            self.ns.name()
        ));
        self.ns.ip(&format!("link set eth0 address {}", self.mac));
        host.ip(&format!("link set {port} master {bridge}"));
        if let Some(vid) = self.vlan {
            host.bridge(&format!("vlan add dev {port} vid {vid} pvid untagged"));
            host.bridge(&format!("vlan del dev {port} vid 1"));
        }
        host.ip(&format!("link set {port} up"));
        self.ns.ip("link set eth0 up");
        self.host_ns = Some(host.name().to_owned());
        self.bridge = bridge.to_owned();
    }

    /// Unplugs the container (deletes the veth pair: `eth0` disappears, its address and
    /// neighbour entries with it).
    pub fn unplug(&mut self) {
        if let Some(h) = self.host_ns.take() {
            must(run_cmd(
                Command::new("ip").args(["-n", &h, "link", "del", &self.port]),
            ));
        }
    }

    /// Moves the container to `bridge` in `host` with the same MAC and address (a VM or
    /// container migrating to another node).
    pub fn move_to(&mut self, host: &Netns, bridge: &str) {
        self.unplug();
        self.plug(host, bridge);
        self.ns.ip(&format!("addr add {} dev eth0", self.cidr));
    }

    /// The MAC the container's neighbour table has for `ip` (None if no usable entry).
    pub fn neigh_mac(&self, ip: Ipv4Addr) -> Option<String> {
        let out = self.ns.try_ip(&format!("neigh show {ip} dev eth0")).ok()?;
        let words: Vec<&str> = out.split_whitespace().collect();
        let i = words.iter().position(|w| *w == "lladdr")?;
        words.get(i + 1).map(|s| s.to_string())
    }

    /// A permanent neighbour entry `ip → mac` (no ARP requests or probes for `ip` ever: the
    /// container stays silent when idle).
    pub fn static_neigh(&self, ip: Ipv4Addr, mac: &str) {
        self.ns.ip(&format!(
            "neigh replace {ip} lladdr {mac} dev eth0 nud permanent"
        ));
    }

    /// Sets the MTU of both veth ends (the bridge follows its smallest port).
    pub fn set_mtu(&self, mtu: u32) {
        if let Some(h) = &self.host_ns {
            must(run_cmd(Command::new("ip").args([
                "-n",
                h,
                "link",
                "set",
                &self.port,
                "mtu",
                &mtu.to_string(),
            ])));
        }
        self.ns.ip(&format!("link set eth0 mtu {mtu}"));
    }

    /// Forgets every neighbour entry (so the next packet starts with an ARP request).
    pub fn flush_neigh(&self) {
        self.ns.ip("neigh flush dev eth0");
    }
}

/// A kernel L2 VXLAN VTEP: `vx<VNI>` (`type vxlan id VNI dstport 4789 local IP dev eth0`,
/// learning on, MTU 1450) enslaved to a bridge, with one all-zeros flood entry per peer — the
/// classic head-end-replication setup a non-overlayd VTEP uses.
#[derive(Debug)]
pub struct KernelL2Vxlan {
    ns: String,
    pub dev: String,
    pub vni: u32,
    pub local: Ipv4Addr,
}

impl KernelL2Vxlan {
    /// Creates the device in `host` (underlay address `local`) and enslaves it to `bridge`
    /// (which must exist).
    pub fn setup(host: &Netns, local: Ipv4Addr, vni: u32, bridge: &str) -> KernelL2Vxlan {
        let dev = format!("vx{vni}");
        assert!(dev.len() <= 15);
        host.ip(&format!(
            "link add {dev} mtu {L2_CONTAINER_MTU} type vxlan id {vni} dstport {L2_VXLAN_PORT} local {local} dev eth0"
        ));
        host.ip(&format!("link set {dev} master {bridge}"));
        host.ip(&format!("link set {dev} up"));
        KernelL2Vxlan {
            ns: host.name().to_owned(),
            dev,
            vni,
            local,
        }
    }

    /// Floods to `peer` too: `bridge fdb append 00:00:00:00:00:00 dev vxN dst PEER`.
    pub fn add_peer(&self, peer: Ipv4Addr) {
        must(run_cmd(Command::new("bridge").args([
            "-n",
            &self.ns,
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            &self.dev,
            "dst",
            &peer.to_string(),
        ])));
    }

    /// Joins L2 network `network` by writing its member key by hand (24 h etcd lease).
    pub fn register(&self, etcd: &Etcd, prefix: &str, network: &str) {
        etcd.put_l2_member(prefix, network, self.local);
    }
}

/// Whether the kernel's bridge supports VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING): tries
/// one in `ns` and removes it.
pub fn vlan_filtering_supported(ns: &Netns) -> bool {
    let ok = ns
        .try_ip("link add ovtvfprobe type bridge vlan_filtering 1")
        .is_ok();
    if ok {
        let _ = ns.try_ip("link del ovtvfprobe");
    }
    ok
}

/// Whether the kernel can make gretap devices (tries one in `ns` and removes it).
pub fn gretap_supported(ns: &Netns) -> bool {
    let ok = ns
        .try_ip("link add ovtgtprobe type gretap local 127.0.0.1 remote 127.0.0.2 key 1")
        .is_ok();
    if ok {
        let _ = ns.try_ip("link del ovtgtprobe");
    }
    ok
}

/// A kernel gretap VTEP for L2 network VNI `vni` towards one peer: `gt<VNI>` (`type gretap
/// local L remote R key VNI<<8`, NVGRE's VSID in the key's top 24 bits), MTU 1450, on a bridge.
#[derive(Debug)]
pub struct KernelL2Gretap {
    pub dev: String,
    pub vni: u32,
    pub local: Ipv4Addr,
}

impl KernelL2Gretap {
    pub fn setup(
        host: &Netns,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        vni: u32,
        bridge: &str,
    ) -> KernelL2Gretap {
        let dev = format!("gt{vni}");
        let key = vni << 8;
        host.ip(&format!(
            "link add {dev} mtu {L2_CONTAINER_MTU} type gretap local {local} remote {remote} key {key}"
        ));
        host.ip(&format!("link set {dev} master {bridge}"));
        host.ip(&format!("link set {dev} up"));
        KernelL2Gretap { dev, vni, local }
    }
}

/// `<prefix>/l2/networks/<name>`.
pub fn l2_network_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/l2/networks/{name}")
}

/// `<prefix>/l2/members/<name>/<public_ip>`.
pub fn l2_member_key(prefix: &str, name: &str, public_ip: Ipv4Addr) -> String {
    format!("{prefix}/l2/members/{name}/{public_ip}")
}

impl Etcd {
    /// Writes L2 network `name`: `{"VNI":vni,"Backend":backend}` (other fields default).
    pub fn put_l2_network(&self, prefix: &str, name: &str, vni: u64, backend: &str) {
        let cfg = serde_json::json!({ "VNI": vni, "Backend": backend });
        self.put(&l2_network_key(prefix, name), &cfg.to_string());
    }

    /// Writes L2 network `name` with a raw JSON value (for all fields, or broken configs).
    pub fn put_l2_network_json(&self, prefix: &str, name: &str, json: &str) {
        self.put(&l2_network_key(prefix, name), json);
    }

    /// Writes a member key `{"PublicIP":"..."}` on a 24 h etcd lease (as an external VTEP).
    pub fn put_l2_member(&self, prefix: &str, name: &str, public_ip: Ipv4Addr) {
        let value = serde_json::json!({ "PublicIP": public_ip.to_string() });
        self.put_with_lease(
            &l2_member_key(prefix, name, public_ip),
            &value.to_string(),
            86_400,
        );
    }

    /// Public IPs of network `name`'s members, from their keys.
    pub fn l2_members(&self, prefix: &str, name: &str) -> Vec<Ipv4Addr> {
        let dir = format!("{prefix}/l2/members/{name}/");
        self.get_prefix(&dir)
            .keys()
            .filter_map(|k| k.strip_prefix(&dir)?.parse().ok())
            .collect()
    }

    /// Waits until network `name` has exactly the members `want` (any order); false on timeout.
    pub fn wait_l2_members(
        &self,
        prefix: &str,
        name: &str,
        want: &[Ipv4Addr],
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut want = want.to_vec();
        want.sort();
        loop {
            let mut got = self.l2_members(prefix, name);
            got.sort();
            if got == want {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// [`overlayd_args`] (L3 vxlan, as usual) plus a metrics listener on
/// 127.0.0.1:[`L2_METRICS_PORT`] and the given L2 flags, e.g. `&["--l2", "net@br-l2"]`.
pub fn overlayd_l2_args(etcd: &Etcd, l2_flags: &[&str]) -> Vec<String> {
    let mut a = overlayd_args("vxlan", etcd);
    a.push("--metrics-addr".into());
    a.push(format!("127.0.0.1:{L2_METRICS_PORT}"));
    a.extend(l2_flags.iter().map(|s| s.to_string()));
    a
}

/// GET /metrics at `addr` from inside namespace `ns` (bounded: 2 s connect, 5 s read).
pub fn scrape_metrics(ns: &str, addr: SocketAddr) -> Result<String, String> {
    run_in_netns(ns, move || -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
    .map_err(|e| format!("enter netns {ns}: {e}"))?
    .map_err(|e| format!("scrape {addr} in {ns}: {e}"))
}

/// Sum of the series `name` whose label set contains every one of `labels` (e.g.
/// `&["network=\"a\"", "kind=\"flood\""]`) in Prometheus text `text`; 0 when absent.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let base = series.split('{').next().unwrap_or("");
            base == name && labels.iter().all(|lab| series.contains(lab))
        })
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

impl Overlayd {
    /// The `--metrics-addr` it was started with, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let i = self.args.iter().position(|a| a == "--metrics-addr")?;
        self.args.get(i + 1)?.parse().ok()
    }

    /// Its /metrics text (panics if it has no `--metrics-addr` or the scrape fails).
    pub fn scrape(&self) -> String {
        let addr = self
            .metrics_addr()
            .expect("overlayd started without --metrics-addr");
        scrape_metrics(&self.ns, addr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One metric from [`Overlayd::scrape`], see [`metric_value`].
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_value(&self.scrape(), name, labels)
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or None (still
    /// running; it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A bounded tcpdump in a namespace: at most `max_frames` frames, at most `timeout`; one line
/// per frame (`-n -e -tt`: MACs included; decoded inner frames joined with " | "). Killed on
/// drop.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    what: String,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    stderr: Arc<std::sync::Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Capture {
    /// Starts `tcpdump -i IFACE -n -e -l -tt -c MAX FILTER` in `ns` under `timeout` and waits
    /// (≤ 5 s) until it is listening. `filter` is a pcap filter ("" = everything).
    pub fn start(
        ns: &Netns,
        iface: &str,
        filter: &str,
        max_frames: u32,
        timeout: Duration,
    ) -> Capture {
        use std::io::BufRead;
        let secs = timeout.as_secs().max(1).to_string();
        let mut cmd = ns.command("timeout");
        cmd.args([
            "-s", "INT", &secs, "tcpdump", "-i", iface, "-n", "-e", "-l", "-tt",
        ])
        .args(["-c", &max_frames.max(1).to_string()]);
        cmd.args(filter.split_whitespace());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tcpdump (installed?): {e}"));
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let l2 = Arc::clone(&lines);
        let e2 = Arc::clone(&stderr);
        let readers = vec![
            thread::spawn(move || {
                // With -tt every frame starts with "<epoch>.<usec>"; tcpdump prints what it
                // decodes inside (e.g. VXLAN's inner frame) on continuation lines: join them.
                for line in io::BufReader::new(out).lines().map_while(Result::ok) {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let starts_frame = line
                        .split_whitespace()
                        .next()
                        .is_some_and(|t| t.parse::<f64>().is_ok());
                    let mut v = l2.lock().expect("lines lock");
                    match v.last_mut() {
                        Some(last) if !starts_frame => {
                            last.push_str(" | ");
                            last.push_str(line.trim());
                        }
                        _ => v.push(line),
                    }
                }
            }),
            thread::spawn(move || {
                for line in io::BufReader::new(err).lines().map_while(Result::ok) {
                    let mut s = e2.lock().expect("stderr lock");
                    s.push_str(&line);
                    s.push('\n');
                }
            }),
        ];
        let cap = Capture {
            child: Some(child),
            what: format!("tcpdump -i {iface} {filter} in {}", ns.name()),
            lines,
            stderr,
            readers,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cap
            .stderr
            .lock()
            .expect("stderr lock")
            .contains("listening on")
        {
            if Instant::now() >= deadline {
                panic!(
                    "{}: not listening after 5 s; stderr: {}",
                    cap.what,
                    cap.stderr.lock().expect("stderr lock")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        cap
    }

    /// Lines captured so far.
    pub fn so_far(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// Waits `settle` (for frames in flight), stops tcpdump (SIGINT, bounded) and returns one
    /// line per captured frame.
    pub fn finish(mut self, settle: Duration) -> Vec<String> {
        thread::sleep(settle);
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                signal(child.id(), "INT");
            }
            if wait_timeout(&mut child, Duration::from_secs(3)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let lines = self.lines.lock().expect("lines lock").clone();
        eprintln!("capture [{}]: {} frame(s)", self.what, lines.len());
        for l in lines.iter().take(10) {
            eprintln!("    {l}");
        }
        lines
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `ping -c count -i interval -W 1` (a burst; root may go below 0.2 s); whether ≥ 1 reply.
pub fn ping_burst(from: &Netns, to: impl Display, count: u32, interval: &str) -> bool {
    from.output(&[
        "ping",
        "-q",
        "-n",
        "-c",
        &count.to_string(),
        "-W",
        "1",
        "-i",
        interval,
        &to.to_string(),
    ])
    .status
    .success()
}

/// One ping with a reply wait of `wait_secs` seconds: the "first packet" probe.
pub fn ping_once(from: &Netns, to: impl Display, wait_secs: u32) -> bool {
    from.output(&[
        "ping",
        "-q",
        "-n",
        "-c",
        "1",
        "-W",
        &wait_secs.to_string(),
        &to.to_string(),
    ])
    .status
    .success()
}

/// Builds a VXLAN datagram payload (RFC 7348: flags 0x08, VNI) around `frame`.
pub fn vxlan_datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&(vni << 8).to_be_bytes());
    d.extend_from_slice(frame);
    d
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    assert_eq!(parts.len(), 6, "bad MAC {s:?}");
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap_or_else(|e| panic!("bad MAC {s:?}: {e}"));
    }
    m
}

/// An Ethernet frame carrying IPv4/UDP `src:sport → dst:dport` with `payload` (checksums
/// right; UDP checksum 0 = none).
pub fn udp_frame(
    dst_mac: &str,
    src_mac: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&parse_mac(dst_mac));
    f.extend_from_slice(&parse_mac(src_mac));
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Sends `payload` `copies` times from `ns` as UDP `src` (bound there, e.g. a host's underlay
/// address with a port of its own) to `dst`.
pub fn send_udp_from(ns: &Netns, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>, copies: u32) {
    ns.in_ns(move || -> io::Result<()> {
        let s = std::net::UdpSocket::bind(src)?;
        for _ in 0..copies {
            s.send_to(&payload, dst)?;
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("send udp {src} -> {dst}: {e}"));
}
