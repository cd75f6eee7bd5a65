//! wireguard's data plane as the daemon runs it: one device per `wg::layout::Layout`
//! (opened through `device::open`, as every overlay device, and given its families' part
//! of the setup), its socket (`Backend::sockets`) and its data path thread with an engine
//! of its own, reading the peer list the control loop's `wg::Sink` keeps. Checked (a
//! deleted route restored), moved to a re-acquired subnet and stopped like the routed
//! plane.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{error, info};

use super::device::{self, DeviceSetup, Seen};
use super::plan::Plan;
use super::DaemonError;
use crate::backend::Steer;
use crate::control::lease::SubnetKey;
use crate::counters::DropCounters;
use crate::host::Netlink;
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
/// figures, its data path's drops and its thread.
struct WgDevice {
    layout: Layout,
    setup: DeviceSetup,
    index: Option<u32>,
    /// Whether the last check found it (a vanished device is told about once).
    present: bool,
    stats: Arc<Stats>,
    drops: Arc<DropCounters>,
    worker: Worker,
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

    /// The periodic check: a deleted route is restored; a deleted device is not recreated
    /// (its TUN, socket and thread would have to be, with the engine's sessions: restart
    /// the daemon). Returns whether every device is there and ours.
    pub async fn check(&mut self, nl: &Netlink, t: &telemetry::State) -> bool {
        let mut ours = true;
        for d in &mut self.devices {
            let seen = device::check(nl, d.layout.name, d.index, &d.setup, t).await;
            if seen == Seen::Gone && d.present {
                error!(
                    device = d.layout.name,
                    "wireguard device vanished; it is not recreated: restart overlayd"
                );
            }
            d.present = seen != Seen::Gone;
            ours &= seen == Seen::Ours;
        }
        ours
    }

    /// Whether every data path thread runs.
    pub fn alive(&self) -> bool {
        self.devices.iter().all(|d| d.worker.alive())
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
        let setup = setup.only(layout.v4, layout.v6);
        let opts = tun::Options {
            name: name.into(),
            kind: tun::Kind::Tun,
            queues: 1,
            vnet_hdr: true,
            tunnel_hdr: false,
        };
        let mut dev = device::open(&opts, nl, &setup).await?;
        let io = |source| DaemonError::Device {
            name: name.into(),
            source,
        };
        let tun = dev
            .queues
            .pop()
            .ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
        let sockets = plan.backend.sockets(layout.bind, 1, Steer::Flow)?;
        let sock = sockets.recv.first().cloned();
        let sock = sock.ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
        let engine = Engine::new(identity.clone());
        let (stats, drops) = (engine.stats.clone(), Arc::new(DropCounters::default()));
        let worker = Worker::start(Parts {
            engine,
            tun,
            sock,
            peers: specs,
            drops: drops.clone(),
        })
        .map_err(io)?;
        Ok(WgDevice {
            layout: layout.clone(),
            setup,
            index: device::index(nl, name).await,
            present: true,
            stats,
            drops,
            worker,
        })
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
