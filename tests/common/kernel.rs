//! Kernel reference peers, configured as other implementations do: [`KernelVxlanNode`] (what
//! flanneld's vxlan backend sets up), the L2 VTEPs [`KernelL2Vxlan`] and [`KernelL2Gretap`] on
//! a bridge, and probes for what this kernel supports.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::daemon::{overlay_ip_of, overlayd_args, Overlayd, OVERLAY_NETWORK};
use super::etcd::{lease_key, vxlan_lease_value, Etcd, Lease, ETCD_PREFIX};
use super::l2::{L2_CONTAINER_MTU, L2_VXLAN_PORT};
use super::netns::Netns;
use super::process::{must, run_cmd};
use super::topology::{Topology, UNDERLAY_MTU};
use super::traffic::{ping_until, tcp_transfer};

/// A two-host interop run: overlayd vxlan (with `extra` flags) on h1 and a flanneld-style
/// kernel VXLAN node on h2, sharing one etcd. Checks that the kernel node reads our lease
/// in flannel's schema, pings both ways and 20 MB of TCP each way, byte-identical. Returns
/// the daemon and the rest, in drop order, for further checks.
pub fn interop_kernel_vxlan(extra: &[&str]) -> (Overlayd, KernelVxlanNode, Etcd, Topology) {
    const MB: u64 = 1_000_000;
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    // The config as a flannel cluster has it.
    etcd.put_network_config(ETCD_PREFIX, OVERLAY_NETWORK, 24, "vxlan");
    let kernel_subnet: Ipv4Net = "10.244.200.0/24".parse().unwrap();
    let kernel = KernelVxlanNode::setup(topo.host(1), topo.host(1).ip, kernel_subnet);
    kernel.register(&etcd, ETCD_PREFIX);
    let mut args = overlayd_args("vxlan", &etcd);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut d = Overlayd::spawn(topo.host(0), args);
    let ours = d.wait_ready(Duration::from_secs(30));
    // The kernel node learns our lease as flanneld would (static neighbour, fdb, route).
    let learned = kernel.sync_from_etcd(&etcd, ETCD_PREFIX);
    assert!(
        learned.iter().any(|l| l.public_ip == topo.host(0).ip),
        "our lease in flannel's schema: {learned:?}"
    );
    let our_ip = overlay_ip_of(&ours);
    assert!(
        ping_until(topo.host(0), kernel.overlay_ip(), Duration::from_secs(15)),
        "overlayd -> kernel vxlan"
    );
    assert!(
        ping_until(topo.host(1), our_ip, Duration::from_secs(15)),
        "kernel vxlan -> overlayd"
    );
    let (sent, got) = tcp_transfer(topo.host(0), topo.host(1), kernel.overlay_ip(), 0, 20 * MB);
    assert_eq!(sent, got, "TCP overlayd -> kernel");
    let (sent, got) = tcp_transfer(topo.host(1), topo.host(0), our_ip, 0, 20 * MB);
    assert_eq!(sent, got, "TCP kernel -> overlayd");
    (d, kernel, etcd, topo)
}

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

    /// Joins L2 network `network` by writing its member key by hand (24 h etcd lease), and a
    /// subnet lease for its address: members count only while a lease carries it.
    pub fn register(&self, etcd: &Etcd, prefix: &str, network: &str) {
        etcd.put_l2_peer_lease(prefix, self.local);
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
