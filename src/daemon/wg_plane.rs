//! wireguard's data plane as the daemon runs it: one device per `wg::layout::Layout`
//! (opened through `device::open`, as every overlay device, and given its families' part
//! of the setup), its socket (`Backend::sockets`) and its data path thread with an engine
//! of its own, reading the peer list the control loop's `wg::Sink` keeps. Checked (a
//! deleted route restored, a deleted device recreated with its engine's sessions), moved
//! to a re-acquired subnet and stopped like the routed plane.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{error, info, warn};

use super::device::{self, DeviceSetup, Seen};
use super::plan::Plan;
use super::DaemonError;
use crate::backend::Steer;
use crate::control::lease::SubnetKey;
use crate::counters::DropCounters;
use crate::host::Netlink;
use crate::sys::socket::UnderlaySocket;
use crate::sys::tun;
use crate::telemetry;
use crate::wg::engine::{Engine, Identity, Stats, WgDrop};
use crate::wg::layout::Layout;
use crate::wg::metrics::{self, Figures};
use crate::wg::worker::{Parts, SharedSpecs, Worker};

/// The running wireguard devices.
pub struct WgPlane {
    /// The node's setup (every family), which each device takes its part of.
    setup: DeviceSetup,
    devices: Vec<WgDevice>,
}

/// One device as it runs: its layout and setup, the link overlayd opened, its engine's
/// figures, its data path's drops and its thread, and what reopening it takes (its TUN
/// options, socket, peer list and identity).
struct WgDevice {
    layout: Layout,
    setup: DeviceSetup,
    index: Option<u32>,
    opts: tun::Options,
    sock: Arc<UnderlaySocket>,
    specs: SharedSpecs,
    identity: Identity,
    stats: Arc<Stats>,
    drops: Arc<DropCounters>,
    /// The thread; absent while the device could not be reopened, its engine parked.
    worker: Option<Worker>,
    parked: Option<Engine>,
}

impl WgPlane {
    /// Opens each device of `layouts` with `setup`'s part for its families and starts its
    /// thread on `specs` (the peer lists, in the layouts' order).
    pub async fn open(
        plan: &Plan,
        (layouts, identity): (&[Layout], &Identity),
        setup: DeviceSetup,
        nl: &Netlink,
        specs: &[SharedSpecs],
    ) -> Result<WgPlane, DaemonError> {
        let mut devices = Vec::new();
        for (layout, specs) in layouts.iter().zip(specs) {
            let dev = WgDevice::open(plan, layout, identity, setup, nl, specs.clone()).await?;
            devices.push(dev);
        }
        let names: Vec<&str> = layouts.iter().map(|l| l.name).collect();
        info!(devices = ?names, mtu = setup.mtu, "data plane configured (wireguard)");
        Ok(WgPlane { setup, devices })
    }

    /// Tells the metrics exporter about the devices' figures.
    pub fn publish(&self, t: &telemetry::State) {
        let figures: Vec<Figures> = self
            .devices
            .iter()
            .map(|d| Figures {
                device: d.layout.name,
                stats: d.stats.clone(),
                drops: d.drops.clone(),
            })
            .collect();
        let _ = t.extra.set(telemetry::Extra(Box::new(move || {
            metrics::refresh(&figures)
        })));
    }

    /// Moves every device to the subnets of `held` (a re-acquisition); returns the IPv4
    /// subnet now held, if any. The threads need nothing: the peers' AllowedIPs come from
    /// the leases, our own subnet is not among them.
    pub async fn move_to(&mut self, nl: &Netlink, held: SubnetKey) -> Option<ipnet::Ipv4Net> {
        self.setup = self.setup.moved_to(held);
        for d in &mut self.devices {
            d.setup = d.setup.moved_to(held);
            if let Err(e) = d.setup.apply(nl, d.layout.name).await {
                error!(device = d.layout.name, error = %e, "cannot move the device to the re-acquired subnet");
            }
        }
        self.setup.v4.map(|(sn, _)| sn)
    }

    /// The periodic check: a deleted route is restored, a deleted device recreated (its
    /// engine, with every session, goes on in a new thread on the new TUN). Returns whether
    /// every device is there and ours.
    pub async fn check(&mut self, nl: &Netlink, t: &telemetry::State) -> bool {
        let mut ours = true;
        for d in &mut self.devices {
            ours &= match device::check(nl, d.layout.name, d.index, &d.setup, t).await {
                Seen::Ours => true,
                Seen::Gone => d.recreate(nl, t).await,
                Seen::Foreign | Seen::Unknown => false,
            };
        }
        ours
    }

    /// Whether every data path thread runs.
    pub fn alive(&self) -> bool {
        self.devices
            .iter()
            .all(|d| d.worker.as_ref().is_some_and(Worker::alive))
    }

    /// Stops every thread, then closes the devices (the kernel removes them and their
    /// routes), each one's figures logged.
    pub fn stop(self) {
        for d in self.devices {
            d.log_totals();
            drop(d.worker);
        }
    }
}

fn device_error(name: &str, source: std::io::Error) -> DaemonError {
    DaemonError::Device {
        name: name.into(),
        source,
    }
}

fn not_found(name: &str) -> DaemonError {
    device_error(name, std::io::ErrorKind::NotFound.into())
}

impl WgDevice {
    /// Opens the device and its socket, and starts its thread with an engine of its own.
    async fn open(
        plan: &Plan,
        layout: &Layout,
        identity: &Identity,
        setup: DeviceSetup,
        nl: &Netlink,
        specs: SharedSpecs,
    ) -> Result<WgDevice, DaemonError> {
        let name = layout.name;
        let opts = tun::Options {
            name: name.into(),
            kind: tun::Kind::Tun,
            queues: 1,
            vnet_hdr: true,
            tunnel_hdr: false,
        };
        let sockets = plan.backend.sockets(layout.bind, 1, Steer::Flow)?;
        let sock = sockets.recv.first().cloned();
        let sock = sock.ok_or_else(|| not_found(name))?;
        let engine = Engine::new(identity.clone());
        let mut d = WgDevice {
            layout: layout.clone(),
            setup: setup.only(layout.v4, layout.v6),
            index: None,
            opts,
            sock,
            specs,
            identity: identity.clone(),
            stats: engine.stats.clone(),
            drops: Arc::new(DropCounters::default()),
            worker: None,
            parked: Some(engine),
        };
        d.start(nl).await?;
        Ok(d)
    }

    /// Opens the TUN with the device's setup and starts the thread on it with the parked
    /// engine.
    async fn start(&mut self, nl: &Netlink) -> Result<(), DaemonError> {
        let name = self.layout.name;
        let mut dev = device::open(&self.opts, nl, &self.setup).await?;
        let tun = dev.queues.pop().ok_or_else(|| not_found(name))?;
        let engine = self.parked.take();
        let engine =
            engine.unwrap_or_else(|| Engine::with_stats(self.identity.clone(), &self.stats));
        let worker = Worker::start(Parts {
            engine,
            tun,
            sock: self.sock.clone(),
            peers: self.specs.clone(),
            drops: self.drops.clone(),
        })
        .map_err(|e| device_error(name, e))?;
        self.worker = Some(worker);
        self.index = device::index(nl, name).await;
        Ok(())
    }

    /// The device vanished: its thread stops and hands back the engine, the device is
    /// opened again and a new thread goes on with it. Returns whether it is ours again
    /// (else the next check tries again).
    async fn recreate(&mut self, nl: &Netlink, t: &telemetry::State) -> bool {
        if let Some(w) = self.worker.take() {
            warn!(
                device = self.layout.name,
                "wireguard device vanished; recreating it with its sessions"
            );
            t.control.device_repairs.fetch_add(1, Ordering::Relaxed);
            self.parked = w.stop();
        }
        match self.start(nl).await {
            Ok(()) => self.index.is_some(),
            Err(e) => {
                error!(device = self.layout.name, error = %e, "cannot recreate the wireguard device; retrying");
                false
            }
        }
    }

    fn log_totals(&self) {
        let st = &self.stats;
        let drops: Vec<String> = WgDrop::ALL
            .iter()
            .map(|&w| format!("{}={}", w.as_str(), st.dropped(w)))
            .collect();
        info!(
            device = self.layout.name,
            tx_packets = st.tx_packets.load(Ordering::Relaxed),
            rx_packets = st.rx_packets.load(Ordering::Relaxed),
            handshakes = st.handshakes.load(Ordering::Relaxed),
            drops = %drops.join(","),
            "stopped; device removed, lease and key kept for the next start"
        );
    }
}
