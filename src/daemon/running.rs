//! The main loop: what the daemon does once it is ready, one method per event (the L2
//! networks started, our subnet changed, the 2 s check and repair), until a signal; then
//! the orderly stop.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};
use tracing::{error, info, warn};

use super::blackhole::Blackholes;
use super::plane::Plane;
use super::DaemonError;
use crate::control::config::NetworkConfig;
use crate::control::lease::SubnetKey;
use crate::control::subnet_env::SubnetEnv;
use crate::direct::DirectRoutes;
use crate::host::Netlink;
use crate::l2::{L2Node, L2StartError};
use crate::lifecycle::Stop;
use crate::masq::Firewall;
use crate::systemd::{Health, Watchdog};
use crate::telemetry;

/// The L2 networks being started in the background.
pub type L2Starting = JoinHandle<Result<L2Node, L2StartError>>;

/// subnet.env, the interface to the CNI plugin, for whichever lease we hold.
pub struct SubnetFile {
    pub cfg: NetworkConfig,
    pub mtu: u32,
    pub ip_masq: bool,
    pub path: PathBuf,
}

impl SubnetFile {
    /// Writes it (atomically) for `held`.
    pub fn write(&self, held: SubnetKey) -> Result<(), DaemonError> {
        SubnetEnv::for_lease(&self.cfg, held, self.mtu, self.ip_masq)
            .write_atomic(&self.path)
            .map_err(|source| DaemonError::SubnetFile {
                path: self.path.display().to_string(),
                source,
            })
    }
}

/// Everything the running daemon holds.
pub struct Running {
    pub nl: Netlink,
    pub plane: Plane,
    pub firewall: Firewall,
    pub subnet_file: SubnetFile,
    pub telemetry: Arc<telemetry::State>,
    /// The lease keepalive, peer watch and re-acquisition task.
    pub control: JoinHandle<()>,
    pub l2: Option<L2Node>,
    /// `Backend.DirectRouting`'s kernel routes to peers on a shared link.
    pub direct: DirectRoutes,
    /// `--ip-blackhole-route`'s routes for our subnets.
    pub blackholes: Option<Blackholes>,
    pub watchdog: Watchdog,
}

impl Running {
    /// Runs until `stop` (or a failure that stops the daemon: an invalid L2 network, the
    /// workers not restarting), then stops in order.
    pub async fn run(
        mut self,
        stop: &Stop,
        mut subnet_rx: watch::Receiver<SubnetKey>,
        mut l2_starting: Option<L2Starting>,
    ) -> Result<(), DaemonError> {
        let mut check = tokio::time::interval(Duration::from_secs(2));
        check.tick().await;
        let mut control_open = true;
        let outcome = loop {
            let step = tokio::select! {
                started = async { l2_starting.as_mut().expect("guarded").await }, if l2_starting.is_some() => {
                    l2_starting = None;
                    self.l2_started(started)
                }
                sig = stop.requested() => {
                    info!("{sig}: stopping");
                    break Ok(());
                }
                changed = subnet_rx.changed(), if control_open => {
                    // An error: the control task ended (the watchdog reports it).
                    control_open = changed.is_ok();
                    if control_open {
                        let held = *subnet_rx.borrow();
                        self.subnet_changed(held).await;
                    }
                    Ok(())
                }
                _ = self.direct.changed() => {
                    self.direct.sync().await;
                    Ok(())
                }
                _ = check.tick() => self.check().await,
            };
            if let Err(e) = step {
                break Err(e);
            }
        };
        if let Some(t) = l2_starting {
            t.abort();
        }
        self.stop().await;
        outcome
    }

    /// The background L2 start finished: keep the node, or stop the daemon with its error.
    fn l2_started(
        &mut self,
        started: Result<Result<L2Node, L2StartError>, JoinError>,
    ) -> Result<(), DaemonError> {
        match started {
            Ok(Ok(node)) => {
                let _ = self.telemetry.l2.set(node.shared.clone());
                if let Some(peers) = node.link_peers() {
                    let _ = self.telemetry.l2_link_peers.set(peers);
                }
                self.l2 = Some(node);
                Ok(())
            }
            Ok(Err(e)) => {
                error!(error = %e, "cannot start the L2 networks; stopping");
                Err(e.into())
            }
            Err(e) => {
                error!(error = %e, "the L2 start task failed; stopping");
                Err(DaemonError::L2Task(e.to_string()))
            }
        }
    }

    /// Our lease was re-acquired on another subnet: move the devices, the firewall rules
    /// and subnet.env to it.
    async fn subnet_changed(&mut self, held: SubnetKey) {
        self.telemetry
            .control
            .reacquisitions
            .fetch_add(1, Ordering::Relaxed);
        if let Some(sn) = self.plane.move_to(&self.nl, held).await {
            self.firewall.set_subnet(sn);
        }
        if let Some(b) = self.blackholes.as_mut() {
            b.move_to(&self.nl, held).await;
        }
        self.firewall.ensure().await;
        if let Err(e) = self.subnet_file.write(held) {
            error!(error = %e, "cannot rewrite the subnet file");
        }
    }

    /// Every 2 s: the firewall rules, the L2 ports, the direct and blackhole routes, the
    /// device and its route; then the systemd watchdog's verdict.
    async fn check(&mut self) -> Result<(), DaemonError> {
        self.firewall.ensure().await;
        self.repair_l2().await;
        if self.direct.enabled() {
            self.direct.sync().await;
        }
        if let Some(b) = &self.blackholes {
            b.ensure(&self.nl).await;
        }
        let device_ours = self.plane.check(&self.nl, &self.telemetry).await?;
        self.watchdog.tick(self.telemetry.record_health(Health {
            device_ours,
            workers_alive: self.plane.alive(),
            control_alive: !self.control.is_finished(),
        }));
        Ok(())
    }

    /// Recreates the L2 ports when one of their devices vanished.
    async fn repair_l2(&mut self) {
        let Some(node) = self.l2.as_mut() else {
            return;
        };
        if let Some(dev) = node.missing_device(&self.nl).await {
            warn!(device = %dev, "L2 device vanished; recreating the L2 ports");
            self.telemetry
                .control
                .device_repairs
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = node.repair(&self.nl).await {
                error!(error = %e, "cannot recreate the L2 ports; retrying");
            }
        }
    }

    /// The orderly stop: not ready, the control task and the L2 networks ended, the direct
    /// and blackhole routes removed, the workers stopped, the device closed (the lease stays for the next
    /// start).
    async fn stop(mut self) {
        crate::systemd::stopping();
        self.telemetry.ready.store(false, Ordering::Relaxed);
        self.control.abort();
        self.direct.clear().await;
        if let Some(b) = &self.blackholes {
            b.remove(&self.nl).await;
        }
        if let Some(l2) = self.l2 {
            l2.stop().await;
        }
        self.plane.stop();
    }
}
