//! The data plane as the daemon runs it ([`Plane`]): the routed one or wireguard's
//! (`super::wg_plane`), as the plan says; the one thing the start-up stages and the main
//! loop hand to the backend. The routed one ([`RoutedPlane`]): the device, the underlay
//! sockets, the tunnel-GSO TAP and the workers, opened from the plan, kept healthy by the
//! periodic check (route restored, device recreated with the same options and every peer
//! kept), stopped in order.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{error, info, warn};

use super::device::{self, DeviceSetup, Seen};
use super::plan::{Plan, PlaneKind, FORWARD_DROPS};
use super::wg_plane::WgPlane;
use super::{DaemonError, Peers};
use crate::backend::{Encap, Sockets, Steer};
use crate::control::lease::SubnetKey;
use crate::counters::Totals;
use crate::datapath::tunnel::Tunnel;
use crate::fib::{SharedFib, SharedFib6};
use crate::gso_tap::{self, GsoTap};
use crate::host::{Netlink, Underlay};
use crate::l3::{self, Router};
use crate::link_hops::LinkHops;
use crate::sys::tun;
use crate::telemetry;

/// The running data plane: what differs between backends once the lease is held.
pub enum Plane {
    /// Boxed: it is by far the larger.
    Routed(Box<RoutedPlane>),
    Wireguard(WgPlane),
}

impl Plane {
    /// Opens the plane the plan asks for, on the forwarding tables (routed) or peer lists
    /// (wireguard) of `peers`.
    pub async fn open(
        plan: &Plan,
        setup: DeviceSetup,
        nl: &Netlink,
        underlay: &Underlay,
        peers: &Peers,
    ) -> Result<Plane, DaemonError> {
        Ok(match &plan.plane {
            PlaneKind::Routed { encap, encap6 } => Plane::Routed(Box::new(
                RoutedPlane::open(plan, (*encap, *encap6), setup, nl, underlay, peers).await?,
            )),
            PlaneKind::Wireguard { layouts, identity } => Plane::Wireguard(
                WgPlane::open(plan, (layouts, identity), setup, nl, &peers.specs).await?,
            ),
        })
    }

    /// The tunnel-GSO TAP's shared side, when it is in use (for the L2 networks).
    pub fn tunnel(&self) -> Option<Tunnel> {
        match self {
            Plane::Routed(p) => p.cfg.tunnel.clone(),
            Plane::Wireguard(_) => None,
        }
    }

    /// Tells the metrics exporter about the data plane.
    pub fn publish(&self, t: &telemetry::State, backend: &'static str, peers: &Peers) {
        let _ = t.backend.set(backend);
        let _ = t.fib.set(peers.fib.clone());
        let _ = t.fib6.set(peers.fib6.clone());
        match self {
            Plane::Routed(p) => p.publish(t),
            Plane::Wireguard(p) => p.publish(t),
        }
    }

    /// Moves the devices to the subnets of `held` (a re-acquisition); returns the IPv4
    /// subnet now configured, if any.
    pub async fn move_to(&mut self, nl: &Netlink, held: SubnetKey) -> Option<ipnet::Ipv4Net> {
        match self {
            Plane::Routed(p) => p.move_to(nl, held).await,
            Plane::Wireguard(p) => p.move_to(nl, held).await,
        }
    }

    /// The periodic check and repair; whether the devices are there and ours (for the
    /// watchdog). `Err` only when the routed workers cannot be restarted.
    pub async fn check(&mut self, nl: &Netlink, t: &telemetry::State) -> Result<bool, DaemonError> {
        match self {
            Plane::Routed(p) => p.check(nl, t).await,
            Plane::Wireguard(p) => Ok(p.check(nl, t).await),
        }
    }

    /// Whether every data path thread runs.
    pub fn alive(&self) -> bool {
        match self {
            Plane::Routed(p) => p.alive(),
            Plane::Wireguard(p) => p.alive(),
        }
    }

    /// Stops the threads and closes the devices, logging what they carried.
    pub fn stop(self) {
        match self {
            Plane::Routed(p) => {
                let totals = p.stop();
                info!(
                    tx_packets = totals.tx_packets,
                    rx_packets = totals.rx_packets,
                    drops = totals.drops.iter().sum::<u64>(),
                    "stopped; device and routes removed, lease kept for the next start"
                );
            }
            Plane::Wireguard(p) => p.stop(),
        }
    }
}

/// The running routed data plane and what it takes to open its device again.
pub struct RoutedPlane {
    opts: tun::Options,
    setup: DeviceSetup,
    cfg: l3::RouterConfig,
    v4: Sockets,
    v6: Sockets,
    fib: SharedFib,
    fib6: SharedFib6,
    steer: Steer,
    queues: Vec<Arc<tun::Queue>>,
    workers: Option<Router>,
    /// The device overlayd opened, by index: a link that merely took its name is not ours.
    index: Option<u32>,
    /// The offload flags the kernel accepted on the device first opened.
    offloads: u32,
    gso_tap: Option<GsoTap>,
    /// `--gre-link-tx` on gre over IPv4: the peers' next hops for the send sockets'
    /// link-layer senders.
    link_hops: Option<LinkHops>,
}

impl RoutedPlane {
    /// Opens the device (given `setup`), the sockets of each underlay family, the
    /// tunnel-GSO TAP when the plan wants it, and starts the workers (`encap` on the IPv4
    /// underlay, `encap6` on the IPv6 one) on the forwarding tables of `peers`.
    async fn open(
        plan: &Plan,
        (encap, encap6): (Encap, Encap),
        setup: DeviceSetup,
        nl: &Netlink,
        underlay: &Underlay,
        peers: &Peers,
    ) -> Result<RoutedPlane, DaemonError> {
        let opts = plan.tun_options();
        let mut dev = open_device(&opts, nl, &setup, plan.steer).await?;
        let (v4, v6) = sockets(plan)?;
        let v4_link = v4.send.iter().any(|s| s.link_tx().is_some());
        if plan.gre_link_tx && !v4_link {
            warn!("--gre-link-tx: the routed plane is not gre over an IPv4 underlay, so only L2 gre networks (if any) send through it");
        }
        let (gso, gro) = socket_offloads(plan.offload, &v4, &v6);
        let pin_to = pin_to(plan.steer)?;
        info!(device = %dev.name, queues = plan.queues, steer = plan.steer.name(), pin_to = ?pin_to, mtu = plan.mtu, ipv6_mtu = ?plan.ipv6_mtu, offloads = dev.offloads, gso, gro, ipv6_underlay = ?plan.underlay6, "data plane configured");
        let gso_tap = open_tunnel(plan, nl, underlay).await?;
        let cfg = l3::RouterConfig {
            encap,
            encap6,
            port: plan.backend.port,
            tun_addr: setup
                .v4
                .map_or(std::net::Ipv4Addr::UNSPECIFIED, |(sn, _)| sn.network()),
            vnet_hdr: plan.offload,
            gso,
            gro,
            local_mac: plan.backend.vtep_mac,
            busy_poll: plan.busy_poll,
            tunnel: gso_tap.as_ref().map(|t| t.tunnel.clone()),
            mtu: plan.mtu,
            pin_to,
        };
        let mut plane = RoutedPlane {
            index: device::index(nl, &opts.name).await,
            opts,
            setup,
            cfg,
            v4,
            v6,
            fib: peers.fib.clone(),
            fib6: peers.fib6.clone(),
            steer: plan.steer,
            queues: device::queues(&mut dev),
            workers: None,
            offloads: dev.offloads,
            gso_tap,
            link_hops: (plan.gre_link_tx && v4_link).then(LinkHops::start),
        };
        plane.refresh_hops(nl).await;
        plane.start_workers()?;
        Ok(plane)
    }

    /// Starts the workers on the current queues (at start, and after the device was
    /// recreated); the forwarding tables live outside them, so every peer is kept.
    fn start_workers(&mut self) -> Result<(), DaemonError> {
        let dp = Router::start(
            self.cfg.clone(),
            self.queues.clone(),
            self.v4.clone(),
            self.v6.clone(),
            self.fib.clone(),
            self.fib6.clone(),
        )
        .map_err(|source| DaemonError::Device {
            name: self.opts.name.clone(),
            source,
        })?;
        self.workers = Some(dp);
        Ok(())
    }

    /// Tells the metrics exporter about the TAP, the offloads and the workers.
    fn publish(&self, t: &telemetry::State) {
        if let Some(tunnel) = &self.cfg.tunnel {
            let _ = t.tunnel_gso.set(tunnel.on.clone());
            let _ = t.tunnel_gso6.set(tunnel.on6.clone());
        }
        let _ = t.offloads.set(telemetry::Offloads {
            tun_tso: self.offloads & tun::TUN_F_TSO4 != 0,
            tun_uso: self.offloads & tun::TUN_F_USO4 != 0,
            udp_gso: self.cfg.gso,
            udp_gro: self.cfg.gro,
        });
        let _ = t.steer.set(self.steer.name());
        if let Some(h) = &self.link_hops {
            let _ = t.link_peers.set(h.peers.clone());
        }
        self.publish_workers(t);
    }

    /// `--gre-link-tx`: tells the link-layer senders the next hops toward the peers listed
    /// now ([`LinkHops::refresh`]).
    async fn refresh_hops(&mut self, nl: &Netlink) {
        if let Some(h) = &mut self.link_hops {
            let fib = self.fib.load();
            let dsts: Vec<_> = fib.peers().iter().map(|p| p.public_ip).collect();
            h.refresh(nl, dsts, &self.v4.send).await;
        }
    }

    fn publish_workers(&self, t: &telemetry::State) {
        if let (Ok(mut w), Some(dp)) = (t.workers.lock(), &self.workers) {
            *w = Some(dp.stats.clone());
            t.threads.store(dp.threads(), Ordering::Relaxed);
        }
    }

    /// Moves the device to the subnets of `held` (a re-acquisition); returns the IPv4
    /// subnet now configured, if any.
    async fn move_to(&mut self, nl: &Netlink, held: SubnetKey) -> Option<ipnet::Ipv4Net> {
        self.setup = self.setup.moved_to(held);
        if let Err(e) = self.setup.apply(nl, &self.opts.name).await {
            error!(error = %e, "cannot move the device to the re-acquired subnet");
        }
        self.setup.v4.map(|(sn, _)| sn)
    }

    /// The periodic check: the device or its route deleted under us (host network scripts
    /// do that) is recreated. Returns whether the device is there and ours (for the
    /// watchdog); `Err` only when the workers cannot be restarted.
    async fn check(&mut self, nl: &Netlink, t: &telemetry::State) -> Result<bool, DaemonError> {
        self.refresh_hops(nl).await;
        match device::check(nl, &self.opts.name, self.index, &self.setup, t).await {
            Seen::Ours => Ok(true),
            Seen::Gone => self.recreate(nl, t).await,
            Seen::Foreign | Seen::Unknown => Ok(false),
        }
    }

    /// The device vanished: stop the workers, open it again with the same options and
    /// setup, restart the workers (on no queue when that failed: they idle until the next
    /// check). Returns whether the device is ours again.
    async fn recreate(&mut self, nl: &Netlink, t: &telemetry::State) -> Result<bool, DaemonError> {
        warn!(device = %self.opts.name, "overlay device vanished; recreating it with every peer's state");
        t.control.device_repairs.fetch_add(1, Ordering::Relaxed);
        t.ready.store(false, Ordering::Relaxed);
        if let Some(dp) = self.workers.take() {
            dp.stop();
        }
        self.queues.clear();
        let mut ours = false;
        match open_device(&self.opts, nl, &self.setup, self.steer).await {
            Ok(mut dev) => {
                self.queues = device::queues(&mut dev);
                self.index = device::index(nl, &self.opts.name).await;
                ours = self.index.is_some();
            }
            Err(e) => error!(error = %e, "cannot recreate the overlay device; retrying"),
        }
        if let Err(e) = self.start_workers() {
            error!(error = %e, "cannot restart the data plane");
            return Err(e);
        }
        self.publish_workers(t);
        t.ready.store(!self.queues.is_empty(), Ordering::Relaxed);
        Ok(ours)
    }

    /// Whether every worker thread runs.
    fn alive(&self) -> bool {
        self.workers.as_ref().is_some_and(Router::alive)
    }

    /// Stops the workers, then closes the device (the kernel removes it and its routes)
    /// and the TAP; returns the workers' totals.
    fn stop(mut self) -> Totals {
        let totals = self
            .workers
            .as_ref()
            .map(Router::totals)
            .unwrap_or_default();
        if let Some(dp) = self.workers.take() {
            dp.stop();
        }
        drop(std::mem::take(&mut self.queues));
        drop(self.gso_tap.take());
        totals
    }
}

/// Opens the device ([`device::open`]) and, with `--steer cpu`, gives it the program that
/// picks the transmit queue by CPU.
async fn open_device(
    opts: &tun::Options,
    nl: &Netlink,
    setup: &DeviceSetup,
    steer: Steer,
) -> Result<tun::Device, DaemonError> {
    let dev = device::open(opts, nl, setup).await?;
    if steer == Steer::Cpu {
        dev.steer_by_cpu().map_err(DaemonError::Steer)?;
    }
    Ok(dev)
}

/// The CPUs the workers are pinned over with `--steer cpu` (the process's allowed set);
/// none with `--steer flow`.
fn pin_to(steer: Steer) -> Result<Vec<usize>, DaemonError> {
    match steer {
        Steer::Flow => Ok(Vec::new()),
        Steer::Cpu => crate::sys::cpu::allowed().map_err(DaemonError::Steer),
    }
}

/// The backend's sockets on the IPv4 and the IPv6 underlay (none for a family not used).
fn sockets(plan: &Plan) -> Result<(Sockets, Sockets), DaemonError> {
    let open = |addr: Option<IpAddr>| match addr {
        Some(a) => plan.backend.sockets(a, plan.queues, plan.steer),
        None => Ok(Sockets::default()),
    };
    let v4 = open(plan.underlay4.map(IpAddr::V4))?;
    Ok((v4, open(plan.underlay6.map(IpAddr::V6))?))
}

/// UDP GSO (every send socket takes it) and GRO (every receive socket, none raw) with
/// offloads on.
fn socket_offloads(offload: bool, v4: &Sockets, v6: &Sockets) -> (bool, bool) {
    let gso = offload && v4.send.iter().chain(&v6.send).all(|s| s.probe_gso());
    let recvs: Vec<_> = v4.recv.iter().chain(&v6.recv).collect();
    let gro = offload
        && recvs.first().is_some_and(|s| !s.is_raw())
        && recvs.iter().all(|s| s.enable_gro());
    (gso, gro)
}

/// The tunnel-GSO TAP when the plan wants it and the host allows it: `Err` only for
/// `--tunnel-gso on` (otherwise a warning, and userspace segmentation).
async fn open_tunnel(
    plan: &Plan,
    nl: &Netlink,
    underlay: &Underlay,
) -> Result<Option<GsoTap>, DaemonError> {
    let t = plan.tunnel;
    if !t.wanted {
        return Ok(None);
    }
    if t.check_forward && crate::masq::forward_policy_drops().await == Some(true) {
        t.unavailable(FORWARD_DROPS.to_string())?;
        return Ok(None);
    }
    match GsoTap::open(nl, underlay, plan.queues, plan.underlay6).await {
        Ok(tap) => {
            info!(
                device = gso_tap::NAME,
                "tunnel GSO on: the kernel segments whole super-packets"
            );
            Ok(Some(tap))
        }
        Err(reason) => {
            t.unavailable(reason)?;
            Ok(None)
        }
    }
}
