//! flannel's `wireguard` backend in userspace: the node's key ([`keyfile`]), the protocol
//! engine over boringtun ([`engine`]), the devices `Backend.Mode` asks for and our lease
//! ([`layout`]), each device's peers ([`peers`]), the data path thread ([`worker`]), the
//! figures on `/metrics` ([`metrics`]) and [`serve`], the start-up and main loop the
//! daemon hands a wireguard network to.
//!
//! As flanneld: the lease carries `BackendType: "wireguard"` and the node's public key and
//! port (`BackendData` for IPv4, `BackendV6Data` for IPv6); the devices are `flannel-wg`
//! and, in `separate` mode with IPv6, `flannel-wg-v6`, with the underlay MTU less 80; each
//! peer's AllowedIPs are its lease's subnets and its endpoint its PublicIP (or PublicIPv6)
//! and port. One engine and one data path thread per device, all with the node's one key.

pub mod engine;
pub mod keyfile;
pub mod layout;
pub mod metrics;
pub mod peers;
pub mod worker;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tracing::{error, info};

use crate::control::config::NetworkConfig;
use crate::control::etcd::{Acquired, ControlLoop, LeaseSink, Registry, RemoteLease};
use crate::control::lease::{LeaseAttrs, SubnetKey};
use crate::control::subnet_env::{read_previous, SubnetEnv};
use crate::counters::DropCounters;
use crate::fib;
use crate::host::{HostError, Netlink, Underlay};
use crate::sys::socket::UnderlaySocket;
use crate::sys::tun::{self, Device};
use engine::{Engine, Identity, Stats, WgDrop};
use layout::Layout;
use peers::{KeyBook, SharedSpecs};
use worker::{Parts, Worker};

pub use layout::{DEVICE, DEVICE_V6};

/// What WireGuard over IPv6 adds to a packet (flanneld subtracts it for both families):
/// outer IPv6 40 + UDP 8 + WireGuard 32.
pub const OVERHEAD: u32 = 80;

/// Why the wireguard node could not start; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    #[error("{0}")]
    Mode(String),
    #[error("{0}")]
    Instance(String),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("cannot open the wireguard device {device} or its socket on {bind}: {source}")]
    Io {
        device: &'static str,
        bind: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Firewall(#[from] crate::masq::FirewallError),
    #[error("cannot write subnet file {path}: {source}")]
    SubnetFile {
        path: String,
        source: std::io::Error,
    },
}

/// What the daemon resolved before handing over, and the flags that matter here.
pub struct Start<'a> {
    pub cfg: NetworkConfig,
    pub registry: Registry,
    pub nl: &'a Netlink,
    pub underlay: &'a Underlay,
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6` (IPv6 enabled).
    pub public_ipv6: Option<Ipv6Addr>,
    /// The underlay addresses this node binds: IPv4 (IPv4 enabled), IPv6 (IPv6 enabled and
    /// an IPv6 underlay).
    pub underlay4: Option<Ipv4Addr>,
    pub underlay6: Option<Ipv6Addr>,
    pub run_dir: PathBuf,
    pub subnet_file: PathBuf,
    /// `--ip-masq`, `--ip-masq-fully-random-disable`, `--iptables-forward-rules`,
    /// `--iptables-resync`: flanneld's iptables rules, as the other backends install them.
    pub ip_masq: bool,
    pub fully_random_disable: bool,
    pub forward_rules: bool,
    pub iptables_resync: Duration,
    pub keepalive_every: Duration,
    pub telemetry: Arc<crate::telemetry::State>,
}

/// One device as it runs: its layout, the peer list its thread reads, its engine's figures
/// and its data path's drops.
struct Running {
    layout: Layout,
    specs: SharedSpecs,
    stats: Arc<Stats>,
    drops: Arc<DropCounters>,
    _worker: Worker,
}

/// Runs a wireguard node until `stop` resolves: key, lease, devices, sockets, data paths,
/// subnet.env, then the lease and peers kept current by the control loop.
pub async fn serve(s: Start<'_>, stop: &crate::lifecycle::Stop) -> Result<(), WgError> {
    let cfg = &s.cfg;
    let layouts = layout::layouts(cfg, s.underlay4, s.underlay6).map_err(WgError::Mode)?;
    let (id, attrs) = identity(&s)?;
    let mut _instances = Vec::new();
    for l in &layouts {
        let claim = crate::lifecycle::claim(&s.run_dir, l.name, s.nl).await;
        _instances.push(claim.map_err(WgError::Instance)?);
    }
    let acquired = s
        .registry
        .acquire_with_retry(cfg, &attrs, read_previous(&s.subnet_file))
        .await;
    let mtu = cfg
        .backend
        .mtu
        .unwrap_or(s.underlay.mtu)
        .saturating_sub(OVERHEAD);
    let mut devices = Vec::new();
    for layout in layouts {
        devices.push(start_device(&s, layout, &id, &acquired, mtu).await?);
    }
    let mut firewall = crate::masq::Firewall::new(
        s.ip_masq,
        s.fully_random_disable,
        s.forward_rules,
        cfg.network,
        acquired.subnet,
        None,
        s.iptables_resync,
    )
    .await?;
    firewall.ensure().await;
    write_subnet_env(&s, acquired.key(), mtu)?;
    let (control_loop, mut subnet_rx) = control(&s, attrs, acquired, &devices);
    let control_task = tokio::spawn(control_loop.run());
    publish_telemetry(&s.telemetry, &devices);
    stop.serving();
    crate::systemd::ready();
    let names: Vec<&str> = devices.iter().map(|d| d.layout.name).collect();
    info!(devices = ?names, mtu, subnet_file = %s.subnet_file.display(), "ready (wireguard)");
    let mut check = tokio::time::interval(Duration::from_secs(2));
    let mut control_open = true;
    loop {
        tokio::select! {
            sig = stop.requested() => { info!("{sig}: stopping"); break; }
            changed = subnet_rx.changed(), if control_open => {
                // An error: the control task ended.
                control_open = changed.is_ok();
                if control_open {
                    let held = *subnet_rx.borrow_and_update();
                    moved(&s, &devices, held, mtu, &mut firewall).await;
                }
            }
            _ = check.tick() => { firewall.ensure().await; }
        }
    }
    crate::systemd::stopping();
    s.telemetry.ready.store(false, Ordering::Relaxed);
    control_task.abort();
    devices.iter().for_each(log_totals);
    Ok(())
}

/// The node's key (from the key file) and what its lease says about it.
fn identity(s: &Start<'_>) -> Result<(Identity, LeaseAttrs), WgError> {
    let wg = s.cfg.backend.wireguard.clone().unwrap_or_default();
    let key_path = keyfile::path_from_env();
    let id = Identity {
        secret: keyfile::load_or_create(&key_path)?,
        psk: wg.psk,
        keepalive: wg.keepalive,
    };
    let public_key = *boringtun::x25519::PublicKey::from(&id.secret).as_bytes();
    info!(key_file = %key_path.display(), public_key = %crate::control::lease::encode_key(&public_key), mode = wg.mode.as_str(), "wireguard identity");
    let attrs = layout::lease_attrs(&s.cfg, public_key, s.public_ip, s.public_ipv6);
    Ok((id, attrs))
}

/// Opens one device (addresses, MTU, routes to the networks it carries) and its socket,
/// and starts its data path thread with an engine of its own.
async fn start_device(
    s: &Start<'_>,
    layout: Layout,
    id: &Identity,
    acquired: &Acquired,
    mtu: u32,
) -> Result<Running, WgError> {
    let bind = SocketAddr::new(layout.bind, layout.port);
    let io = |source| WgError::Io {
        device: layout.name,
        bind,
        source,
    };
    let mut dev = Device::open(&tun::Options {
        name: layout.name.into(),
        kind: tun::Kind::Tun,
        queues: 1,
        vnet_hdr: true,
        tunnel_hdr: false,
    })
    .map_err(io)?;
    if let Err(e) = crate::datapath::enable_offloads(&mut dev) {
        tracing::warn!(device = layout.name, error = %e, "the kernel refused TUN offloads; packets are handled one by one");
    }
    configure(s, &layout, acquired.key(), mtu).await?;
    let sock = Arc::new(UnderlaySocket::udp(bind, crate::backend::SOCKET_BUFFER).map_err(io)?);
    let tun = dev
        .queues
        .pop()
        .ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
    let engine = Engine::new(id.clone());
    let stats = engine.stats.clone();
    let specs = SharedSpecs::default();
    let drops = Arc::new(DropCounters::default());
    let worker = Worker::start(Parts {
        engine,
        tun,
        sock,
        peers: specs.clone(),
        drops: drops.clone(),
    })
    .map_err(io)?;
    Ok(Running {
        layout,
        specs,
        stats,
        drops,
        _worker: worker,
    })
}

/// The device's address and route for each family it carries, as flanneld's `Configure`
/// and `ConfigureV6` give them, for the subnets of `held`; its MTU. Idempotent: also the
/// move to a re-acquired subnet ([`moved`]).
async fn configure(s: &Start<'_>, l: &Layout, held: SubnetKey, mtu: u32) -> Result<(), HostError> {
    match (l.v4, held.ipv4) {
        (true, Some(sn)) => {
            s.nl.configure_overlay(l.name, sn.network(), mtu, s.cfg.network)
                .await?
        }
        _ => s.nl.link_up(l.name, mtu).await?,
    };
    let v6 = s.cfg.ipv6.as_ref().zip(held.ipv6);
    if let (true, Some((c6, sn6))) = (l.v6, v6) {
        s.nl.configure_overlay6(l.name, sn6.network(), c6.network, None)
            .await?;
    }
    Ok(())
}

/// subnet.env (written atomically) for the lease we hold: at start and after a move.
fn write_subnet_env(s: &Start<'_>, held: SubnetKey, mtu: u32) -> Result<(), WgError> {
    SubnetEnv::for_lease(&s.cfg, held, mtu, s.ip_masq)
        .write_atomic(&s.subnet_file)
        .map_err(|source| WgError::SubnetFile {
            path: s.subnet_file.display().to_string(),
            source,
        })
}

/// Our lease was re-acquired (the control loop does that when it was deleted or expired,
/// on another subnet when ours was taken meanwhile): every device's addresses and routes,
/// the firewall rules and subnet.env follow, as `daemon::running` moves the other
/// backends' device. The data path threads need nothing: the peers' AllowedIPs come
/// from the leases, our own subnet is not among them.
async fn moved(
    s: &Start<'_>,
    devices: &[Running],
    held: SubnetKey,
    mtu: u32,
    firewall: &mut crate::masq::Firewall,
) {
    let reacquired = &s.telemetry.control.reacquisitions;
    reacquired.fetch_add(1, Ordering::Relaxed);
    for d in devices {
        if let Err(e) = configure(s, &d.layout, held, mtu).await {
            error!(device = d.layout.name, error = %e, "cannot move the device to the re-acquired subnet");
        }
    }
    if let Some(sn) = held.ipv4 {
        firewall.set_subnet(sn);
    }
    firewall.ensure().await;
    match write_subnet_env(s, held, mtu) {
        Ok(()) => info!(subnet = %held, "devices and subnet.env follow the re-acquired lease"),
        Err(e) => error!(error = %e, "cannot rewrite the subnet file"),
    }
}

/// The control loop over the leases, handing them to a [`WgSink`] for `devices`, and the
/// receiver of our subnet whenever it re-acquires our lease.
fn control(
    s: &Start<'_>,
    attrs: LeaseAttrs,
    acquired: Acquired,
    devices: &[Running],
) -> (ControlLoop, tokio::sync::watch::Receiver<SubnetKey>) {
    let cfg = &s.cfg;
    let (fib, fib6) = (fib::shared(), fib::shared6());
    let _ = s.telemetry.fib.set(fib.clone());
    let _ = s.telemetry.fib6.set(fib6.clone());
    let (subnet_tx, subnet_rx) = tokio::sync::watch::channel(acquired.key());
    let control = ControlLoop {
        registry: s.registry.clone(),
        cfg: cfg.clone(),
        attrs,
        acquired,
        sink: Box::new(WgSink {
            tables: crate::peers::Tables::new(
                crate::backend::Backend::new(&cfg.backend, s.public_ip),
                s.underlay6.is_some(),
                cfg.clone(),
                fib.clone(),
                fib6.clone(),
            ),
            fib,
            fib6,
            keys: KeyBook::new(),
            by_lease: HashMap::new(),
            devices: devices
                .iter()
                .map(|d| (d.layout.clone(), d.specs.clone()))
                .collect(),
        }),
        subnet_tx,
        keepalive_every: s.keepalive_every,
        stats: s.telemetry.control.clone(),
    };
    (control, subnet_rx)
}

/// The node is ready: its backend, its devices' figures on `/metrics`.
fn publish_telemetry(t: &crate::telemetry::State, devices: &[Running]) {
    let figures: Vec<metrics::Figures> = devices
        .iter()
        .map(|d| metrics::Figures {
            device: d.layout.name,
            stats: d.stats.clone(),
            drops: d.drops.clone(),
        })
        .collect();
    let _ = t.backend.set("wireguard");
    let _ = t.extra.set(crate::telemetry::Extra(Box::new(move || {
        metrics::refresh(&figures)
    })));
    t.control.lease_held.store(true, Ordering::Relaxed);
    t.ready.store(true, Ordering::Relaxed);
}

fn log_totals(d: &Running) {
    let st = &d.stats;
    let drops: Vec<String> = WgDrop::ALL
        .iter()
        .map(|&w| format!("{}={}", w.as_str(), st.dropped(w)))
        .collect();
    info!(
        device = d.layout.name,
        tx_packets = st.tx_packets.load(Ordering::Relaxed),
        rx_packets = st.rx_packets.load(Ordering::Relaxed),
        handshakes = st.handshakes.load(Ordering::Relaxed),
        drops = %drops.join(","),
        "stopped; device removed, lease and key kept for the next start"
    );
}

/// The control loop's sink on a wireguard node: the forwarding tables ([`crate::peers`],
/// which keep the current leases: in the network, the oldest winning a conflict), each
/// wireguard lease's keys in the key book, and after each batch every device's peer list
/// computed from both ([`peers::peer_specs`]) and handed to its thread.
struct WgSink {
    tables: crate::peers::Tables,
    fib: fib::SharedFib,
    fib6: fib::SharedFib6,
    keys: KeyBook,
    /// Each lease key's entries in the key book, to take them out when it goes.
    by_lease: HashMap<String, Vec<(IpNet, IpAddr)>>,
    devices: Vec<(Layout, SharedSpecs)>,
}

impl WgSink {
    fn learn(&mut self, l: &RemoteLease) {
        let entries = peers::book_entries(l);
        self.by_lease
            .insert(l.key.clone(), entries.iter().map(|(n, _)| *n).collect());
        self.keys.extend(entries);
    }

    fn forget(&mut self, key: &str) {
        for net in self.by_lease.remove(key).unwrap_or_default() {
            self.keys.remove(&net);
        }
    }
}

impl LeaseSink for WgSink {
    fn reset(&mut self, leases: Vec<RemoteLease>) {
        self.by_lease.clear();
        self.keys.clear();
        leases.iter().for_each(|l| self.learn(l));
        self.tables.reset(leases);
    }

    fn put(&mut self, lease: RemoteLease) {
        self.forget(&lease.key);
        self.learn(&lease);
        self.tables.put(lease);
    }

    fn remove(&mut self, key: &str) {
        self.forget(key);
        self.tables.remove(key);
    }

    fn publish(&mut self, own: &Acquired) {
        self.tables.publish(own);
        let (fib, fib6) = (self.fib.load(), self.fib6.load());
        for (layout, specs) in &self.devices {
            specs.store(Arc::new(peers::peer_specs(layout, &fib, &fib6, &self.keys)));
        }
    }
}
