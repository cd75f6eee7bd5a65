//! flannel's `wireguard` backend in userspace: the node's key ([`keyfile`]), the protocol
//! engine over boringtun ([`engine`]), the data path thread ([`worker`]) and [`serve`], the
//! start-up and main loop the daemon hands a wireguard network to.
//!
//! As flanneld: the lease carries `BackendType: "wireguard"` and the node's public key; the
//! device is `flannel-wg` with the underlay MTU less 80; each peer's AllowedIPs are its
//! lease's subnet and its endpoint its PublicIP and port. This first landing carries IPv4
//! networks (IPv6 and the separate `flannel-wg-v6` device are refused with a clear error).

pub mod engine;
pub mod keyfile;
pub mod peers;
pub mod worker;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::control::config::NetworkConfig;
use crate::control::etcd::{Acquired, ControlLoop, LeaseSink, Registry, RemoteLease};
use crate::control::lease::{LeaseAttrs, WireguardData};
use crate::control::subnet_env::{read_previous, SubnetEnv};
use crate::fib;
use crate::host::{HostError, Netlink, Underlay};
use crate::sys::socket::UnderlaySocket;
use crate::sys::tun::{self, Device};
use engine::{Engine, Identity, WgDrop};
use peers::KeyBook;
use worker::{Parts, Worker};

/// The device, as flanneld names it.
pub const DEVICE: &str = "flannel-wg";
/// What WireGuard over IPv6 adds to a packet (flanneld subtracts it for both families):
/// outer IPv6 40 + UDP 8 + WireGuard 32.
pub const OVERHEAD: u32 = 80;

/// Why the wireguard node could not start; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    #[error("the wireguard backend of overlayd carries IPv4 networks only for now, but the network config enables IPv6; set EnableIPv6 false or use the vxlan backend for IPv6")]
    Ipv6,
    #[error("{0}")]
    Instance(String),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("cannot open the wireguard device {DEVICE} or its socket on port {port}: {source}")]
    Io { port: u16, source: std::io::Error },
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

/// Runs a wireguard node until `stop` resolves: key, lease, device, socket, data path,
/// subnet.env, then the lease and peers kept current by the control loop.
pub async fn serve(s: Start<'_>, stop: &crate::lifecycle::Stop) -> Result<(), WgError> {
    let cfg = &s.cfg;
    if cfg.ipv6.is_some() {
        return Err(WgError::Ipv6);
    }
    let port = cfg.backend.port;
    let (engine, attrs) = identity(cfg, s.public_ip)?;
    let _instance = crate::lifecycle::claim(&s.run_dir, DEVICE, s.nl)
        .await
        .map_err(WgError::Instance)?;
    let acquired = s
        .registry
        .acquire_with_retry(cfg, &attrs, read_previous(&s.subnet_file))
        .await;
    let mtu = cfg
        .backend
        .mtu
        .unwrap_or(s.underlay.mtu)
        .saturating_sub(OVERHEAD);
    let fib = fib::shared();
    let keys = KeyBook::default();
    let stats = engine.stats.clone();
    let _worker = start_data_path(&s, engine, &fib, &keys, acquired.subnet, mtu).await?;
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
    let env = SubnetEnv::for_lease(cfg, acquired.key(), mtu, s.ip_masq);
    env.write_atomic(&s.subnet_file)
        .map_err(|source| WgError::SubnetFile {
            path: s.subnet_file.display().to_string(),
            source,
        })?;
    let (subnet_tx, _subnet_rx) = tokio::sync::watch::channel(acquired.key());
    let control = ControlLoop {
        registry: s.registry.clone(),
        cfg: cfg.clone(),
        attrs,
        acquired,
        sink: Box::new(WgSink {
            tables: crate::peers::Tables::new(
                crate::backend::Backend::new(&cfg.backend, s.public_ip),
                false,
                cfg.clone(),
                fib.clone(),
                fib::shared6(),
            ),
            keys,
            subnets: HashMap::new(),
        }),
        subnet_tx,
        keepalive_every: s.keepalive_every,
        stats: s.telemetry.control.clone(),
    };
    let control_task = tokio::spawn(control.run());
    let t = &s.telemetry;
    let _ = t.backend.set("wireguard");
    let _ = t.fib.set(fib);
    t.control.lease_held.store(true, Ordering::Relaxed);
    t.ready.store(true, Ordering::Relaxed);
    stop.serving();
    crate::systemd::ready();
    info!(device = DEVICE, mtu, port, subnet_file = %s.subnet_file.display(), "ready (wireguard)");
    let mut check = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            sig = stop.requested() => { info!("{sig}: stopping"); break; }
            _ = check.tick() => { firewall.ensure().await; }
        }
    }
    crate::systemd::stopping();
    t.ready.store(false, Ordering::Relaxed);
    control_task.abort();
    let drops: Vec<String> = WgDrop::ALL
        .iter()
        .map(|&w| format!("{}={}", w.as_str(), stats.dropped(w)))
        .collect();
    info!(
        tx_packets = stats.tx_packets.load(Ordering::Relaxed),
        rx_packets = stats.rx_packets.load(Ordering::Relaxed),
        drops = %drops.join(","),
        "stopped; device removed, lease and key kept for the next start"
    );
    Ok(())
}

/// The node's key (from the key file), its engine and what its lease says about it.
fn identity(cfg: &NetworkConfig, public_ip: Ipv4Addr) -> Result<(Engine, LeaseAttrs), WgError> {
    let wg = cfg.backend.wireguard.clone().unwrap_or_default();
    let key_path = keyfile::path_from_env();
    let engine = Engine::new(Identity {
        secret: keyfile::load_or_create(&key_path)?,
        psk: wg.psk,
        keepalive: wg.keepalive,
    });
    let data = WireguardData {
        public_key: engine.public_key(),
        port: cfg.backend.port,
    };
    info!(key_file = %key_path.display(), public_key = %crate::control::lease::encode_key(&data.public_key), port = data.port, "wireguard identity");
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: Some("wireguard".into()),
        backend_data: Some(data.to_value()),
        backend_v6_data: None,
    };
    Ok((engine, attrs))
}

/// Opens `flannel-wg` (address, MTU, route to the network) and the `ListenPort` socket,
/// and starts the data path thread on them.
async fn start_data_path(
    s: &Start<'_>,
    engine: Engine,
    fib: &fib::SharedFib,
    keys: &KeyBook,
    subnet: ipnet::Ipv4Net,
    mtu: u32,
) -> Result<Worker, WgError> {
    let port = s.cfg.backend.port;
    let io = |source| WgError::Io { port, source };
    let mut dev = Device::open(&tun::Options {
        name: DEVICE.into(),
        kind: tun::Kind::Tun,
        queues: 1,
        vnet_hdr: false,
        tunnel_hdr: false,
    })
    .map_err(io)?;
    s.nl.configure_overlay(DEVICE, subnet.network(), mtu, s.cfg.network)
        .await?;
    let bind = SocketAddr::new(IpAddr::V4(s.underlay.addr), port);
    let sock = Arc::new(UnderlaySocket::udp(bind, crate::backend::SOCKET_BUFFER).map_err(io)?);
    let tun = dev
        .queues
        .pop()
        .ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
    Worker::start(Parts {
        engine,
        tun,
        sock,
        fib: fib.clone(),
        keys: keys.clone(),
        port,
    })
    .map_err(io)
}

/// The control loop's sink on a wireguard node: the forwarding tables ([`crate::peers`],
/// which keeps a lease when [`crate::backend::Backend::peer_mac`] finds readable wireguard
/// data in it), and each kept lease's key and port in the key book the data path reads when
/// the table changes.
struct WgSink {
    tables: crate::peers::Tables,
    keys: KeyBook,
    /// Each lease key's subnet, to take its entry out of the key book when it goes.
    subnets: HashMap<String, ipnet::Ipv4Net>,
}

impl WgSink {
    fn learn(&mut self, l: &RemoteLease) {
        if l.attrs.backend_type.as_deref() != Some("wireguard") {
            return;
        }
        if let Ok(d) = l.attrs.wireguard_data(false) {
            self.subnets.insert(l.key.clone(), l.subnet);
            if let Ok(mut k) = self.keys.lock() {
                k.insert(l.subnet, d);
            }
        }
    }

    fn forget(&mut self, key: &str) {
        if let Some(sn) = self.subnets.remove(key) {
            if let Ok(mut k) = self.keys.lock() {
                k.remove(&sn);
            }
        }
    }
}

impl LeaseSink for WgSink {
    fn reset(&mut self, leases: Vec<RemoteLease>) {
        self.subnets.clear();
        if let Ok(mut k) = self.keys.lock() {
            k.clear();
        }
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
    }
}
