//! The daemon's lifecycle: resolve the underlay, reach etcd, read (or create) the network
//! config, acquire the lease, bring up the device and the data plane, write subnet.env,
//! then keep the lease and the forwarding table current until SIGTERM/SIGINT.
//!
//! Glue only: every decision it makes is delegated to a tested module.

use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use crate::cli::{Args, BackendArg};
use crate::control::config::{BackendKind, ConfigError, NetworkConfig};
use crate::control::etcd::{
    build_fib, stable_vtep_mac, ControlLoop, EtcdError, EtcdOptions, Registry, RemoteLease,
    LEASE_TTL_SECS,
};
use crate::control::lease::{LeaseAttrs, VxlanData};
use crate::control::subnet_env::{read_previous_subnet, SubnetEnv};
use crate::dataplane::{self, Dataplane};
use crate::encap::Encap;
use crate::fib::{self, Peer};
use crate::host::{HostError, Netlink};
use crate::sys::socket::UnderlaySocket;
use crate::sys::tun::{self, Device};
use crate::telemetry;

/// Why the daemon could not start or had to stop. Each message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid network config in etcd at {key}: {source}")]
    EtcdConfig { key: String, source: ConfigError },
    #[error("invalid --network/--subnet-len: {0}")]
    FlagConfig(ConfigError),
    #[error("--backend {flag} conflicts with the network config in etcd, whose Backend.Type is {etcd}; drop --backend or use --backend {etcd}")]
    BackendMismatch {
        flag: BackendKind,
        etcd: BackendKind,
    },
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("cannot open overlay device {name}: {source} (overlayd needs CAP_NET_ADMIN and /dev/net/tun)")]
    Device {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot open underlay socket on {addr}: {source}")]
    Socket {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot write subnet file {path}: {source}")]
    SubnetFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    L2(#[from] crate::l2::L2StartError),
    #[error(transparent)]
    Firewall(#[from] crate::masq::FirewallError),
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Udp => BackendKind::Udp,
            BackendArg::Vxlan => BackendKind::Vxlan,
            BackendArg::Gre => BackendKind::Gre,
        }
    }
}

/// The overlay device's name for a backend: flannel's names where flannel has the backend.
pub fn device_name(kind: BackendKind, vni: u32) -> String {
    match kind {
        BackendKind::Udp => "flannel0".to_string(),
        BackendKind::Vxlan => format!("flannel.{vni}"),
        BackendKind::Gre => format!("ovgre.{vni}"),
    }
}

/// Sockets to send on: one per queue for udp (flannel sends from its port); a pool bound to
/// ephemeral ports for vxlan, picked by inner flow hash (source-port entropy as the kernel's
/// VXLAN gives it); the single raw socket for gre.
const VXLAN_SEND_SOCKETS: usize = 8;
const SOCKET_BUFFER: usize = 8 << 20;

async fn connect_etcd(opts: &EtcdOptions) -> Result<Registry, DaemonError> {
    let mut delay = Duration::from_millis(500);
    let mut logged = false;
    loop {
        match Registry::connect(opts).await {
            Ok(r) => return Ok(r),
            Err(e @ EtcdError::Tls { .. }) => return Err(e.into()),
            Err(e) => {
                if !logged {
                    warn!(endpoints = ?opts.endpoints, error = %e, "cannot reach etcd yet; retrying");
                    logged = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn network_config(
    reg: &Registry,
    args: &Args,
    from_flags: Option<NetworkConfig>,
) -> Result<NetworkConfig, DaemonError> {
    let key = format!("{}/config", args.etcd.etcd_prefix.trim_end_matches('/'));
    let mut logged = false;
    loop {
        match reg.get_config().await {
            Ok(Some(raw)) => {
                return NetworkConfig::parse(&raw)
                    .map_err(|source| DaemonError::EtcdConfig { key, source })
            }
            Ok(None) => {
                if let Some(cfg) = &from_flags {
                    if reg.create_config(&cfg.to_json()).await? {
                        info!(key = %key, config = %cfg.to_json(), "created the network config");
                    }
                    continue;
                }
                if !logged {
                    warn!(key = %key, "no network config in etcd yet; waiting for one (or start with --network)");
                    logged = true;
                }
            }
            Err(e) => {
                if !logged {
                    warn!(error = %e, "cannot read the network config; retrying");
                    logged = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Maps a lease to a peer of our backend; others are ignored (logged once by the caller).
fn peer_decoder(
    kind: BackendKind,
    vni: u32,
) -> impl Fn(&RemoteLease) -> Option<Peer> + Send + Sync {
    // Called at every forwarding-table rebuild: an invalid lease is warned about once.
    let warned = std::sync::Mutex::new(std::collections::HashSet::new());
    move |l: &RemoteLease| {
        let bt = l.attrs.backend_type.as_deref().unwrap_or("udp");
        let mac = match kind {
            BackendKind::Udp if bt == "udp" => [0; 6],
            BackendKind::Gre if bt == "gre" => [0; 6],
            BackendKind::Vxlan if bt == "vxlan" => {
                let parsed = match l.attrs.backend_data.as_ref() {
                    Some(v) => VxlanData::from_value(v).map_err(|e| e.to_string()),
                    None => Err("no BackendData".to_string()),
                };
                let d = match parsed {
                    Ok(d) => d,
                    Err(e) => {
                        let first = warned
                            .lock()
                            .map(|mut w| w.insert((l.key.clone(), l.mod_revision)))
                            .unwrap_or(true);
                        if first {
                            warn!(key = %l.key, error = %e, "ignoring a vxlan lease with invalid BackendData");
                        }
                        return None;
                    }
                };
                if d.vni != vni {
                    return None;
                }
                d.vtep_mac
            }
            _ => return None,
        };
        Some(Peer::new(l.subnet, l.attrs.public_ip, mac))
    }
}

/// Runs the daemon until a signal; returns an error for anything that prevents it from
/// running at all.
pub async fn run(args: Args) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    // Flags are checked before anything else is touched, so a typo fails fast.
    let from_flags = match args.network {
        Some(net) => {
            let kind = args
                .backend
                .map(BackendKind::from)
                .unwrap_or(BackendKind::Vxlan);
            Some(
                NetworkConfig::from_cli(net, args.subnet_len, kind)
                    .map_err(DaemonError::FlagConfig)?,
            )
        }
        None => None,
    };
    crate::l2::config::check_attachments(&args.l2, &args.l2_vlan)
        .map_err(|e| DaemonError::L2(crate::l2::L2StartError::Conflict(e)))?;
    // Metrics and health first, so that a probe sees "alive, not ready" during startup.
    let telemetry = Arc::new(telemetry::State::default());
    if let Some(addr) = args.telemetry_addr() {
        let listener = telemetry::bind(addr)
            .await
            .map_err(|source| DaemonError::Socket {
                addr: format!("{addr} (--metrics-addr)"),
                source,
            })?;
        if let Some(handle) = telemetry::install_recorder() {
            tokio::spawn(telemetry::serve(listener, handle, telemetry.clone()));
            info!(%addr, "serving /metrics, /healthz and /readyz");
        }
    }
    let nl = Netlink::new()?;
    let underlay = nl.underlay(args.iface.as_deref()).await?;
    let public_ip = args.public_ip.unwrap_or(underlay.addr);
    info!(iface = %underlay.name, addr = %underlay.addr, mtu = underlay.mtu, public_ip = %public_ip, "underlay");

    let opts = args.etcd.options();
    if opts.endpoints.iter().any(|e| e.starts_with("http://")) && opts.cafile.is_none() {
        warn!("talking to etcd without TLS: leases and the network config travel in clear text");
    }
    let registry = connect_etcd(&opts).await?;
    let cfg = network_config(&registry, &args, from_flags).await?;
    if cfg.ipv6.is_some() {
        warn!("EnableIPv6 is set in the network config; overlayd carries the IPv4 overlay only");
    }
    let kind = cfg.backend.kind;
    if let Some(flag) = args.backend.map(BackendKind::from) {
        if flag != kind {
            return Err(DaemonError::BackendMismatch { flag, etcd: kind });
        }
    }
    let vni = cfg.backend.vni;
    if kind == BackendKind::Vxlan && vni > 65535 {
        warn!(
            vni,
            "flannel nodes read the lease's VNI as 16 bits: flanneld peers will ignore this node"
        );
    }
    let mac = stable_vtep_mac(public_ip, vni);
    let encap = match kind {
        BackendKind::Udp => Encap::Udp,
        BackendKind::Vxlan => Encap::Vxlan {
            vni,
            local_mac: mac,
        },
        BackendKind::Gre => Encap::Gre {
            key: Some(vni),
            checksum: cfg.backend.checksum,
            sequence: cfg.backend.sequence,
        },
    };
    let mtu = cfg
        .backend
        .mtu
        .unwrap_or(underlay.mtu.saturating_sub(encap.overhead() as u32));
    let attrs = match kind {
        BackendKind::Udp => LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: None,
            backend_data: None,
        },
        BackendKind::Vxlan => LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("vxlan".into()),
            backend_data: Some(VxlanData { vni, vtep_mac: mac }.to_value()),
        },
        BackendKind::Gre => LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("gre".into()),
            backend_data: Some(serde_json::json!({ "VNI": vni })),
        },
    };

    let previous = read_previous_subnet(&args.subnet_file);
    let acquired = registry.acquire(&cfg, &attrs, previous).await?;
    let subnet = acquired.subnet;

    // Device and host setup.
    let name = device_name(kind, vni);
    let queues = args.queues.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4)
    });
    let offload = !args.no_offload;
    let mut dev = Device::open(&tun::Options {
        name: name.clone(),
        kind: tun::Kind::Tun,
        queues,
        vnet_hdr: offload,
    })
    .map_err(|source| DaemonError::Device {
        name: name.clone(),
        source,
    })?;
    if offload {
        let want = tun::TUN_F_CSUM | tun::TUN_F_TSO4 | tun::TUN_F_TSO6 | tun::TUN_F_TSO_ECN;
        if let Err(e) = dev.set_offload(want) {
            warn!(error = %e, "the kernel refused TUN offloads; packets are handled one by one");
        }
    }
    let tun_addr = subnet.network();
    nl.configure_overlay(&dev.name, tun_addr, mtu, cfg.network)
        .await?;

    // Sockets.
    let sock_err = |addr: String| move |source| DaemonError::Socket { addr, source };
    let (send, recv): (Vec<Arc<UnderlaySocket>>, Vec<Arc<UnderlaySocket>>) = match kind {
        BackendKind::Gre => {
            let s = Arc::new(
                UnderlaySocket::raw_gre(underlay.addr, SOCKET_BUFFER).map_err(sock_err(
                    format!("{} (raw GRE; needs CAP_NET_RAW)", underlay.addr),
                ))?,
            );
            (vec![s.clone()], vec![s])
        }
        BackendKind::Udp | BackendKind::Vxlan => {
            let bind = SocketAddrV4::new(underlay.addr, cfg.backend.port);
            let mut recv = Vec::new();
            for _ in 0..queues {
                recv.push(Arc::new(
                    UnderlaySocket::udp(bind, SOCKET_BUFFER).map_err(sock_err(bind.to_string()))?,
                ));
            }
            let send = if kind == BackendKind::Vxlan {
                let mut v = Vec::new();
                for _ in 0..VXLAN_SEND_SOCKETS {
                    let b = SocketAddrV4::new(underlay.addr, 0);
                    v.push(Arc::new(
                        UnderlaySocket::udp(b, SOCKET_BUFFER).map_err(sock_err(b.to_string()))?,
                    ));
                }
                v
            } else {
                recv.clone()
            };
            (send, recv)
        }
    };
    let gso = offload && send.iter().all(|s| s.probe_gso());
    let gro = offload && !recv[0].is_raw() && recv.iter().all(|s| s.enable_gro());
    info!(device = %dev.name, queues, mtu, offloads = dev.offloads, gso, gro, "data plane configured");

    // Forwarding table, then the workers.
    let fib = fib::shared();
    let decode = peer_decoder(kind, vni);
    match registry.list().await {
        Ok((leases, _)) => {
            let map = leases.into_iter().map(|l| (l.key.clone(), l)).collect();
            fib.store(Arc::new(build_fib(&cfg, subnet, &map, &decode)));
        }
        Err(e) => warn!(error = %e, "cannot list peers yet; the watch will fill them in"),
    }
    let dp_cfg = dataplane::Config {
        encap,
        port: cfg.backend.port,
        tun_addr,
        vnet_hdr: offload,
        gso,
        gro,
        local_mac: mac,
        busy_poll_us: args.busy_poll_us,
    };
    let tun_opts = tun::Options {
        name: name.clone(),
        kind: tun::Kind::Tun,
        queues,
        vnet_hdr: offload,
    };
    let mut qs: Vec<Arc<tun::Queue>> = std::mem::take(&mut dev.queues)
        .into_iter()
        .map(Arc::new)
        .collect();
    let mut dp = Dataplane::start(
        dp_cfg.clone(),
        qs.clone(),
        send.clone(),
        recv.clone(),
        fib.clone(),
    )
    .map_err(|source| DaemonError::Device {
        name: name.clone(),
        source,
    })?;
    let _ = telemetry.backend.set(kind.as_str());
    let _ = telemetry.fib.set(fib.clone());
    let _ = telemetry.offloads.set((dev.offloads != 0, gso, gro));
    set_workers(&telemetry, &dp);

    // Layer-2 networks, beside the routed overlay.
    let l2_opts = crate::l2::L2Options {
        access: args.l2.clone(),
        vlans: args.l2_vlan.clone(),
        trunk_bridge: args.l2_trunk_bridge.clone(),
        offload,
        busy_poll_us: args.busy_poll_us,
    };
    // Started in the background: an L2 network not defined yet must not hold back the
    // routed overlay (and the subnet file the CNI plugin waits for). An invalid one still
    // stops the daemon with its error, from the main loop below.
    let mut l2: Option<crate::l2::L2Node> = None;
    let mut l2_starting = (!l2_opts.is_empty()).then(|| {
        let l3_port = (kind != BackendKind::Gre).then_some(cfg.backend.port);
        let (registry, nl, underlay) = (registry.clone(), nl.clone(), underlay.clone());
        tokio::spawn(async move {
            crate::l2::L2Node::start(&l2_opts, &registry, &nl, &underlay, public_ip, l3_port).await
        })
    });
    let mut failure: Option<DaemonError> = None;

    // flanneld's iptables rules, in place before subnet.env tells the CNI plugin that
    // overlayd masquerades (FLANNEL_IPMASQ=true); re-checked at every check tick.
    let mut firewall = crate::masq::Firewall::new(
        args.ip_masq,
        args.ip_masq_fully_random_disable,
        args.iptables_forward_rules,
        cfg.network,
        subnet,
        Duration::from_secs(args.iptables_resync),
    )
    .await?;
    firewall.ensure().await;
    let env = SubnetEnv {
        network: cfg.network,
        subnet,
        mtu,
        ipmasq: args.ip_masq,
    };
    env.write_atomic(&args.subnet_file)
        .map_err(|source| DaemonError::SubnetFile {
            path: args.subnet_file.display().to_string(),
            source,
        })?;
    telemetry.control.lease_held.store(true, Ordering::Relaxed);
    if acquired.lease_id != 0 {
        telemetry
            .control
            .lease_expiry_unix
            .store(unix_now() + LEASE_TTL_SECS, Ordering::Relaxed);
    }
    telemetry.ready.store(true, Ordering::Relaxed);
    crate::systemd::ready();
    info!(subnet = %subnet, device = %dev.name, subnet_file = %args.subnet_file.display(), "ready");

    // Background control: lease keepalive, peers, re-acquisition.
    let (subnet_tx, mut subnet_rx) = tokio::sync::watch::channel(subnet);
    let keepalive_every =
        Duration::from_secs((args.subnet_lease_renew_margin * 60 / 4).clamp(30, 15 * 60));
    let control = ControlLoop {
        registry: registry.clone(),
        cfg: cfg.clone(),
        attrs,
        acquired,
        fib: fib.clone(),
        decode_peer: Box::new(decode),
        subnet_tx,
        keepalive_every,
        stats: telemetry.clone(),
    };
    let control_task = tokio::spawn(control.run());
    let mut current = subnet;
    let mut check = tokio::time::interval(Duration::from_secs(2));
    check.tick().await;
    // The device overlayd opened, by index: a link that merely took its name is not ours.
    let mut dev_index = nl.link(&name).await.ok().flatten().map(|(i, _)| i);
    let mut watchdog = crate::systemd::Watchdog::from_env();

    loop {
        tokio::select! {
            started = async { l2_starting.as_mut().expect("guarded").await }, if l2_starting.is_some() => {
                l2_starting = None;
                match started {
                    Ok(Ok(node)) => {
                        let _ = telemetry.l2.set(node.shared.clone());
                        l2 = Some(node);
                    }
                    Ok(Err(e)) => {
                        error!(error = %e, "cannot start the L2 networks; stopping");
                        failure = Some(e.into());
                        break;
                    }
                    Err(e) => {
                        error!(error = %e, "the L2 start task failed; stopping");
                        failure = Some(DaemonError::L2(crate::l2::L2StartError::Conflict(e.to_string())));
                        break;
                    }
                }
            }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            changed = subnet_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                current = *subnet_rx.borrow();
                telemetry.control.reacquisitions.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = nl.configure_overlay(&name, current.network(), mtu, cfg.network).await {
                    error!(error = %e, "cannot move the device to the re-acquired subnet");
                }
                firewall.set_subnet(current);
                firewall.ensure().await;
                let env = SubnetEnv { network: cfg.network, subnet: current, mtu, ipmasq: args.ip_masq };
                if let Err(e) = env.write_atomic(&args.subnet_file) {
                    error!(error = %e, "cannot rewrite the subnet file");
                }
            }
            _ = check.tick() => {
                firewall.ensure().await;
                if let Some(node) = l2.as_mut() {
                    if let Some(dev) = node.missing_device(&nl).await {
                        warn!(device = %dev, "L2 device vanished; recreating the L2 ports");
                        telemetry.control.device_repairs.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = node.repair(&nl).await {
                            error!(error = %e, "cannot recreate the L2 ports; retrying");
                        }
                    }
                }
                // The device or its route deleted under us (host network scripts do that):
                // recreate them; the forwarding table is untouched, so every peer is kept.
                let mut device_ours = false;
                match nl.link(&name).await {
                    Ok(Some((index, _))) if Some(index) != dev_index => {
                        error!(device = %name, index, "a link that overlayd did not create holds the overlay device's name; remove it so that the device can be recreated");
                    }
                    Ok(Some((index, _))) => {
                        device_ours = true;
                        if let Ok(false) = nl.has_route(cfg.network, index).await {
                            warn!(device = %name, network = %cfg.network, "overlay route vanished; restoring it");
                            telemetry.control.device_repairs.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = nl.configure_overlay(&name, current.network(), mtu, cfg.network).await {
                                error!(error = %e, "cannot restore the overlay route");
                            }
                        }
                    }
                    Ok(None) => {
                        warn!(device = %name, "overlay device vanished; recreating it with every peer's state");
                        telemetry.control.device_repairs.fetch_add(1, Ordering::Relaxed);
                        telemetry.ready.store(false, Ordering::Relaxed);
                        dp.stop();
                        drop(std::mem::take(&mut qs));
                        match reopen(&tun_opts, offload, &nl, current, mtu, cfg.network).await {
                            Ok(new_qs) => {
                                qs = new_qs;
                                dev_index = nl.link(&name).await.ok().flatten().map(|(i, _)| i);
                                device_ours = dev_index.is_some();
                            }
                            Err(e) => error!(error = %e, "cannot recreate the overlay device; retrying"),
                        }
                        match Dataplane::start(dp_cfg.clone(), qs.clone(), send.clone(), recv.clone(), fib.clone()) {
                            Ok(d) => {
                                dp = d;
                                set_workers(&telemetry, &dp);
                                telemetry.ready.store(!qs.is_empty(), Ordering::Relaxed);
                            }
                            Err(e) => {
                                error!(error = %e, "cannot restart the data plane");
                                return Err(DaemonError::Device { name: name.clone(), source: e });
                            }
                        }
                    }
                    Err(e) => debug!(error = %e, "cannot check the overlay device"),
                }
                watchdog.tick(crate::systemd::Health {
                    device_ours,
                    workers_alive: dp.alive(),
                    control_alive: !control_task.is_finished(),
                });
            }
        }
    }
    if let Some(t) = l2_starting.take() {
        t.abort();
    }
    crate::systemd::stopping();
    telemetry.ready.store(false, Ordering::Relaxed);
    control_task.abort();
    if let Some(l2) = l2 {
        l2.stop().await;
    }
    let totals = dp.totals();
    dp.stop();
    drop(qs);
    drop(dev);
    info!(
        tx_packets = totals.tx_packets,
        rx_packets = totals.rx_packets,
        drops = totals.drops.iter().sum::<u64>(),
        "stopped; device and routes removed, lease kept for the next start"
    );
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn set_workers(t: &telemetry::State, dp: &Dataplane) {
    if let Ok(mut w) = t.workers.lock() {
        *w = Some(dp.stats.clone());
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Opens the device again after it vanished, with the same options, and re-applies the
/// host setup. Returns no queue when it fails (the data plane then idles until next check).
async fn reopen(
    opts: &tun::Options,
    offload: bool,
    nl: &Netlink,
    subnet: Ipv4Net,
    mtu: u32,
    network: Ipv4Net,
) -> Result<Vec<Arc<tun::Queue>>, DaemonError> {
    let mut dev = Device::open(opts).map_err(|source| DaemonError::Device {
        name: opts.name.clone(),
        source,
    })?;
    if offload {
        let want = tun::TUN_F_CSUM | tun::TUN_F_TSO4 | tun::TUN_F_TSO6 | tun::TUN_F_TSO_ECN;
        if let Err(e) = dev.set_offload(want) {
            warn!(error = %e, "the kernel refused TUN offloads on the recreated device");
        }
    }
    nl.configure_overlay(&dev.name, subnet.network(), mtu, network)
        .await?;
    Ok(std::mem::take(&mut dev.queues)
        .into_iter()
        .map(Arc::new)
        .collect())
}
