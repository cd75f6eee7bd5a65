//! L2 mode's building blocks: its constants, bridges in a host ([`add_bridge`]),
//! [`Container`], a namespace plugged into such a bridge by a veth pair (fixed MAC and
//! address, movable to another host), and [`L2Pair`], two hosts on one network.

use std::net::Ipv4Addr;
use std::ops::Deref;
use std::process::Command;

use std::time::Duration;

use super::daemon::{overlayd_l2_args, Overlayd};
use super::etcd::{Etcd, ETCD_PREFIX};
use super::netns::{wait_link, Netns};
use super::process::{must, run_cmd, tail};
use super::topology::Topology;

/// MTU of every L2 "container" interface (underlay 1500 − 50 of VXLAN).
pub const L2_CONTAINER_MTU: u32 = 1450;
/// Port of the metrics listener [`overlayd_l2_args`] adds (on each namespace's loopback).
pub const L2_METRICS_PORT: u16 = 9477;
/// The VXLAN UDP port L2 networks use by default (IANA's, as the kernel's `dstport 4789`).
pub const L2_VXLAN_PORT: u16 = 4789;

/// Starts overlayd with L2 `flags` on `host` (L3 vxlan as usual, metrics on loopback), waits
/// for the L3 subnet file and for each of `taps` to exist.
pub fn start_l2_daemon(host: &Netns, etcd: &Etcd, flags: &[&str], taps: &[&str]) -> Overlayd {
    const READY: Duration = Duration::from_secs(30);
    const TAP_WAIT: Duration = Duration::from_secs(20);
    let mut d = Overlayd::spawn(host, overlayd_l2_args(etcd, flags));
    d.wait_ready(READY);
    for tap in taps {
        if !wait_link(host, tap, TAP_WAIT) {
            panic!(
                "overlayd {flags:?} on {}: TAP {tap} not created within {TAP_WAIT:?}; log:\n{}",
                host.name(),
                tail(d.log_path(), 40)
            );
        }
    }
    d
}

/// Two hosts on one L2 network `net` (VNI 100), each with a bridge `brl2`, a container (c1
/// 10.50.0.1 on h1, c2 10.50.0.2 on h2) and an overlayd with `--l2 net@brl2`, both
/// announced as members. Fields drop in order: the daemons, the containers, etcd, the hosts.
pub struct L2Pair {
    pub d1: Overlayd,
    pub d2: Overlayd,
    pub c1: Container,
    pub c2: Container,
    pub etcd: Etcd,
    pub topo: Topology,
}

impl L2Pair {
    /// The pair for a network of `backend` (`vxlan`, `gre`), its daemons given `flags` too.
    pub fn start(backend: &str, flags: &[&str]) -> L2Pair {
        let mut topo = Topology::new(2);
        let etcd = topo.start_etcd();
        etcd.put_l2_network(ETCD_PREFIX, "net", 100, backend);
        let (h1, h2) = (topo.host(0), topo.host(1));
        for h in [h1, h2] {
            add_bridge(h, "brl2", false);
        }
        let c1 = Container::attach(h1, "brl2", "c1", "10.50.0.1/24", &l2_mac(0x50, 1, 1));
        let c2 = Container::attach(h2, "brl2", "c2", "10.50.0.2/24", &l2_mac(0x50, 2, 1));
        let mut all = vec!["--l2", "net@brl2"];
        all.extend(flags);
        let tap = if backend == "gre" { "l2g100" } else { "l2v100" };
        let d1 = start_l2_daemon(h1, &etcd, &all, &[tap]);
        let d2 = start_l2_daemon(h2, &etcd, &all, &[tap]);
        assert!(
            etcd.wait_l2_members(ETCD_PREFIX, "net", &[h1.ip, h2.ip], Duration::from_secs(20)),
            "h1 and h2 must both be members of the L2 network"
        );
        L2Pair {
            d1,
            d2,
            c1,
            c2,
            etcd,
            topo,
        }
    }
}

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
