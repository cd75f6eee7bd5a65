//! [`Netns`], a network namespace owned by a test (commands, `ip`, sysctls and threads inside
//! it; everything in it killed and the namespace deleted on drop), listing and deleting
//! namespaces ([`cleanup_stale`]), and queries on the links inside one.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use overlayd::sys::netns::{run_in_netns, spawn_in_netns, NetnsThread};

use super::process::{must, run_cmd, signal, unique_name, NS_PREFIX};

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
