//! The daemon's lifecycle: resolve the underlay, reach etcd, read (or create) the network
//! config, acquire the lease, bring up the device and the data plane, write subnet.env,
//! then keep the lease and the forwarding table current until SIGTERM/SIGINT.
//!
//! Glue only: every decision it makes is delegated to a tested module.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, SocketError, Sockets};
use crate::cli::{Args, BackendArg};
use crate::control::config::{BackendKind, ConfigError, NetworkConfig};
use crate::control::etcd::{
    build_fib, build_fib6, ControlLoop, EtcdError, EtcdOptions, PeerDecoder, PeerDecoder6,
    Registry, RemoteLease, LEASE_TTL_SECS,
};
use crate::control::subnet_env::{read_previous, SubnetEnv};
use crate::datapath;
use crate::fib::{self, Peer, Peer6};
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
    #[error("the network config in etcd at {key} has EnableIPv4 false (IPv6 only), but interface {iface} has no global IPv6 address to carry IPv6 from; give --iface an interface (or IPv6 address) that has one")]
    Ipv6OnlyNoUnderlay { key: String, iface: String },
    #[error("the network config in etcd at {key} has EnableIPv4 false (IPv6 only), but L2 networks (--l2, --l2-vlan) need an IPv4 underlay; drop them or use a dual-stack config")]
    Ipv6OnlyL2 { key: String },
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
    #[error(transparent)]
    Wireguard(#[from] crate::wg::WgError),
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

/// The lease versions a peer decoder has warned about: it runs at every forwarding-table
/// rebuild, and an invalid lease is worth one warning per version, not one per rebuild.
#[derive(Default)]
struct WarnedLeases(std::sync::Mutex<std::collections::HashSet<(String, i64)>>);

impl WarnedLeases {
    /// Whether this is the first time `l` (at its revision) is seen here.
    fn first(&self, l: &RemoteLease) -> bool {
        self.0
            .lock()
            .map(|mut w| w.insert((l.key.clone(), l.mod_revision)))
            .unwrap_or(true)
    }
}

/// Maps a lease to a peer of our backend; others are ignored, and an invalid lease of
/// ours is warned about once (the decoder runs at every forwarding-table rebuild).
fn peer_decoder(backend: Backend) -> PeerDecoder {
    let warned = WarnedLeases::default();
    Box::new(move |l: &RemoteLease| match backend.peer_mac(&l.attrs) {
        Ok(Some(mac)) => Some(Peer::new(l.subnet, l.attrs.public_ip, mac)),
        Ok(None) => None,
        Err(e) => {
            if warned.first(l) {
                warn!(key = %l.key, backend = %backend.kind.as_str(), error = %e, "ignoring a lease with invalid BackendData");
            }
            None
        }
    })
}

/// Maps a lease's IPv6 half to an IPv6 peer of our backend (the underlay address the
/// backend sends its IPv6 packets to — over IPv6 when this node has an IPv6 underlay,
/// `v6_underlay` — and the VTEP MAC on that underlay for vxlan); others are ignored, and an
/// invalid one of ours is warned about once.
fn peer_decoder6(backend: Backend, v6_underlay: bool) -> PeerDecoder6 {
    let warned = WarnedLeases::default();
    Box::new(move |l: &RemoteLease| {
        let subnet = l.ipv6_subnet?;
        match backend.ipv6_route(&l.attrs, v6_underlay) {
            Ok(Some((underlay, mac))) => Some(Peer6::new(
                subnet,
                l.attrs.public_ip,
                l.attrs.public_ipv6,
                underlay,
                mac,
            )),
            Ok(None) => None,
            Err(e) => {
                if warned.first(l) {
                    warn!(key = %l.key, backend = %backend.kind.as_str(), error = %e, "ignoring the IPv6 half of a lease with invalid BackendV6Data");
                }
                None
            }
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
    let config_key = format!("{}/config", args.etcd.etcd_prefix.trim_end_matches('/'));
    if cfg.enable_ipv4 && underlay.addr.is_unspecified() {
        return Err(HostError::NoAddress(underlay.name.clone()).into());
    }
    // The IPv6 underlay: the address the IPv6 sockets bind, `PublicIPv6` when it is one of
    // the interface's own (`--public-ipv6` naming another of them), else the interface's
    // preferred global IPv6 address (a `--public-ipv6` that is not local is a translated
    // address, as `--public-ip` may be).
    let underlay6: Option<Ipv6Addr> = match (&cfg.ipv6, args.public_ipv6) {
        (None, _) => None,
        (Some(_), Some(p6)) => {
            let local = nl.ipv6_addrs(Some(underlay.index)).await?;
            if local.iter().any(|(_, a)| a.addr == p6) {
                Some(p6)
            } else {
                underlay.addr6
            }
        }
        (Some(_), None) => underlay.addr6,
    };
    if !cfg.enable_ipv4 {
        if underlay6.is_none() {
            return Err(DaemonError::Ipv6OnlyNoUnderlay {
                key: config_key,
                iface: underlay.name.clone(),
            });
        }
        if !args.l2.is_empty() || !args.l2_vlan.is_empty() {
            return Err(DaemonError::Ipv6OnlyL2 { key: config_key });
        }
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
    if kind == BackendKind::Wireguard {
        let start = crate::wg::Start {
            keepalive_every: Duration::from_secs(
                (args.subnet_lease_renew_margin * 60 / 4).clamp(30, 15 * 60),
            ),
            cfg,
            registry,
            nl: &nl,
            underlay: &underlay,
            public_ip,
            telemetry,
            run_dir: args.run_dir.clone(),
            subnet_file: args.subnet_file.clone(),
            ip_masq: args.ip_masq,
            fully_random_disable: args.ip_masq_fully_random_disable,
            forward_rules: args.iptables_forward_rules,
            iptables_resync: Duration::from_secs(args.iptables_resync),
        };
        return Ok(crate::wg::serve(start, &stop).await?);
    }
    let vni = cfg.backend.vni;
    if kind == BackendKind::Vxlan && vni > 65535 {
        warn!(
            vni,
            "flannel nodes read the lease's VNI as 16 bits: flanneld peers will ignore this node"
        );
    }
    let backend = Backend::new(&cfg.backend, public_ip);
    // The device's MTU: what the IPv4 underlay carries; on an IPv6-only node, what the
    // IPv6 one does (20 bytes less).
    let mtu = cfg.backend.mtu.unwrap_or_else(|| {
        if cfg.enable_ipv4 {
            backend.inner_mtu(underlay.mtu)
        } else {
            backend.inner_mtu_v6(underlay.mtu)
        }
    });
    // Dual stack over both underlays: IPv6 packets must fit the IPv6 underlay, whose outer
    // header is 20 bytes longer, so the device's IPv6 MTU is set that much lower (flannel's
    // flannel-v6.<VNI> device has that MTU). Below IPv6's minimum the IPv6 underlay is not
    // used.
    let mut underlay6 = underlay6;
    let mut ipv6_mtu = None;
    if let (true, Some(a6)) = (cfg.enable_ipv4, underlay6) {
        let m6 = backend.inner_mtu_v6(underlay.mtu).min(mtu);
        if m6 < 1280 {
            warn!(underlay_mtu = underlay.mtu, "the underlay MTU leaves less than IPv6's minimum of 1280 bytes for IPv6 packets over IPv6: they go over the IPv4 underlay instead");
            underlay6 = None;
        } else if m6 < mtu {
            ipv6_mtu = Some(m6);
        }
        debug!(addr6 = %a6, ipv6_mtu = m6, "IPv6 underlay");
    }
    if let (Some(_), true, None) = (&cfg.ipv6, cfg.enable_ipv4, underlay6) {
        warn!(iface = %underlay.name, "no IPv6 underlay: IPv6 packets go over the IPv4 underlay, which flannel nodes (whose flannel-v6 device expects them over IPv6) do not take");
    }
    let encap6 = public_ipv6.map_or(backend.encap, |ip6| backend.encap6(ip6));
    let attrs = match public_ipv6 {
        None => backend.lease_attrs(public_ip),
        Some(ip6) if !cfg.enable_ipv4 => backend.lease_attrs_v6_only(ip6),
        Some(ip6) => backend
            .lease_attrs(public_ip)
            .with_ipv6(ip6, backend.lease_v6_data(ip6)),
    };

    // One daemon per host and device: refuse before touching the lease or the device.
    let name = backend.device_name();
    let _instance = crate::lifecycle::claim(&args.run_dir, &name, &nl)
        .await
        .map_err(DaemonError::Instance)?;

    let previous = read_previous(&args.subnet_file);
    let acquired = registry.acquire_with_retry(&cfg, &attrs, previous).await;
    let subnet = acquired.subnet;
    let mut setup = DeviceSetup {
        mtu,
        ipv6_mtu,
        v4: cfg.enable_ipv4.then_some((subnet, cfg.network)),
        v6: cfg
            .ipv6
            .as_ref()
            .zip(acquired.ipv6_subnet)
            .map(|(c6, sn6)| (sn6, c6.network)),
    };
    if let (Some((sn6, _)), Some(ip6)) = (setup.v6, public_ipv6) {
        info!(ipv6_subnet = %sn6, public_ipv6 = %ip6, ipv6_underlay = underlay6.is_some(), "IPv6 is carried between nodes");
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
    setup.apply(&nl, &dev.name).await?;

    // Sockets, per underlay family.
    let v4 = match cfg.enable_ipv4 {
        true => backend.sockets(IpAddr::V4(underlay.addr), queues)?,
        false => Sockets::default(),
    };
    let v6 = match underlay6 {
        Some(a6) => backend.sockets(IpAddr::V6(a6), queues)?,
        None => Sockets::default(),
    };
    let gso = offload && v4.send.iter().chain(&v6.send).all(|s| s.probe_gso());
    let recvs: Vec<_> = v4.recv.iter().chain(&v6.recv).collect();
    let gro = offload
        && recvs.first().is_some_and(|s| !s.is_raw())
        && recvs.iter().all(|s| s.enable_gro());
    info!(device = %dev.name, queues, mtu, ?ipv6_mtu, offloads = dev.offloads, gso, gro, ipv6_underlay = ?underlay6, "data plane configured");

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
        match GsoTap::open(&nl, &underlay, queues, underlay6).await {
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
        let _ = telemetry.tunnel_gso6.set(t.on6.clone());
    }

    // Forwarding table, then the workers.
    let fib = fib::shared();
    let fib6 = fib::shared6();
    let decode = peer_decoder(backend.clone());
    let decode6 = peer_decoder6(backend.clone(), underlay6.is_some());
    match registry.list().await {
        Ok((leases, _)) => {
            let map = leases.into_iter().map(|l| (l.key.clone(), l)).collect();
            fib.store(Arc::new(build_fib(&cfg, subnet, &map, &decode)));
            fib6.store(Arc::new(build_fib6(
                &cfg,
                acquired.ipv6_subnet,
                &map,
                &decode6,
            )));
        }
        Err(e) => warn!(error = %e, "cannot list peers yet; the watch will fill them in"),
    }
    let dp_cfg = l3::Config {
        encap: backend.encap,
        encap6,
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
        v4.clone(),
        v6.clone(),
        fib.clone(),
        fib6.clone(),
    )
    .map_err(|source| DaemonError::Device {
        name: name.clone(),
        source,
    })?;
    let _ = telemetry.backend.set(kind.as_str());
    let _ = telemetry.fib.set(fib.clone());
    let _ = telemetry.fib6.set(fib6.clone());
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
    // They are IPv4 rules: an IPv6-only node has no IPv4 pod network to write them for
    // (its zero-valued network would match every address).
    if !cfg.enable_ipv4 && args.ip_masq {
        warn!("IPv6 only: --ip-masq installs IPv4 masquerade rules, so none here (ip6tables rules are not written)");
    }
    let mut firewall = crate::masq::Firewall::new(
        args.ip_masq && cfg.enable_ipv4,
        args.ip_masq_fully_random_disable,
        args.iptables_forward_rules && cfg.enable_ipv4,
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
    info!(subnet = %acquired.key(), device = %dev.name, subnet_file = %args.subnet_file.display(), "ready");

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
        fib6: fib6.clone(),
        decode_peer6: decode6,
        subnet_tx,
        keepalive_every,
        stats: telemetry.control.clone(),
    };
    let control_task = tokio::spawn(control.run());
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
                setup.v4 = setup.v4.map(|(sn, net)| (held.ipv4.unwrap_or(sn), net));
                setup.v6 = setup.v6.map(|(sn6, net6)| (held.ipv6.unwrap_or(sn6), net6));
                telemetry.control.reacquisitions.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = setup.apply(&nl, &name).await {
                    error!(error = %e, "cannot move the device to the re-acquired subnet");
                }
                if let Some((sn, _)) = setup.v4 {
                    firewall.set_subnet(sn);
                }
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
                        if let Some(network) = setup.missing_route(&nl, index).await {
                            warn!(device = %name, %network, "overlay route vanished; restoring it");
                            telemetry.control.device_repairs.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = setup.apply(&nl, &name).await {
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
                        match reopen(&tun_opts, offload, &nl, &setup).await {
                            Ok(new_qs) => {
                                qs = new_qs;
                                dev_index = nl.link(&name).await.ok().flatten().map(|(i, _)| i);
                                device_ours = dev_index.is_some();
                            }
                            Err(e) => error!(error = %e, "cannot recreate the overlay device; retrying"),
                        }
                        match Dataplane::start(dp_cfg.clone(), qs.clone(), v4.clone(), v6.clone(), fib.clone(), fib6.clone()) {
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
    setup: &DeviceSetup,
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
    setup.apply(nl, &dev.name).await?;
    Ok(std::mem::take(&mut dev.queues)
        .into_iter()
        .map(Arc::new)
        .collect())
}

/// What the overlay device is given, as flanneld gives its devices: its MTU, the IPv4
/// subnet's network address /32 and the route for the IPv4 network (absent on an IPv6-only
/// node), the IPv6 subnet's network address /128 and the route for the IPv6 network (dual
/// stack and IPv6 only), and the device's IPv6 MTU when it must be below its link MTU.
#[derive(Debug, Clone, Copy)]
struct DeviceSetup {
    mtu: u32,
    ipv6_mtu: Option<u32>,
    /// (our subnet, the network).
    v4: Option<(Ipv4Net, Ipv4Net)>,
    v6: Option<(Ipv6Net, Ipv6Net)>,
}

impl DeviceSetup {
    /// Configures device `name` (idempotent: also the repair after a deletion, and the
    /// move to a re-acquired subnet).
    async fn apply(&self, nl: &Netlink, name: &str) -> Result<(), HostError> {
        match self.v4 {
            Some((sn, net)) => {
                nl.configure_overlay(name, sn.network(), self.mtu, net)
                    .await?
            }
            None => nl.link_up(name, self.mtu).await?,
        };
        if let Some((sn6, net6)) = self.v6 {
            nl.configure_overlay6(name, sn6.network(), net6, self.ipv6_mtu)
                .await?;
        }
        Ok(())
    }

    /// A network whose route through link `index` is gone, if any (errors reading the
    /// routes count as present: the next check tries again).
    async fn missing_route(&self, nl: &Netlink, index: u32) -> Option<ipnet::IpNet> {
        if let Some((_, net)) = self.v4 {
            if let Ok(false) = nl.has_route(net, index).await {
                return Some(net.into());
            }
        }
        if let Some((_, net6)) = self.v6 {
            if let Ok(false) = nl.has_route(net6, index).await {
                return Some(net6.into());
            }
        }
        None
    }
}
