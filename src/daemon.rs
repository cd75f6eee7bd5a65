//! The daemon's lifecycle: resolve the underlay, reach etcd, read (or create) the network
//! config, acquire the lease, bring up the device and the data plane, write subnet.env,
//! then keep the lease and the forwarding table current until SIGTERM/SIGINT.
//!
//! Glue only: every decision it makes is delegated to a tested module.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, SocketError, Sockets};
use crate::cli::{Args, BackendArg};
use crate::control::config::{BackendKind, ConfigError, NetworkConfig};
use crate::control::etcd::{
    build_fib, ControlLoop, EtcdError, EtcdOptions, PeerDecoder, Registry, RemoteLease,
    LEASE_TTL_SECS,
};
use crate::control::subnet_env::{read_previous, SubnetEnv};
use crate::datapath;
use crate::fib::{self, Peer};
use crate::gso_tap::{self, GsoTap};
use crate::host::{HostError, Netlink};
use crate::l3::{self, Dataplane};
use crate::sys::tun::{self, Device};
use crate::telemetry;

/// Why the daemon could not start or had to stop. Each message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid network config in etcd at {key}: {source}")]
    EtcdConfig { key: String, source: ConfigError },
    #[error("invalid --network/--subnet-len: {0}")]
    FlagConfig(ConfigError),
    #[error("the network config in etcd at {key} has EnableIPv4 false (IPv6 only), but overlayd's data plane does not carry IPv6 yet; use a dual-stack config (EnableIPv4 true with EnableIPv6) or keep flanneld on this node")]
    Ipv6Only { key: String },
    #[error("the network config enables IPv6 but interface {iface} has no usable global IPv6 address: give --public-ipv6, or --iface an interface (or IPv6 address) that has one")]
    NoIpv6Address { iface: String },
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
    #[error(transparent)]
    Sockets(#[from] SocketError),
    #[error(
        "--tunnel-gso on, but {0}; use --tunnel-gso auto to fall back to userspace segmentation"
    )]
    TunnelGso(String),
    #[error("cannot write subnet file {path}: {source}")]
    SubnetFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Instance(String),
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

/// The etcd registry: the endpoints and TLS files are checked here (an error names the bad
/// one); the members are reached on first use, each call failing over between them.
async fn connect_etcd(opts: &EtcdOptions) -> Result<Registry, DaemonError> {
    let r = Registry::connect(opts).await?;
    info!(endpoints = ?opts.endpoints, "etcd endpoints");
    Ok(r)
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
                    match reg.create_config(&cfg.to_json()).await {
                        Ok(true) => {
                            info!(key = %key, config = %cfg.to_json(), "created the network config");
                            continue;
                        }
                        Ok(false) => continue,
                        // etcd unreachable or without a leader: retried like the read.
                        Err(e) => {
                            if !logged {
                                warn!(error = %e, "cannot create the network config; retrying");
                                logged = true;
                            }
                        }
                    }
                } else if !logged {
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

/// Maps a lease to a peer of our backend; others are ignored, and an invalid lease of
/// ours is warned about once (the decoder runs at every forwarding-table rebuild).
fn peer_decoder(backend: Backend) -> PeerDecoder {
    let warned = std::sync::Mutex::new(std::collections::HashSet::new());
    Box::new(move |l: &RemoteLease| match backend.peer_mac(&l.attrs) {
        Ok(Some(mac)) => Some(Peer::new(l.subnet, l.attrs.public_ip, mac)),
        Ok(None) => None,
        Err(e) => {
            let first = warned
                .lock()
                .map(|mut w| w.insert((l.key.clone(), l.mod_revision)))
                .unwrap_or(true);
            if first {
                warn!(key = %l.key, backend = %backend.kind.as_str(), error = %e, "ignoring a lease with invalid BackendData");
            }
            None
        }
    })
}

/// Runs the daemon until a signal; returns an error for anything that prevents it from
/// running at all. A signal during start-up (waiting for etcd, the config, a lease, a
/// device, a back-off) ends it at once: the start-up is dropped with what it made.
pub async fn run(args: Args) -> Result<(), DaemonError> {
    let stop = crate::lifecycle::Stop::install().map_err(DaemonError::Signals)?;
    match stop.race(serve(args, stop.clone())).await {
        Ok(r) => r,
        Err(sig) => {
            info!(
                signal = sig,
                "stopping during start-up; the lease (if any) is kept, a device opened so far goes with the process"
            );
            Ok(())
        }
    }
}

/// The daemon proper: start-up, then the main loop until `stop`.
async fn serve(args: Args, stop: crate::lifecycle::Stop) -> Result<(), DaemonError> {
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
    if !cfg.enable_ipv4 {
        return Err(DaemonError::Ipv6Only {
            key: format!("{}/config", args.etcd.etcd_prefix.trim_end_matches('/')),
        });
    }
    let public_ipv6 =
        match &cfg.ipv6 {
            None => None,
            Some(_) => Some(args.public_ipv6.or(underlay.addr6).ok_or_else(|| {
                DaemonError::NoIpv6Address {
                    iface: underlay.name.clone(),
                }
            })?),
        };
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
    let backend = Backend::new(&cfg.backend, public_ip);
    let mtu = cfg
        .backend
        .mtu
        .unwrap_or_else(|| backend.inner_mtu(underlay.mtu));
    let mut attrs = backend.lease_attrs(public_ip);
    if let Some(ip6) = public_ipv6 {
        attrs = attrs.with_ipv6(ip6, backend.lease_v6_data(ip6));
    }

    // One daemon per host and device: refuse before touching the lease or the device.
    let name = backend.device_name();
    let _instance = crate::lifecycle::claim(&args.run_dir, &name, &nl)
        .await
        .map_err(DaemonError::Instance)?;

    let previous = read_previous(&args.subnet_file);
    let acquired = registry.acquire_with_retry(&cfg, &attrs, previous).await;
    let subnet = acquired.subnet;
    if let (Some(sn6), Some(ip6)) = (acquired.ipv6_subnet, public_ipv6) {
        warn!(ipv6_subnet = %sn6, public_ipv6 = %ip6, "dual stack: this node holds an IPv6 subnet and writes it to subnet.env for pods, but overlayd does not forward IPv6 between nodes yet; IPv6 packets to and from other nodes are dropped (IPv4 is carried as usual)");
    }

    // Device and host setup.
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
        tunnel_hdr: false,
    })
    .map_err(|source| DaemonError::Device {
        name: name.clone(),
        source,
    })?;
    if offload {
        if let Err(e) = datapath::enable_offloads(&mut dev) {
            warn!(error = %e, "the kernel refused TUN offloads; packets are handled one by one");
        }
    }
    let tun_addr = subnet.network();
    nl.configure_overlay(&dev.name, tun_addr, mtu, cfg.network)
        .await?;

    // Sockets.
    let Sockets { send, recv } = backend.sockets(underlay.addr, queues)?;
    let gso = offload && send.iter().all(|s| s.probe_gso());
    let gro = offload && !recv[0].is_raw() && recv.iter().all(|s| s.enable_gro());
    info!(device = %dev.name, queues, mtu, offloads = dev.offloads, gso, gro, "data plane configured");

    // The kernel segments whole super-packets (udp and vxlan, and L2 vxlan networks).
    let wants_tunnel = offload
        && args.tunnel_gso != gso_tap::Mode::Off
        && (kind != BackendKind::Gre || !args.l2.is_empty() || !args.l2_vlan.is_empty());
    // Its packets are forwarded: without our FORWARD accept rule, a DROP policy (Docker's)
    // would silently drop every one of them.
    let forward_blocked = !args.iptables_forward_rules
        && wants_tunnel
        && crate::masq::forward_policy_drops().await == Some(true);
    let gso_tap = if forward_blocked {
        let reason = "the FORWARD chain's policy is DROP and --iptables-forward-rules is off, \
                      so packets the kernel routes from the TAP would be dropped"
            .to_string();
        if args.tunnel_gso == gso_tap::Mode::On {
            return Err(DaemonError::TunnelGso(reason));
        }
        warn!(%reason, "tunnel GSO unavailable; segmenting in userspace");
        None
    } else if wants_tunnel {
        match GsoTap::open(&nl, &underlay, queues).await {
            Ok(t) => {
                info!(
                    device = gso_tap::NAME,
                    "tunnel GSO on: the kernel segments whole super-packets"
                );
                Some(t)
            }
            Err(reason) if args.tunnel_gso == gso_tap::Mode::On => {
                return Err(DaemonError::TunnelGso(reason));
            }
            Err(reason) => {
                warn!(%reason, "tunnel GSO unavailable; segmenting in userspace");
                None
            }
        }
    } else {
        None
    };
    let tunnel = gso_tap.as_ref().map(|t| t.tunnel.clone());
    if let Some(t) = &tunnel {
        let _ = telemetry.tunnel_gso.set(t.on.clone());
    }

    // Forwarding table, then the workers.
    let fib = fib::shared();
    let decode = peer_decoder(backend.clone());
    match registry.list().await {
        Ok((leases, _)) => {
            let map = leases.into_iter().map(|l| (l.key.clone(), l)).collect();
            fib.store(Arc::new(build_fib(&cfg, subnet, &map, &decode)));
        }
        Err(e) => warn!(error = %e, "cannot list peers yet; the watch will fill them in"),
    }
    let dp_cfg = l3::Config {
        encap: backend.encap,
        port: backend.port,
        tun_addr,
        vnet_hdr: offload,
        gso,
        gro,
        local_mac: backend.vtep_mac,
        busy_poll_us: args.busy_poll_us,
        tunnel: tunnel.clone(),
        mtu,
    };
    let tun_opts = tun::Options {
        name: name.clone(),
        kind: tun::Kind::Tun,
        queues,
        vnet_hdr: offload,
        tunnel_hdr: false,
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
    let _ = telemetry.offloads.set(telemetry::Offloads {
        tun_tso: dev.offloads & tun::TUN_F_TSO4 != 0,
        tun_uso: dev.offloads & tun::TUN_F_USO4 != 0,
        udp_gso: gso,
        udp_gro: gro,
    });
    set_workers(&telemetry, &dp);

    // Layer-2 networks, beside the routed overlay.
    let l2_opts = crate::l2::L2Options {
        access: args.l2.clone(),
        vlans: args.l2_vlan.clone(),
        trunk_bridge: args.l2_trunk_bridge.clone(),
        offload,
        busy_poll_us: args.busy_poll_us,
        tunnel: tunnel.clone(),
    };
    // From here on a signal is handled by the main loop below, which stops in order.
    stop.serving();
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
        tunnel.is_some().then_some(gso_tap::NAME),
        Duration::from_secs(args.iptables_resync),
    )
    .await?;
    firewall.ensure().await;
    let env = SubnetEnv::for_lease(&cfg, acquired.key(), mtu, args.ip_masq);
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
    let (subnet_tx, mut subnet_rx) = tokio::sync::watch::channel(acquired.key());
    let keepalive_every =
        Duration::from_secs((args.subnet_lease_renew_margin * 60 / 4).clamp(30, 15 * 60));
    let control = ControlLoop {
        registry: registry.clone(),
        cfg: cfg.clone(),
        attrs,
        acquired,
        fib: fib.clone(),
        decode_peer: decode,
        subnet_tx,
        keepalive_every,
        stats: telemetry.control.clone(),
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
            sig = stop.requested() => { info!("{sig}: stopping"); break; }
            changed = subnet_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let held = *subnet_rx.borrow();
                current = held.ipv4.unwrap_or(current);
                telemetry.control.reacquisitions.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = nl.configure_overlay(&name, current.network(), mtu, cfg.network).await {
                    error!(error = %e, "cannot move the device to the re-acquired subnet");
                }
                firewall.set_subnet(current);
                firewall.ensure().await;
                let env = SubnetEnv::for_lease(&cfg, held, mtu, args.ip_masq);
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
    drop(gso_tap);
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
        if let Err(e) = datapath::enable_offloads(&mut dev) {
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
