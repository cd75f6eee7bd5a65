//! The daemon's lifecycle, as a list of stages (see `serve`): flags, telemetry, the
//! underlay, etcd and the network config, the start-up plan (`plan`, pure), the host
//! claimed, the lease, the data plane (`plane`, `device`; wireguard's: `wg_plane`),
//! firewall and subnet.env, then the main loop (`running`) keeping the lease and the
//! forwarding table current until SIGTERM/SIGINT. Every backend goes through the same
//! stages: they differ only in the plan's `PlaneKind` (devices and data plane) and the
//! lease sink that keeps its peers.

mod blackhole;
mod device;
pub mod plan;
mod plane;
mod running;
mod wg_plane;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backend::SocketError;
use crate::cli::Args;
use crate::control::config::{BackendKind, ConfigError, NetworkConfig};
use crate::control::etcd::{
    Acquired, ControlLoop, EtcdError, EtcdOptions, LeaseSink, Registry, LEASE_TTL_SECS,
};
use crate::control::lease::SubnetKey;
use crate::control::subnet_env::read_previous;
use crate::datapath::tunnel::Tunnel;
use crate::direct::DirectRoutes;
use crate::fib::{self, SharedFib, SharedFib6};
use crate::gso_tap;
use crate::host::{HostError, Netlink, Underlay};
use crate::l2::control::LeaseHolders;
use crate::l2::{L2Node, L2Options, L2StartError};
use crate::lifecycle::Stop;
use crate::masq::Firewall;
use crate::telemetry;
use crate::wg::worker::SharedSpecs;
use blackhole::Blackholes;
use device::DeviceSetup;
use plan::{HostFacts, Notice, Plan, PlaneKind};
use plane::Plane;
use running::{L2Starting, Running, SubnetFile};

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
    #[error("the network config in etcd at {key} has Backend.Type wireguard, but L2 networks (--l2, --l2-vlan) would travel unencrypted beside it (vxlan, gretap); drop them or use another backend")]
    WireguardL2 { key: String },
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
    #[error("cannot listen for /metrics on {addr}: {source}")]
    MetricsListener {
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
    L2(Box<L2StartError>),
    #[error("the task starting the L2 networks ended without a result: {0}")]
    L2Task(String),
    #[error(transparent)]
    Firewall(#[from] crate::masq::FirewallError),
    #[error(transparent)]
    Wireguard(#[from] crate::wg::WgError),
    /// `--steer cpu` refused by the kernel (the message names the cause and `--steer flow`).
    #[error("{0}")]
    Steer(std::io::Error),
}

impl From<L2StartError> for DaemonError {
    fn from(e: L2StartError) -> Self {
        DaemonError::L2(Box::new(e))
    }
}

/// The etcd registry: the endpoints and TLS files are checked here (an error names the bad
/// one); the members are reached on first use, each call failing over between them.
async fn connect_etcd(opts: &EtcdOptions) -> Result<Registry, DaemonError> {
    if opts.endpoints.iter().any(|e| e.starts_with("http://")) && opts.cafile.is_none() {
        warn!("talking to etcd without TLS: leases and the network config travel in clear text");
    }
    let r = Registry::connect(opts).await?;
    info!(endpoints = ?opts.endpoints, "etcd endpoints");
    Ok(r)
}

/// The network config in etcd; absent, the one from `--network` is created, else it is
/// waited for (as it is while etcd does not answer; logged once).
async fn network_config(
    reg: &Registry,
    from_flags: Option<NetworkConfig>,
) -> Result<NetworkConfig, DaemonError> {
    let key = reg.config_key();
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

/// Runs the daemon until a signal; returns an error for anything that prevents it from
/// running at all. A signal during start-up (waiting for etcd, the config, a lease, a
/// device, a back-off) ends it at once: the start-up is dropped with what it made.
pub async fn run(args: Args) -> Result<(), DaemonError> {
    let stop = Stop::install().map_err(DaemonError::Signals)?;
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

/// The daemon proper, stage by stage: flags → telemetry → underlay → etcd and the network
/// config → the plan → the host claimed → the lease → the data plane → firewall, subnet.env
/// and ready → the main loop until `stop`.
async fn serve(args: Args, stop: Stop) -> Result<(), DaemonError> {
    let from_flags = plan::config_from_flags(&args)?;
    let telemetry = start_telemetry(&args).await?;
    let nl = Netlink::new()?;
    let underlay = underlay(&nl, &args).await?;
    let registry = connect_etcd(&args.etcd.options()).await?;
    let cfg = network_config(&registry, from_flags).await?;
    let host = host_facts(&nl, underlay, &cfg, &args).await?;
    let plan = Plan::new(&args, &cfg, &host, &registry.config_key())?;
    plan.notices.iter().for_each(Notice::log);

    // One daemon per host and device: refuse before touching the lease or the devices.
    let mut _instances = Vec::new();
    for device in plan.devices() {
        let claim = crate::lifecycle::claim(&args.run_dir, &device, &nl).await;
        _instances.push(claim.map_err(DaemonError::Instance)?);
    }
    let (acquired, setup) = lease(&registry, &cfg, &plan, &args).await;
    let (peers, sink) = peers(&registry, &cfg, &plan, &acquired).await?;
    let plane = Plane::open(&plan, setup, &nl, &host.underlay, &peers).await?;
    plane.publish(&telemetry, plan.backend.kind.as_str(), &peers);
    // From here on a signal is handled by the main loop, which stops in order.
    stop.serving();
    let leases = LeaseHolders {
        fib: peers.fib.clone(),
        fib6: peers.fib6.clone(),
        changed: peers.changed.clone(),
    };
    let l2_starting = start_l2(
        &args,
        &plan,
        &registry,
        &nl,
        &host.underlay,
        plane.tunnel(),
        leases,
    );

    let (firewall, subnet_file) =
        announce(&args, &plan, &cfg, &acquired, &plane, &telemetry).await?;
    // After the last start-up step that can fail, so that a failed start leaves no route.
    let direct = direct_routes(&nl, &plan, &cfg, &peers, &telemetry).await;
    let blackholes = plan
        .blackhole_route
        .then(|| Blackholes::new(acquired.key()));
    if let Some(b) = &blackholes {
        b.ensure(&nl).await;
    }
    let (control, subnet_rx) = spawn_control(registry, cfg, &plan, acquired, sink, &telemetry);
    let running = Running {
        nl,
        plane,
        firewall,
        subnet_file,
        telemetry,
        control,
        l2: None,
        direct,
        blackholes,
        watchdog: crate::systemd::Watchdog::from_env(),
    };
    running.run(&stop, subnet_rx, l2_starting).await
}

/// The lease: ours or a reservation, the previous subnet.env's, or a free subnet (retried
/// until one is held), and what the device is given for it.
async fn lease(
    registry: &Registry,
    cfg: &NetworkConfig,
    plan: &Plan,
    args: &Args,
) -> (Acquired, DeviceSetup) {
    let previous = read_previous(&args.subnet_file);
    let acquired = registry
        .acquire_with_retry(cfg, &plan.attrs, previous)
        .await;
    let setup = plan.device_setup(cfg, &acquired);
    if let (Some((sn6, _)), Some(ip6)) = (setup.v6, plan.public_ipv6) {
        info!(ipv6_subnet = %sn6, public_ipv6 = %ip6, ipv6_underlay = plan.underlay6.is_some(), "IPv6 is carried between nodes");
    }
    (acquired, setup)
}

/// Metrics and health first, so that a probe sees "alive, not ready" during start-up.
async fn start_telemetry(args: &Args) -> Result<Arc<telemetry::State>, DaemonError> {
    let state = Arc::new(telemetry::State::default());
    let Some(addr) = args.telemetry_addr() else {
        return Ok(state);
    };
    let flag = match args.metrics_addr {
        Some(_) => "--metrics-addr",
        None => "--healthz-ip, --healthz-port",
    };
    let listener = telemetry::bind(addr)
        .await
        .map_err(|source| DaemonError::MetricsListener {
            addr: format!("{addr} ({flag})"),
            source,
        })?;
    if let Some(handle) = telemetry::install_recorder() {
        tokio::spawn(telemetry::serve(listener, handle, state.clone()));
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    Ok(state)
}

/// The underlay interface: the first of `--iface` this host has, or the one holding the
/// source address toward `--iface-can-reach`, or the first `--iface-regex` matches, or the
/// default route's.
async fn underlay(nl: &Netlink, args: &Args) -> Result<Underlay, DaemonError> {
    let named = if let Some(ip) = args.iface_can_reach {
        vec![nl.source_toward(ip).await?.to_string()]
    } else if !args.iface_regex.is_empty() {
        let links = nl.links_with_addrs().await?;
        let picked = crate::host::pick_by_regex(&args.iface_regex, &links).ok_or_else(|| {
            let all: Vec<&str> = args.iface_regex.iter().map(regex::Regex::as_str).collect();
            HostError::NoMatch(all.join(", "))
        })?;
        vec![picked]
    } else {
        args.iface.clone()
    };
    let u = first_underlay(nl, &named).await?;
    let public_ip = plan::public_ip(args, &u);
    info!(iface = %u.name, addr = %u.addr, mtu = u.mtu, public_ip = %public_ip, "underlay");
    Ok(u)
}

/// The underlay of the first of `named` this host has (the default route's when none is
/// named); the last one's error when none is here.
async fn first_underlay(nl: &Netlink, named: &[String]) -> Result<Underlay, HostError> {
    let Some((last, before)) = named.split_last() else {
        return nl.underlay(None).await;
    };
    for name in before {
        match nl.underlay(Some(name)).await {
            Err(HostError::NoSuchInterface(_) | HostError::NoAddress(_)) => {
                info!(iface = %name, "no such underlay interface here; trying the next --iface")
            }
            found => return found,
        }
    }
    nl.underlay(Some(last)).await
}

/// The host's facts the plan needs; the interface's IPv6 addresses are read only when
/// the config enables IPv6 and `--public-ipv6` is given, the wireguard key file only for
/// a wireguard network.
async fn host_facts(
    nl: &Netlink,
    underlay: Underlay,
    cfg: &NetworkConfig,
    args: &Args,
) -> Result<HostFacts, DaemonError> {
    let local_ipv6 = match (&cfg.ipv6, args.public_ipv6) {
        (Some(_), Some(_)) => nl
            .ipv6_addrs(Some(underlay.index))
            .await?
            .into_iter()
            .map(|(_, a)| a.addr)
            .collect(),
        _ => Vec::new(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wireguard = match plan::needs_key(cfg) {
        true => Some(crate::wg::identity(cfg)?),
        false => None,
    };
    Ok(HostFacts {
        underlay,
        local_ipv6,
        cores,
        wireguard,
    })
}

/// The forwarding tables and (wireguard) each device's peer list, filled from the leases
/// listed now (the watch fills them in otherwise).
pub struct Peers {
    pub fib: SharedFib,
    pub fib6: SharedFib6,
    /// wireguard: each device's peers, in the order of the plan's layouts.
    pub specs: Vec<SharedSpecs>,
    /// Told after each swap of the forwarding tables (`peers::Tables::changes`).
    pub changed: tokio::sync::watch::Receiver<()>,
}

/// The lease → peer cache that keeps [`Peers`] current: the forwarding tables alone, or
/// wireguard's sink over them (which keeps the key book and the peer lists too); filled
/// from the leases listed now. Fails only when wireguard's peer lists cannot get their
/// eventfds.
async fn peers(
    registry: &Registry,
    cfg: &NetworkConfig,
    plan: &Plan,
    acquired: &Acquired,
) -> Result<(Peers, Box<dyn LeaseSink>), DaemonError> {
    let (fib, fib6) = (fib::shared(), fib::shared6());
    let tables = crate::peers::Tables::new(
        plan.backend.clone(),
        plan.underlay6.is_some(),
        cfg.clone(),
        fib.clone(),
        fib6.clone(),
    );
    let changed = tables.changes();
    let (mut sink, specs): (Box<dyn LeaseSink>, _) = match &plan.plane {
        PlaneKind::Routed { .. } => (Box::new(tables), Vec::new()),
        PlaneKind::Wireguard { layouts, .. } => {
            let sink = crate::wg::Sink::new(tables, fib.clone(), fib6.clone(), layouts)?;
            let specs = sink.specs();
            (Box::new(sink), specs)
        }
    };
    match registry.list().await {
        Ok((leases, _)) => {
            sink.reset(leases);
            sink.publish(acquired);
        }
        Err(e) => warn!(error = %e, "cannot list peers yet; the watch will fill them in"),
    }
    Ok((
        Peers {
            fib,
            fib6,
            specs,
            changed,
        },
        sink,
    ))
}

/// `Backend.DirectRouting`'s routes, brought in step with the peers listed now; when it is
/// off, what a crashed run left is removed.
async fn direct_routes(
    nl: &Netlink,
    plan: &Plan,
    cfg: &NetworkConfig,
    peers: &Peers,
    telemetry: &telemetry::State,
) -> DirectRoutes {
    let networks = cfg
        .enable_ipv4
        .then_some(IpNet::V4(cfg.network))
        .into_iter()
        .chain(cfg.ipv6.as_ref().map(|c| IpNet::V6(c.network)))
        .collect();
    let mut direct = DirectRoutes::new(
        nl.clone(),
        plan.direct_routing,
        networks,
        (peers.fib.clone(), peers.fib6.clone()),
        peers.changed.clone(),
    );
    if direct.enabled() {
        let _ = telemetry.direct_routes.set(direct.count());
    }
    direct.sync().await;
    direct
}

/// Layer-2 networks, beside the routed overlay, started in the background: an L2 network
/// not defined yet must not hold back the routed overlay (and the subnet file the CNI
/// plugin waits for). An invalid one still stops the daemon, from the main loop.
fn start_l2(
    args: &Args,
    plan: &Plan,
    registry: &Registry,
    nl: &Netlink,
    underlay: &Underlay,
    tunnel: Option<Tunnel>,
    leases: LeaseHolders,
) -> Option<L2Starting> {
    let opts = L2Options {
        access: args.l2.clone(),
        vlans: args.l2_vlan.clone(),
        trunk_bridge: args.l2_trunk_bridge.clone(),
        offload: plan.offload,
        busy_poll: plan.busy_poll,
        tunnel,
        gre_link_tx: plan.gre_link_tx,
    };
    if opts.is_empty() {
        return None;
    }
    let (registry, nl, underlay) = (registry.clone(), nl.clone(), underlay.clone());
    let (public_ip, l3_port) = (plan.public_ip, plan.l3_port);
    Some(tokio::spawn(async move {
        L2Node::start(
            &opts,
            &registry,
            &nl,
            &underlay,
            (public_ip, l3_port),
            leases,
        )
        .await
    }))
}

/// flanneld's iptables rules (re-checked at every check tick), then subnet.env, which
/// tells the CNI plugin (FLANNEL_IPMASQ=true) that they are in place; then ready. The
/// rules are IPv4 ones: an IPv6-only node has no IPv4 pod network to write them for.
async fn announce(
    args: &Args,
    plan: &Plan,
    cfg: &NetworkConfig,
    acquired: &Acquired,
    plane: &Plane,
    t: &telemetry::State,
) -> Result<(Firewall, SubnetFile), DaemonError> {
    let mut firewall = Firewall::new(
        plan.masq,
        args.ip_masq_fully_random_disable,
        plan.forward_rules,
        cfg.network,
        acquired.subnet,
        plane.tunnel().is_some().then_some(gso_tap::NAME),
        Duration::from_secs(args.iptables_resync),
    )
    .await?;
    firewall.ensure().await;
    let subnet_file = SubnetFile {
        cfg: cfg.clone(),
        mtu: plan.mtu,
        ip_masq: args.ip_masq,
        path: args.subnet_file.clone(),
    };
    subnet_file.write(acquired.key())?;
    mark_ready(t, acquired, plan, &subnet_file);
    Ok((firewall, subnet_file))
}

/// The lease is held and subnet.env written: ready (for /readyz and systemd).
fn mark_ready(t: &telemetry::State, acquired: &Acquired, plan: &Plan, file: &SubnetFile) {
    t.control.lease_held.store(true, Ordering::Relaxed);
    if acquired.lease_id != 0 {
        t.control
            .lease_expiry_unix
            .store(unix_now() + LEASE_TTL_SECS, Ordering::Relaxed);
    }
    t.ready.store(true, Ordering::Relaxed);
    crate::systemd::ready();
    let (backend, devices) = (plan.backend.kind.as_str(), plan.devices());
    info!(subnet = %acquired.key(), ?devices, mtu = plan.mtu, subnet_file = %file.path.display(), "ready ({backend})");
}

/// Background control: lease keepalive, peers, re-acquisition. Returns its task and the
/// channel that tells about our subnet changing.
fn spawn_control(
    registry: Registry,
    cfg: NetworkConfig,
    plan: &Plan,
    acquired: Acquired,
    sink: Box<dyn LeaseSink>,
    t: &telemetry::State,
) -> (JoinHandle<()>, watch::Receiver<SubnetKey>) {
    let (subnet_tx, subnet_rx) = watch::channel(acquired.key());
    let control = ControlLoop {
        registry,
        cfg,
        attrs: plan.attrs.clone(),
        acquired,
        sink,
        subnet_tx,
        keepalive_every: plan.keepalive_every,
        stats: t.control.clone(),
    };
    (tokio::spawn(control.run()), subnet_rx)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
