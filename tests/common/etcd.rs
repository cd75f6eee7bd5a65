//! etcd as the tests use it: [`Etcd`] (a single member in a namespace, killed on drop, with
//! pause/stop/restart), [`etcdctl`] from any namespace, flannel's leases ([`Lease`],
//! [`lease_key`], [`vxlan_lease_value`]) and the L2 network and member keys.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::netns::Netns;
use super::process::{must, run_cmd, signal, stop_child, tail, TempDir};

/// flannel's default etcd prefix.
pub const ETCD_PREFIX: &str = "/coreos.com/network";

/// The lease id in `etcdctl lease grant`'s answer ("lease 694d5ab1c4f2b20b granted with
/// TTL(86400s)"), hex as etcdctl prints it.
pub fn lease_id(grant: &str) -> String {
    grant
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected lease grant output {grant:?}"))
        .to_owned()
}

/// `etcdctl` (API v3) run inside namespace `from` against `endpoint`.
pub fn etcdctl(from: &Netns, endpoint: &str, args: &[&str]) -> Result<String, String> {
    etcdctl_ns(from.name(), endpoint, args)
}

/// [`etcdctl`] in the namespace named `ns`.
fn etcdctl_ns(ns: &str, endpoint: &str, args: &[&str]) -> Result<String, String> {
    run_cmd(
        Command::new("ip")
            .args(["netns", "exec", ns, "etcdctl"])
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=5s")
            .args(args),
    )
}

/// One etcd member to launch: the one launcher of the single-member [`Etcd`] and of every
/// member of an [`EtcdCluster`](super::EtcdCluster).
pub(super) struct EtcdMember<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    /// The listen address as URLs write it (`[v6]` bracketed).
    pub ip: &'a str,
    pub data: &'a Path,
    pub log: &'a Path,
    /// The client URLs' scheme (`https` with TLS; peers always talk `http`).
    pub scheme: &'a str,
    /// TLS flags (`--cert-file=...`), empty without TLS.
    pub tls: &'a [String],
    /// `--initial-cluster`: `name=http://ip:2380,...`.
    pub initial_cluster: &'a str,
    pub token: Option<&'a str>,
}

impl EtcdMember<'_> {
    /// Starts etcd in its namespace, its output appended to its log.
    pub fn spawn(&self) -> Child {
        let (ip, scheme) = (self.ip, self.scheme);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log)
            .expect("open etcd log");
        Command::new("ip")
            .args(["netns", "exec", self.ns, "etcd"])
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data.display()))
            .arg(format!("--listen-client-urls={scheme}://{ip}:2379"))
            .arg(format!("--advertise-client-urls={scheme}://{ip}:2379"))
            .args(self.tls)
            .arg(format!("--listen-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-advertise-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .args(self.token.map(|t| format!("--initial-cluster-token={t}")))
            // Ignored once the data dir exists (a restart keeps its membership).
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd (installed? scripts/install-deps.sh): {e}")
            })
    }
}

/// Waits (bounded by `timeout`) until `healthy()` says the member `name` answers; panics with
/// its log's tail if it exits first or never answers. Returns how long it took.
pub(super) fn wait_member(
    child: &mut Option<Child>,
    log: &Path,
    name: &str,
    timeout: Duration,
    mut healthy: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if healthy() {
            return start.elapsed();
        }
        if let Some(Ok(Some(st))) = child.as_mut().map(Child::try_wait) {
            panic!("{name} exited early ({st}); log:\n{}", tail(log, 30));
        }
        if start.elapsed() >= timeout {
            panic!(
                "{name} not healthy after {timeout:?}; log:\n{}",
                tail(log, 30)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A single-member etcd running in a namespace; killed on drop.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    ns: String,
    ip: IpAddr,
    log: PathBuf,
    data: PathBuf,
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd in `ns` listening on `ip` (IPv4 or IPv6; client 2379, peer 2380), waits
    /// until healthy.
    pub fn start(ns: &Netns, ip: impl Into<IpAddr>) -> Etcd {
        let ip = ip.into();
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
        // `[v6]` in URLs.
        let ip = SocketAddr::new(self.ip, 0).to_string();
        let ip = ip.trim_end_matches(":0");
        let member = EtcdMember {
            ns: &self.ns,
            name: "ovt",
            ip,
            data: &self.data,
            log: &self.log,
            scheme: "http",
            tls: &[],
            initial_cluster: &format!("ovt=http://{ip}:2380"),
            token: None,
        };
        self.child = Some(member.spawn());
        let (ns, endpoint) = (self.ns.clone(), self.endpoint());
        let healthy = || etcdctl_ns(&ns, &endpoint, &["endpoint", "health"]).is_ok();
        wait_member(
            &mut self.child,
            &self.log,
            "etcd",
            Duration::from_secs(30),
            healthy,
        );
    }

    /// Client URL, e.g. `http://192.168.77.250:2379`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", SocketAddr::new(self.ip, 2379))
    }

    /// Pid of the etcd process (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `etcdctl` run from etcd's own namespace; `Err` on failure.
    pub fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        etcdctl_ns(&self.ns, &self.endpoint(), args)
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
        let id = lease_id(&self.ctl(&["lease", "grant", &ttl_secs.to_string()]));
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

// flannel leases

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

// L2 networks and members

/// A vxlan subnet lease (key, value) for a stand-in node at `public_ip` (an external VTEP):
/// L2 members count only while a lease carries their address. Its subnet,
/// 10.244.(150 + last octet % 100).0/24, stays clear of the ones daemons pick (the first
/// 100 from 10.244.1.0).
pub fn l2_peer_lease(prefix: &str, public_ip: Ipv4Addr) -> (String, String) {
    let third = 150 + u32::from(public_ip.octets()[3]) % 100;
    let subnet: Ipv4Net = format!("10.244.{third}.0/24").parse().expect("subnet");
    let mac = format!("0e:00:00:00:01:{:02x}", public_ip.octets()[3]);
    (
        lease_key(prefix, subnet),
        vxlan_lease_value(public_ip, 1, &mac),
    )
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

    /// Writes a subnet lease for `public_ip` on a 24 h etcd lease ([`l2_peer_lease`]).
    pub fn put_l2_peer_lease(&self, prefix: &str, public_ip: Ipv4Addr) {
        let (key, value) = l2_peer_lease(prefix, public_ip);
        self.put_with_lease(&key, &value, 86_400);
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
