//! Layer-2 overlays: Ethernet between hosts over VXLAN or GRE (gretap/NVGRE), with MAC
//! learning, head-end replication, ARP suppression and VLAN↔VNI trunking, configured from
//! etcd next to flannel's keys. Runs beside the routed (L3) mode in the same daemon.
//!
//! - [`config`]: the network JSON and the `--l2`/`--l2-vlan` flags (pure);
//! - [`fdb`]: the lock-free learning tables (pure);
//! - [`switch`]: the worker threads ([`switch::Switch`]);
//! - [`control`]: membership in etcd.
//!
//! See `docs/l2.md` for the model, the frame path and a worked two-tenant example.

pub mod config;
pub mod control;
pub mod fdb;
pub mod switch;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use self::config::{AccessSpec, L2Backend, VlanSpec};
use self::control::{L2Control, L2Error, LeaseHolders};
use self::switch::{Network, Port, PortKind, Shared, Switch};
use crate::backend::{self, SocketError, SOCKET_BUFFER};
use crate::control::etcd::Registry;
use crate::host::{HostError, Netlink, Underlay};
use crate::link_hops::LinkHops;
use crate::sys::socket::UnderlaySocket;
use crate::sys::tun::{self, Device};

/// Name of the trunk TAP.
pub const TRUNK_TAP: &str = "l2trunk";
/// What the node was asked to attach.
#[derive(Debug, Clone, Default)]
pub struct L2Options {
    pub access: Vec<AccessSpec>,
    pub vlans: Vec<VlanSpec>,
    pub trunk_bridge: Option<String>,
    /// Open TAPs with a virtio header and TSO/checksum offloads.
    pub offload: bool,
    /// Busy-poll of the workers after traffic.
    pub busy_poll: crate::datapath::BusyPoll,
    /// The tunnel-GSO TAP, shared with the routed data plane, when set up.
    pub tunnel: Option<crate::datapath::tunnel::Tunnel>,
    /// `--gre-link-tx`: the gre networks send through the link-layer path toward members
    /// whose next hop is known ([`crate::link_hops`]).
    pub gre_link_tx: bool,
}

impl L2Options {
    pub fn is_empty(&self) -> bool {
        self.access.is_empty() && self.vlans.is_empty()
    }
}

/// Why L2 could not start. Each message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum L2StartError {
    #[error(transparent)]
    Control(#[from] L2Error),
    #[error("L2 networks conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(
        "cannot open L2 device {name}: {source} (overlayd needs CAP_NET_ADMIN and /dev/net/tun)"
    )]
    Device {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot open L2 underlay socket on {addr}: {source}")]
    Socket {
        addr: String,
        source: std::io::Error,
    },
}

impl From<SocketError> for L2StartError {
    fn from(e: SocketError) -> Self {
        L2StartError::Socket {
            addr: e.addr,
            source: e.source,
        }
    }
}

/// The running L2 side of the daemon.
pub struct L2Node {
    dp: Option<Switch>,
    dp_cfg: switch::SwitchConfig,
    opts: L2Options,
    underlay_mtu: u32,
    devices: Vec<Device>,
    control: tokio::task::JoinHandle<()>,
    pool: crate::control::pool::EtcdPool,
    prefix: String,
    names: Vec<String>,
    self_ip: Ipv4Addr,
    pub shared: Arc<Shared>,
    /// `--gre-link-tx`'s task ([`follow_hops`]) and how many members have a next hop.
    hops: Option<(tokio::task::JoinHandle<()>, Arc<AtomicUsize>)>,
}

/// Checks that the networks can share this node's sockets: one vxlan port, distinct from
/// the L3 backend's; one network per (backend, VNI).
pub fn check_networks(
    nets: &[(String, config::L2NetworkConfig)],
    l3_port: Option<u16>,
) -> Result<(), String> {
    let mut ids = HashSet::new();
    let mut port = None;
    for (name, c) in nets {
        if !ids.insert((c.backend, c.vni)) {
            return Err(format!(
                "network {name} uses {} VNI {}, like another attached network; give each network its own VNI",
                c.backend, c.vni
            ));
        }
        if c.backend == L2Backend::Vxlan {
            if let Some(p) = port {
                if p != c.port {
                    return Err(format!(
                        "network {name} uses vxlan port {}, another uses {p}; all L2 vxlan networks of a node share one port",
                        c.port
                    ));
                }
            }
            if Some(c.port) == l3_port {
                return Err(format!(
                    "network {name} uses port {}, which the L3 backend already uses; pick another Port (4789 is the default)",
                    c.port
                ));
            }
            port = Some(c.port);
        }
    }
    Ok(())
}

impl L2Node {
    /// Reads the networks from etcd, opens the TAPs (enslaving them to bridges when asked)
    /// and the underlay sockets, starts the workers, announces membership and starts the
    /// control loop. `l3_port` is the L3 backend's UDP port (it must not be shared);
    /// `leases` tells which member addresses hold a current subnet lease.
    pub async fn start(
        opts: &L2Options,
        reg: &Registry,
        nl: &Netlink,
        underlay: &Underlay,
        (public_ip, l3_port): (Ipv4Addr, Option<u16>),
        leases: LeaseHolders,
    ) -> Result<L2Node, L2StartError> {
        config::check_attachments(&opts.access, &opts.vlans).map_err(L2StartError::Conflict)?;
        let pool = reg.pool();
        let prefix = reg.prefix().to_string();
        let names: Vec<String> = opts
            .access
            .iter()
            .map(|a| a.network.clone())
            .chain(opts.vlans.iter().map(|v| v.network.clone()))
            .collect();
        let mut cfgs = Vec::new();
        for name in &names {
            let c = control::wait_network(&pool, &prefix, name).await?;
            info!(network = %name, vni = c.vni, backend = %c.backend, "L2 network");
            cfgs.push((name.clone(), c));
        }
        check_networks(&cfgs, l3_port).map_err(L2StartError::Conflict)?;
        // Port MTUs: the access TAP's own, or the trunk's (the largest overhead of its
        // networks).
        let trunk_overhead = cfgs[opts.access.len()..]
            .iter()
            .map(|(_, c)| c.backend.overhead())
            .max()
            .unwrap_or(0);
        let mtu_of = |i: usize, c: &config::L2NetworkConfig| {
            let overhead = if i < opts.access.len() {
                c.backend.overhead()
            } else {
                trunk_overhead
            };
            underlay.mtu.saturating_sub(overhead)
        };
        let shared = Arc::new(Shared::new(
            cfgs.iter()
                .enumerate()
                .map(|(i, (n, c))| Network::new(n.clone(), c.clone(), mtu_of(i, c)))
                .collect(),
        ));

        let (devices, ports) = open_ports(opts, &shared, nl, underlay.mtu).await?;

        let dp_cfg = switch_config(opts, &cfgs, underlay)?;
        let dp = Switch::start(dp_cfg.clone(), ports, shared.clone()).map_err(|source| {
            L2StartError::Device {
                name: "L2 workers".into(),
                source,
            }
        })?;

        let mut ctl = L2Control::new(
            pool.clone(),
            prefix.clone(),
            names.clone(),
            public_ip,
            shared.clone(),
            leases,
        );
        // etcd failing now (every member down, an election) must not stop the node: the
        // control loop announces as soon as it finds our keys missing.
        if let Err(e) = ctl.announce().await {
            warn!(error = %e, "cannot announce L2 membership yet; retrying in the background");
        }
        let control = tokio::spawn(ctl.run());
        let hops = opts
            .gre_link_tx
            .then(|| start_hops(dp_cfg.gre.as_ref()?, nl, &shared))
            .flatten();
        info!(networks = ?names, gso = dp_cfg.gso, gre_link_tx = hops.is_some(), "L2 data plane running");
        Ok(L2Node {
            dp: Some(dp),
            dp_cfg,
            opts: opts.clone(),
            underlay_mtu: underlay.mtu,
            devices,
            control,
            pool,
            prefix,
            names,
            self_ip: public_ip,
            shared,
            hops,
        })
    }

    /// How many gre members the link-layer path has a next hop for (`--gre-link-tx` with a
    /// gre network), for the `overlayd_l2_gre_link_peers` gauge.
    pub fn link_peers(&self) -> Option<Arc<AtomicUsize>> {
        self.hops.as_ref().map(|(_, peers)| peers.clone())
    }

    /// The first of our TAPs that no longer exists (deleted under us), if any.
    pub async fn missing_device(&self, nl: &Netlink) -> Option<String> {
        if self.dp.is_none() {
            return Some("(L2 ports, after a failed repair)".into());
        }
        for d in &self.devices {
            if let Ok(None) = nl.link(&d.name).await {
                return Some(d.name.clone());
            }
        }
        None
    }

    /// Recreates every TAP (and its bridge attachment) and restarts the workers, keeping
    /// the sockets, the learned tables, the counters and the membership.
    pub async fn repair(&mut self, nl: &Netlink) -> Result<(), L2StartError> {
        if let Some(dp) = self.dp.take() {
            dp.stop();
        }
        self.devices.clear();
        let (devices, ports) = open_ports(&self.opts, &self.shared, nl, self.underlay_mtu).await?;
        self.devices = devices;
        self.dp = Some(
            Switch::start(self.dp_cfg.clone(), ports, self.shared.clone()).map_err(|source| {
                L2StartError::Device {
                    name: "L2 workers".into(),
                    source,
                }
            })?,
        );
        Ok(())
    }

    /// Withdraws our membership (so peers stop flooding to us), stops the workers and
    /// removes the TAPs.
    pub async fn stop(mut self) {
        self.control.abort();
        if let Some((task, _)) = &self.hops {
            task.abort();
        }
        // Bounded so that a stop with etcd unreachable still ends within the 2 s that
        // SIGTERM is allowed (the member keys then expire with their lease).
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            L2Control::withdraw(
                self.pool.clone(),
                self.prefix.clone(),
                self.names.clone(),
                self.self_ip,
            ),
        )
        .await;
        if let Some(dp) = self.dp.take() {
            dp.stop();
        }
        self.devices.clear();
    }
}

/// The workers' sockets: the vxlan networks' shared port (a receive socket with UDP GRO, a
/// send pool, whether UDP GSO is taken) and the gre networks' raw socket, as each is in use.
fn switch_config(
    opts: &L2Options,
    cfgs: &[(String, config::L2NetworkConfig)],
    underlay: &Underlay,
) -> Result<switch::SwitchConfig, L2StartError> {
    let sock_err = |addr: String| move |source| L2StartError::Socket { addr, source };
    let vxlan_port = cfgs
        .iter()
        .find(|(_, c)| c.backend == L2Backend::Vxlan)
        .map(|(_, c)| c.port);
    let (vxlan_recv, vxlan_send, gso) = match vxlan_port {
        Some(port) => {
            let bind = SocketAddrV4::new(underlay.addr, port);
            let recv = Arc::new(
                UnderlaySocket::udp(bind, SOCKET_BUFFER).map_err(sock_err(bind.to_string()))?,
            );
            let send = backend::vxlan_tunnel::send_pool(underlay.addr)?;
            let gso = opts.offload && send.iter().all(|s| s.probe_gso());
            // UDP GRO: runs of datagrams per receive (split again by segment size).
            if opts.offload && !recv.enable_gro() {
                warn!("UDP GRO refused on the L2 vxlan socket; receiving datagram by datagram");
            }
            (Some(recv), send, gso)
        }
        None => (None, Vec::new(), false),
    };
    let gre = if cfgs.iter().any(|(_, c)| c.backend == L2Backend::Gre) {
        Some(backend::gre_tunnel::raw_socket(underlay.addr)?)
    } else {
        None
    };
    Ok(switch::SwitchConfig {
        vnet_hdr: opts.offload,
        busy_poll: opts.busy_poll,
        gso,
        vxlan_recv,
        vxlan_send,
        gre,
        tunnel: opts.tunnel.clone(),
    })
}

/// How often the gre members' next hops are refreshed (as the routed plane's check).
const HOPS_EVERY: Duration = Duration::from_secs(2);

/// Starts [`follow_hops`] for the gre socket `gre`, unless it has no link-layer sender.
fn start_hops(
    gre: &Arc<UnderlaySocket>,
    nl: &Netlink,
    shared: &Arc<Shared>,
) -> Option<(tokio::task::JoinHandle<()>, Arc<AtomicUsize>)> {
    if gre.link_tx().is_none() {
        warn!("--gre-link-tx: the L2 gre socket has no link-layer sender; the gre networks send through the raw socket");
        return None;
    }
    let h = LinkHops::start();
    let peers = h.peers.clone();
    let task = follow_hops(h, nl.clone(), gre.clone(), shared.clone());
    Some((tokio::spawn(task), peers))
}

/// `--gre-link-tx` for the L2 gre networks: every [`HOPS_EVERY`], tells `gre`'s link-layer
/// sender the next hops toward their members (runs until aborted).
async fn follow_hops(
    mut hops: LinkHops,
    nl: Netlink,
    gre: Arc<UnderlaySocket>,
    shared: Arc<Shared>,
) {
    let mut tick = tokio::time::interval(HOPS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        hops.refresh(&nl, gre_members(&shared), std::slice::from_ref(&gre))
            .await;
    }
}

/// The members of every gre network.
fn gre_members(shared: &Shared) -> Vec<Ipv4Addr> {
    shared
        .nets
        .iter()
        .filter(|n| n.cfg.backend == L2Backend::Gre)
        .flat_map(|n| n.members.load().ips().to_vec())
        .collect()
}

/// Opens one TAP per access port and the trunk TAP when VLANs are mapped, sets their MTU,
/// brings them up and enslaves them to their bridges.
async fn open_ports(
    opts: &L2Options,
    shared: &Shared,
    nl: &Netlink,
    underlay_mtu: u32,
) -> Result<(Vec<Device>, Vec<Port>), L2StartError> {
    let open = |name: &str| -> Result<Device, L2StartError> {
        let mut dev = Device::open(&tun::Options {
            name: name.to_string(),
            kind: tun::Kind::Tap,
            queues: 1,
            vnet_hdr: opts.offload,
            tunnel_hdr: false,
        })
        .map_err(|source| L2StartError::Device {
            name: name.to_string(),
            source,
        })?;
        if opts.offload {
            if let Err(e) = crate::datapath::enable_offloads(&mut dev) {
                warn!(device = name, error = %e, "the kernel refused TAP offloads");
            }
        }
        Ok(dev)
    };
    let mut devices = Vec::new();
    let mut ports = Vec::new();
    for (i, a) in opts.access.iter().enumerate() {
        let c = &shared.nets[i].cfg;
        let mut dev = open(&c.backend.tap_name(c.vni))?;
        let mtu = shared.nets[i].mtu;
        nl.configure_tap(&dev.name, mtu, a.bridge.as_deref())
            .await?;
        info!(network = %a.network, device = %dev.name, mtu, bridge = ?a.bridge, "L2 access port");
        ports.push(Port {
            queue: Arc::new(dev.queues.remove(0)),
            kind: PortKind::Access { net: i as u16 },
        });
        devices.push(dev);
    }
    if !opts.vlans.is_empty() {
        let mut vid_to_net = [u16::MAX; 4096];
        for (j, v) in opts.vlans.iter().enumerate() {
            vid_to_net[v.vid as usize] = (opts.access.len() + j) as u16;
        }
        let mut dev = open(TRUNK_TAP)?;
        // Every trunk network has the trunk's MTU.
        let mtu = shared
            .nets
            .get(opts.access.len())
            .map(|n| n.mtu)
            .unwrap_or(underlay_mtu);
        nl.configure_tap(&dev.name, mtu, opts.trunk_bridge.as_deref())
            .await?;
        info!(device = %dev.name, mtu, bridge = ?opts.trunk_bridge, vlans = ?opts.vlans, "L2 trunk port");
        ports.push(Port {
            queue: Arc::new(dev.queues.remove(0)),
            kind: PortKind::Trunk {
                vid_to_net: Arc::new(vid_to_net),
            },
        });
        devices.push(dev);
    }
    Ok((devices, ports))
}

#[cfg(test)]
mod tests {
    use super::config::{L2Backend, L2NetworkConfig};
    use super::*;

    fn net(name: &str, vni: u32, backend: L2Backend, port: u16) -> (String, L2NetworkConfig) {
        (
            name.into(),
            L2NetworkConfig {
                vni,
                backend,
                port,
                arp_suppression: true,
                ageing_secs: 300,
            },
        )
    }

    #[test]
    fn network_conflicts() {
        let ok = [
            net("a", 100, L2Backend::Vxlan, 4789),
            net("b", 200, L2Backend::Vxlan, 4789),
            net("c", 100, L2Backend::Gre, 0),
        ];
        assert!(check_networks(&ok, Some(8472)).is_ok());
        let dup = [
            net("a", 100, L2Backend::Vxlan, 4789),
            net("b", 100, L2Backend::Vxlan, 4789),
        ];
        assert!(check_networks(&dup, None).unwrap_err().contains("own VNI"));
        let ports = [
            net("a", 1, L2Backend::Vxlan, 4789),
            net("b", 2, L2Backend::Vxlan, 4790),
        ];
        assert!(check_networks(&ports, None)
            .unwrap_err()
            .contains("share one port"));
        let l3 = [net("a", 1, L2Backend::Vxlan, 8472)];
        assert!(check_networks(&l3, Some(8472))
            .unwrap_err()
            .contains("L3 backend"));
    }
}
