//! [`Topology`]: a switch namespace with bridge `br0` and host namespaces on it, each with its
//! underlay address on `eth0` (every name below is really `ovt-<pid>-<seq>-<role>`):
//!
//! ```text
//!   ns "sw": bridge br0 ── h1 ─┐  h2 ─┐ ... etcd ─┐          (veth ends, in "sw")
//!   ns "h1": eth0 192.168.77.1/24 ┘     │           │
//!   ns "h2": eth0 192.168.77.2/24 ──────┘           │
//!   ns "etcd": eth0 192.168.77.250/24 ──────────────┘        (only after `start_etcd`)
//! ```
//!
//! The veth pairs are made from inside the switch namespace, so the root namespace never sees
//! them. scripts/lib/topology.sh builds the same layout for the demo and the benchmark.

use std::net::Ipv4Addr;
use std::ops::Deref;

use super::etcd::Etcd;
use super::netns::{cleanup_stale, Netns};

/// The underlay /24 every topology uses; host `hN` gets `.N` (see [`host_ip`]).
pub const UNDERLAY_NET: [u8; 3] = [192, 168, 77];
/// Underlay address of the etcd namespace.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 250);

/// Underlay MTU of every eth0.
pub const UNDERLAY_MTU: u32 = 1500;

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
