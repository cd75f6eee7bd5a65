//! IPv6 underlays: a topology whose hosts (and etcd) have only IPv6 on `eth0`
//! ([`ipv6_only_underlay`]), flannel's IPv6-only config, readiness of a node whose
//! subnet.env has only the IPv6 lines ([`wait_ready6`]), and [`KernelVxlanV6`]: the
//! `flannel-v6.<VNI>` device flanneld sets up on a dual-stack or IPv6-only node, with the
//! kernel's VXLAN driver over the IPv6 underlay.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv6Net;

use super::daemon::Overlayd;
use super::etcd::Etcd;
use super::ipv6::{add_ipv6_addr, add_underlay_ipv6, ipv6_subnet_in};
use super::netns::Netns;
use super::process::{must, run_cmd, tail};
use super::topology::{Topology, ETCD_IP};

/// etcd's IPv6 underlay address in [`ipv6_only_underlay`].
pub const ETCD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0xfa);

/// Turns `topo`'s hosts into IPv6-only ones (their IPv4 address removed from `eth0`,
/// `fd00:77::(i+1)/64` added), attaches an etcd namespace with only [`ETCD_IP6`] and starts
/// etcd there, reached over IPv6 only.
pub fn ipv6_only_underlay(topo: &mut Topology) -> Etcd {
    for (i, h) in topo.hosts.iter().enumerate() {
        h.ip(&format!("addr del {}/24 dev eth0", h.ip));
        add_underlay_ipv6(h, i);
    }
    let host = topo.attach("etcd", ETCD_IP);
    host.ip(&format!("addr del {ETCD_IP}/24 dev eth0"));
    add_ipv6_addr(host, "eth0", &format!("{ETCD_IP6}/64"));
    for h in topo.hosts.iter().chain(&topo.extra) {
        let v4 = h.ip("-4 -o addr show dev eth0");
        assert!(
            v4.trim().is_empty(),
            "{}: IPv4 left on eth0: {v4}",
            h.name()
        );
    }
    let host = topo.extra.last().expect("just attached");
    Etcd::start(host, ETCD_IP6)
}

/// flannel's IPv6-only net-conf: `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":...,"Backend":{"Type":...}}`.
pub fn ipv6_only_config(network6: &str, backend: &str) -> String {
    serde_json::json!({
        "EnableIPv4": false,
        "EnableIPv6": true,
        "IPv6Network": network6,
        "Backend": { "Type": backend },
    })
    .to_string()
}

/// Waits until `d` has written its subnet file with an IPv6 subnet (an IPv6-only node's has
/// no `FLANNEL_SUBNET`); returns that subnet. Panics with the log tail on timeout or exit.
pub fn wait_ready6(d: &mut Overlayd, timeout: Duration) -> Ipv6Net {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(sn6) = ipv6_subnet_in(d.subnet_file()) {
            return sn6;
        }
        if let Some(st) = d.try_wait() {
            panic!(
                "overlayd exited before ready ({st}); log:\n{}",
                tail(d.log_path(), 40)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "overlayd not ready after {timeout:?}; log:\n{}",
                tail(d.log_path(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The IPv6 side of a flanneld vxlan node, with the kernel's VXLAN driver: device
/// `flannel-v6.<VNI>` (`local` = the node's IPv6 underlay address, dstport 8472,
/// nolearning; the kernel gives it the underlay MTU − 70), address = the IPv6 subnet's
/// network address /128; per peer a permanent neighbour (the peer's IPv6 subnet address →
/// its `BackendV6Data` VtepMAC), a permanent fdb entry (that MAC → its `PublicIPv6`) and an
/// onlink route, as flanneld's `handleSubnetEvents` installs them. No NDP is needed.
#[derive(Debug)]
pub struct KernelVxlanV6 {
    ns: String,
    pub public_ipv6: Ipv6Addr,
    pub subnet6: Ipv6Net,
    pub vni: u32,
    pub vtep_mac: String,
    pub dev: String,
}

impl KernelVxlanV6 {
    /// VNI 1, port 8472, underlay `eth0`.
    pub fn setup(ns: &Netns, public_ipv6: Ipv6Addr, subnet6: Ipv6Net, vtep_mac: &str) -> Self {
        let dev = "flannel-v6.1".to_string();
        ns.ip(&format!(
            "link add {dev} address {vtep_mac} type vxlan id 1 dev eth0 local {public_ipv6} dstport 8472 nolearning"
        ));
        ns.sysctl(
            &format!("net.ipv6.conf.{}.accept_ra", dev.replace('.', "/")),
            "0",
        );
        ns.ip(&format!(
            "-6 addr add {}/128 dev {dev} nodad",
            subnet6.network()
        ));
        ns.ip(&format!("link set {dev} up"));
        KernelVxlanV6 {
            ns: ns.name().to_owned(),
            public_ipv6,
            subnet6,
            vni: 1,
            vtep_mac: vtep_mac.to_owned(),
            dev,
        }
    }

    /// The address on the device: the IPv6 subnet's network address.
    pub fn overlay_ip(&self) -> Ipv6Addr {
        self.subnet6.network()
    }

    /// The device's MTU.
    pub fn mtu(&self) -> Option<u32> {
        let out =
            run_cmd(Command::new("ip").args(["-n", &self.ns, "-o", "link", "show", &self.dev]))
                .ok()?;
        let w: Vec<&str> = out.split_whitespace().collect();
        w.get(w.iter().position(|x| *x == "mtu")? + 1)?.parse().ok()
    }

    /// Installs a peer's IPv6 forwarding state (neighbour, fdb, route), like flanneld on a
    /// lease event.
    pub fn add_peer(&self, subnet6: Ipv6Net, public_ipv6: Ipv6Addr, mac6: &str) {
        let (ns, dev, addr) = (&self.ns, &self.dev, subnet6.network());
        let ip = |words: &str| {
            must(run_cmd(
                Command::new("ip")
                    .args(["-n", ns])
                    .args(words.split_whitespace()),
            ))
        };
        ip(&format!(
            "-6 neigh replace {addr} lladdr {mac6} dev {dev} nud permanent"
        ));
        must(run_cmd(Command::new("bridge").args([
            "-n",
            ns,
            "fdb",
            "replace",
            mac6,
            "dev",
            dev,
            "dst",
            &public_ipv6.to_string(),
            "self",
            "permanent",
        ])));
        ip(&format!(
            "-6 route replace {subnet6} via {addr} dev {dev} onlink"
        ));
    }

    /// Reads every lease under `prefix` and installs the IPv6 side of each vxlan lease on
    /// our VNI other than `own_key` (its IPv6 subnet from the key, `PublicIPv6` and
    /// `BackendV6Data.VtepMAC` from the value), as flanneld does. Returns the peers
    /// installed: (IPv6 subnet, PublicIPv6, MAC).
    pub fn sync_from_etcd(
        &self,
        etcd: &Etcd,
        prefix: &str,
        own_key: &str,
    ) -> Vec<(Ipv6Net, Ipv6Addr, String)> {
        let dir = format!("{prefix}/subnets/");
        let mut peers = Vec::new();
        for (k, v) in etcd.get_prefix(&dir) {
            if k.ends_with(own_key) {
                continue;
            }
            let Some((_, v6key)) = k.strip_prefix(&dir).and_then(|n| n.split_once('&')) else {
                continue;
            };
            let Some((net, len)) = v6key.split_once('-') else {
                continue;
            };
            let (Ok(net), Ok(len)) = (net.parse::<Ipv6Addr>(), len.parse::<u8>()) else {
                continue;
            };
            let Ok(sn6) = Ipv6Net::new(net, len) else {
                continue;
            };
            let json: serde_json::Value = serde_json::from_str(&v).unwrap_or_default();
            if json["BackendType"] != "vxlan" || json["BackendV6Data"]["VNI"] != self.vni {
                continue;
            }
            let (Some(ip6), Some(mac6)) = (
                json["PublicIPv6"].as_str().and_then(|s| s.parse().ok()),
                json["BackendV6Data"]["VtepMAC"].as_str(),
            ) else {
                continue;
            };
            self.add_peer(sn6, ip6, mac6);
            peers.push((sn6, ip6, mac6.to_string()));
        }
        peers
    }
}

/// A dual-stack vxlan lease value as flanneld writes it (see tests/ipv6.rs for its
/// source): both addresses, `BackendData` for `flannel.1`, `BackendV6Data` for
/// `flannel-v6.1`.
pub fn flannel_dual_lease_value(ip: Ipv4Addr, mac: &str, ip6: Ipv6Addr, mac6: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
    )
}
