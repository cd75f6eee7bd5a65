//! The start-up plan: every decision the daemon takes from its flags, the network config
//! and the host's facts (the IPv6 underlay, both MTUs, the public addresses, the lease
//! attributes, queues, tunnel GSO, keepalive, the data plane: routed or wireguard's
//! devices), computed without I/O and unit-tested.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use tracing::{debug, warn};

use super::device::DeviceSetup;
use super::DaemonError;
use crate::backend::{Backend, Encap};
use crate::cli::{Args, BackendArg};
use crate::control::config::{overlaps_underlay, BackendKind, NetworkConfig};
use crate::control::etcd::Acquired;
use crate::control::lease::LeaseAttrs;
use crate::gso_tap::Mode;
use crate::host::{HostError, Underlay};
use crate::l2::{config::check_attachments, L2StartError};
use crate::sys::tun;
use crate::wg::engine::Identity;
use crate::wg::layout::{self, Layout};
use crate::wg::WgError;

/// IPv6's minimum link MTU: below it the IPv6 underlay is not used.
const IPV6_MIN_MTU: u32 = 1280;

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Udp => BackendKind::Udp,
            BackendArg::Vxlan => BackendKind::Vxlan,
            BackendArg::Gre => BackendKind::Gre,
            BackendArg::Wireguard => BackendKind::Wireguard,
        }
    }
}

/// The flags stage, before anything is touched (a typo fails fast): the network config
/// `--network` describes, if given, and the L2 attachments checked against each other.
pub fn config_from_flags(args: &Args) -> Result<Option<NetworkConfig>, DaemonError> {
    check_attachments(&args.l2, &args.l2_vlan).map_err(L2StartError::Conflict)?;
    let Some(net) = args.network else {
        return Ok(None);
    };
    let kind = args.backend.map_or(BackendKind::Vxlan, BackendKind::from);
    NetworkConfig::from_cli(net, args.subnet_len, kind)
        .map(Some)
        .map_err(DaemonError::FlagConfig)
}

/// Whether the node's wireguard key (a host fact) must be read for `cfg`.
pub fn needs_key(cfg: &NetworkConfig) -> bool {
    cfg.backend.kind == BackendKind::Wireguard
}

/// The address this node publishes as `PublicIP`: `--public-ip`, else the underlay's.
pub fn public_ip(args: &Args, underlay: &Underlay) -> Ipv4Addr {
    args.public_ip.unwrap_or(underlay.addr)
}

/// What start-up learned about the host before planning.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub underlay: Underlay,
    /// The underlay interface's own IPv6 addresses (read only when the config enables IPv6
    /// and `--public-ipv6` is given: is that address local or a translated one?).
    pub local_ipv6: Vec<Ipv6Addr>,
    /// CPUs available to the process.
    pub cores: usize,
    /// The node's wireguard identity (its key file, read when `Backend.Type` is wireguard).
    pub wireguard: Option<Identity>,
}

/// The data plane the plan asks for: the only thing (with the devices it opens) in which
/// backends differ after the plan.
#[derive(Debug, Clone)]
pub enum PlaneKind {
    /// One TUN device carried by the data path's workers, with the encapsulation on each
    /// underlay family.
    Routed { encap: Encap, encap6: Encap },
    /// wireguard's devices (`Backend.Mode`), each with its data path thread and engine.
    Wireguard {
        layouts: Vec<Layout>,
        identity: Identity,
    },
}

/// Something the plan found worth telling the operator; logged once by [`Notice::log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A vxlan VNI that flannel, reading it as 16 bits, gets wrong.
    VniOver16Bits(u32),
    /// The IPv6 underlay would leave IPv6 packets less than 1280 bytes: it is not used.
    Ipv6MtuBelowMinimum { underlay_mtu: u32 },
    /// The IPv6 underlay in use, and the IPv6 MTU over it.
    Ipv6Underlay { addr6: Ipv6Addr, ipv6_mtu: u32 },
    /// Dual stack without an IPv6 underlay: IPv6 goes over IPv4.
    NoIpv6Underlay { iface: String },
    /// IPv6 only with `--ip-masq`: no rules are written.
    NoIpv6Masquerade,
    /// `Backend.DirectRouting` on a backend that does not honour it (udp, wireguard).
    DirectRoutingIgnored(BackendKind),
}

impl Notice {
    pub fn log(&self) {
        match self {
            Notice::VniOver16Bits(vni) => warn!(
                vni,
                "flannel nodes read the lease's VNI as 16 bits: flanneld peers will ignore this node"
            ),
            Notice::Ipv6MtuBelowMinimum { underlay_mtu } => warn!(underlay_mtu, "the underlay MTU leaves less than IPv6's minimum of 1280 bytes for IPv6 packets over IPv6: they go over the IPv4 underlay instead"),
            Notice::Ipv6Underlay { addr6, ipv6_mtu } => debug!(%addr6, ipv6_mtu, "IPv6 underlay"),
            Notice::NoIpv6Underlay { iface } => warn!(%iface, "no IPv6 underlay: IPv6 packets go over the IPv4 underlay, which flannel nodes (whose flannel-v6 device expects them over IPv6) do not take"),
            Notice::NoIpv6Masquerade => warn!("IPv6 only: --ip-masq installs IPv4 masquerade rules, so none here (ip6tables rules are not written)"),
            Notice::DirectRoutingIgnored(kind) => warn!(backend = %kind, "Backend.DirectRouting is ignored by this backend, as flanneld ignores it: only vxlan and gre route peers on a shared link directly"),
        }
    }
}

/// Whether to set up the tunnel-GSO TAP, and what to do when it cannot be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelPlan {
    /// Offloads on, `--tunnel-gso` not off, and a UDP backend (routed or L2) to segment.
    pub wanted: bool,
    /// `--tunnel-gso on`: unavailable is an error, not a fallback.
    pub required: bool,
    /// Wanted, and `--iptables-forward-rules` off: a FORWARD policy of DROP (Docker's)
    /// would drop every packet the kernel routes from the TAP, so it must be read first.
    pub check_forward: bool,
}

/// Why the TAP is not used when [`TunnelPlan::check_forward`] found a DROP policy.
pub const FORWARD_DROPS: &str = "the FORWARD chain's policy is DROP and --iptables-forward-rules is off, so packets the kernel routes from the TAP would be dropped";

impl TunnelPlan {
    fn new(args: &Args, kind: BackendKind) -> TunnelPlan {
        let has_l2 = !args.l2.is_empty() || !args.l2_vlan.is_empty();
        let udp = match kind {
            BackendKind::Udp | BackendKind::Vxlan => true,
            BackendKind::Gre => has_l2,
            // wireguard sends its own datagrams (UDP GSO of sealed segments).
            BackendKind::Wireguard => false,
        };
        let wanted = !args.no_offload && args.tunnel_gso != Mode::Off && udp;
        TunnelPlan {
            wanted,
            required: args.tunnel_gso == Mode::On,
            check_forward: wanted && !args.iptables_forward_rules,
        }
    }

    /// The TAP cannot be used, for `reason`: an error with `--tunnel-gso on`, else a
    /// warning and userspace segmentation.
    pub fn unavailable(&self, reason: String) -> Result<(), DaemonError> {
        if self.required {
            return Err(DaemonError::TunnelGso(reason));
        }
        warn!(%reason, "tunnel GSO unavailable; segmenting in userspace");
        Ok(())
    }
}

/// Every start-up decision, from flags, the network config and the host's facts.
#[derive(Debug, Clone)]
pub struct Plan {
    pub public_ip: Ipv4Addr,
    /// The address the IPv4 sockets bind; `None` on an IPv6-only node.
    pub underlay4: Option<Ipv4Addr>,
    /// `PublicIPv6` (the config enables IPv6): `--public-ipv6`, else the underlay's.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The address the IPv6 sockets bind; `None`: no IPv6 underlay (IPv6, if enabled, goes
    /// over IPv4).
    pub underlay6: Option<Ipv6Addr>,
    pub backend: Backend,
    /// Routed (with its encapsulations) or wireguard (with its devices).
    pub plane: PlaneKind,
    /// What our lease says about us.
    pub attrs: LeaseAttrs,
    /// The overlay device's MTU, and its IPv6 MTU when lower.
    pub mtu: u32,
    pub ipv6_mtu: Option<u32>,
    pub queues: usize,
    /// `--steer`: by flow, or by CPU with pinned workers (routed plane only).
    pub steer: crate::backend::Steer,
    pub offload: bool,
    pub busy_poll: crate::datapath::BusyPoll,
    /// `--gre-link-tx`: gre's IPv4 packets sent through the link-layer path.
    pub gre_link_tx: bool,
    pub tunnel: TunnelPlan,
    /// The own lease's keepalive period.
    pub keepalive_every: Duration,
    /// flanneld's IPv4 rules: masquerade, FORWARD accept (none on an IPv6-only node).
    pub masq: bool,
    pub forward_rules: bool,
    /// The routed backend's UDP port, which L2 vxlan networks must not take.
    pub l3_port: Option<u16>,
    /// `Backend.DirectRouting` on vxlan or gre: peers on a shared link get kernel routes.
    pub direct_routing: bool,
    /// `--ip-blackhole-route`: a blackhole route for each subnet we hold.
    pub blackhole_route: bool,
    pub notices: Vec<Notice>,
}

/// The underlay's addresses and MTUs, as decided.
struct Underlays {
    public_ipv6: Option<Ipv6Addr>,
    underlay6: Option<Ipv6Addr>,
    mtu: u32,
    ipv6_mtu: Option<u32>,
}

/// The underlay interface's own addresses, as host routes (/32, /128).
fn host_addrs(u: &Underlay) -> Vec<IpNet> {
    let v4 = (!u.addr.is_unspecified()).then(|| IpNet::from(IpAddr::V4(u.addr)));
    let v6 = u.addr6.map(|a| IpNet::from(IpAddr::V6(a)));
    v4.into_iter().chain(v6).collect()
}

impl Plan {
    /// Plans the start-up; `config_key` names the config in errors about it.
    pub fn new(
        args: &Args,
        cfg: &NetworkConfig,
        host: &HostFacts,
        config_key: &str,
    ) -> Result<Plan, DaemonError> {
        let public_ip = public_ip(args, &host.underlay);
        // The overlay must not swallow the host's own underlay addresses.
        overlaps_underlay(cfg, &host_addrs(&host.underlay)).map_err(|source| {
            DaemonError::EtcdConfig {
                key: config_key.to_owned(),
                source,
            }
        })?;
        let mut backend = Backend::new(&cfg.backend, public_ip);
        if let Some(id) = &host.wireguard {
            backend = backend.with_public_key(id.public_key());
        }
        let mut notices = Vec::new();
        let u = underlays(args, cfg, host, config_key, &backend, &mut notices)?;
        let kind = cfg.backend.kind;
        if let Some(flag) = args.backend.map(BackendKind::from) {
            if flag != kind {
                return Err(DaemonError::BackendMismatch { flag, etcd: kind });
            }
        }
        let underlay4 = cfg.enable_ipv4.then_some(host.underlay.addr);
        let plane = plane_kind(args, cfg, host, &backend, (underlay4, &u), config_key)?;
        if kind == BackendKind::Vxlan && cfg.backend.vni > 65535 {
            notices.insert(0, Notice::VniOver16Bits(cfg.backend.vni));
        }
        if !cfg.enable_ipv4 && args.ip_masq {
            notices.push(Notice::NoIpv6Masquerade);
        }
        let direct_routing = matches!(kind, BackendKind::Vxlan | BackendKind::Gre);
        if cfg.backend.direct_routing && !direct_routing {
            notices.push(Notice::DirectRoutingIgnored(kind));
        }
        Ok(Plan {
            public_ip,
            underlay4,
            public_ipv6: u.public_ipv6,
            underlay6: u.underlay6,
            plane,
            attrs: lease_attrs(&backend, cfg.enable_ipv4, public_ip, u.public_ipv6),
            backend,
            mtu: u.mtu,
            ipv6_mtu: u.ipv6_mtu,
            queues: args.queues.map_or(host.cores.min(4), usize::from),
            steer: args.steer,
            offload: !args.no_offload,
            busy_poll: args.busy_poll_us,
            gre_link_tx: args.gre_link_tx,
            tunnel: TunnelPlan::new(args, kind),
            keepalive_every: keepalive_every(args.subnet_lease_renew_margin),
            masq: args.ip_masq && cfg.enable_ipv4,
            forward_rules: args.iptables_forward_rules && cfg.enable_ipv4,
            l3_port: (kind != BackendKind::Gre).then_some(cfg.backend.port),
            direct_routing: direct_routing && cfg.backend.direct_routing,
            blackhole_route: args.ip_blackhole_route,
            notices,
        })
    }

    /// The overlay device's name (wireguard: its IPv4 one).
    pub fn device(&self) -> String {
        self.backend.device_name()
    }

    /// Every device this node opens: the instance claimed is one per device.
    pub fn devices(&self) -> Vec<String> {
        match &self.plane {
            PlaneKind::Routed { .. } => vec![self.device()],
            PlaneKind::Wireguard { layouts, .. } => {
                layouts.iter().map(|l| l.name.to_string()).collect()
            }
        }
    }

    /// How the overlay device is opened, at start and when it is recreated.
    pub fn tun_options(&self) -> tun::Options {
        tun::Options {
            name: self.device(),
            kind: tun::Kind::Tun,
            queues: self.queues,
            vnet_hdr: self.offload,
            tunnel_hdr: false,
        }
    }

    /// What the device is given once `acquired` is held.
    pub fn device_setup(&self, cfg: &NetworkConfig, acquired: &Acquired) -> DeviceSetup {
        DeviceSetup {
            mtu: self.mtu,
            ipv6_mtu: self.ipv6_mtu,
            v4: cfg.enable_ipv4.then_some((acquired.subnet, cfg.network)),
            v6: cfg
                .ipv6
                .as_ref()
                .zip(acquired.ipv6_subnet)
                .map(|(c6, sn6)| (sn6, c6.network)),
        }
    }
}

/// The data plane: the routed one with the backend's encapsulations, or wireguard's
/// devices for `Backend.Mode` (refused naming the mode when the node lacks the underlay it
/// needs; refused with L2 networks, which would travel unencrypted beside it).
fn plane_kind(
    args: &Args,
    cfg: &NetworkConfig,
    host: &HostFacts,
    backend: &Backend,
    (underlay4, u): (Option<Ipv4Addr>, &Underlays),
    config_key: &str,
) -> Result<PlaneKind, DaemonError> {
    if let Some(encap) = backend.encap {
        let encap6 = u.public_ipv6.and_then(|ip6| backend.encap6(ip6));
        return Ok(PlaneKind::Routed {
            encap,
            encap6: encap6.unwrap_or(encap),
        });
    }
    if !args.l2.is_empty() || !args.l2_vlan.is_empty() {
        return Err(DaemonError::WireguardL2 {
            key: config_key.to_string(),
        });
    }
    let layouts = layout::layouts(cfg, underlay4, u.underlay6).map_err(WgError::Mode)?;
    let identity = host.wireguard.clone().ok_or(WgError::NoKey)?;
    Ok(PlaneKind::Wireguard { layouts, identity })
}

/// The IPv6 underlay, `PublicIPv6` and the MTUs, with the errors of a config the host
/// cannot carry.
fn underlays(
    args: &Args,
    cfg: &NetworkConfig,
    host: &HostFacts,
    config_key: &str,
    backend: &Backend,
    notices: &mut Vec<Notice>,
) -> Result<Underlays, DaemonError> {
    let u = &host.underlay;
    if cfg.enable_ipv4 && u.addr.is_unspecified() {
        return Err(HostError::NoAddress(u.name.clone()).into());
    }
    let underlay6 = underlay6(args, cfg, host);
    if !cfg.enable_ipv4 {
        ipv6_only(args, config_key, u, underlay6)?;
    }
    let public_ipv6 = match cfg.ipv6 {
        None => None,
        Some(_) => {
            Some(
                args.public_ipv6
                    .or(u.addr6)
                    .ok_or_else(|| DaemonError::NoIpv6Address {
                        iface: u.name.clone(),
                    })?,
            )
        }
    };
    // The device's MTU: what the IPv4 underlay carries; on an IPv6-only node, what the
    // IPv6 one does (20 bytes less). wireguard's `MTU` is the link's, less its overhead
    // (as flanneld counts it).
    let mtu = match (cfg.backend.mtu, backend.encap) {
        (m, None) => backend.inner_mtu(m.unwrap_or(u.mtu)),
        (Some(m), Some(_)) => m,
        (None, Some(_)) if cfg.enable_ipv4 => backend.inner_mtu(u.mtu),
        (None, Some(_)) => backend.inner_mtu_v6(u.mtu),
    };
    let (underlay6, ipv6_mtu) = ipv6_mtu(cfg, u, backend, mtu, underlay6, notices);
    Ok(Underlays {
        public_ipv6,
        underlay6,
        mtu,
        ipv6_mtu,
    })
}

/// What an IPv6-only node needs: an IPv6 underlay, and no L2 network.
fn ipv6_only(
    args: &Args,
    config_key: &str,
    u: &Underlay,
    underlay6: Option<Ipv6Addr>,
) -> Result<(), DaemonError> {
    if underlay6.is_none() {
        return Err(DaemonError::Ipv6OnlyNoUnderlay {
            key: config_key.to_string(),
            iface: u.name.clone(),
        });
    }
    if !args.l2.is_empty() || !args.l2_vlan.is_empty() {
        return Err(DaemonError::Ipv6OnlyL2 {
            key: config_key.to_string(),
        });
    }
    Ok(())
}

/// The address the IPv6 sockets bind: `--public-ipv6` when it is one of the interface's
/// own, else the interface's preferred global IPv6 address (a `--public-ipv6` that is not
/// local is a translated address, as `--public-ip` may be).
fn underlay6(args: &Args, cfg: &NetworkConfig, host: &HostFacts) -> Option<Ipv6Addr> {
    match (&cfg.ipv6, args.public_ipv6) {
        (None, _) => None,
        (Some(_), Some(p6)) if host.local_ipv6.contains(&p6) => Some(p6),
        (Some(_), _) => host.underlay.addr6,
    }
}

/// Dual stack over both underlays: IPv6 packets must fit the IPv6 underlay, whose outer
/// header is 20 bytes longer, so the device's IPv6 MTU is set that much lower (flannel's
/// flannel-v6.<VNI> device has that MTU). Below IPv6's minimum the IPv6 underlay is not
/// used. Returns the IPv6 underlay kept and the IPv6 MTU when below `mtu`.
fn ipv6_mtu(
    cfg: &NetworkConfig,
    u: &Underlay,
    backend: &Backend,
    mtu: u32,
    underlay6: Option<Ipv6Addr>,
    notices: &mut Vec<Notice>,
) -> (Option<Ipv6Addr>, Option<u32>) {
    let (mut kept, mut ipv6_mtu) = (underlay6, None);
    if backend.encap.is_none() {
        // wireguard: its MTU counts the IPv6 header already, and its mode picks each
        // device's underlay.
        return (kept, ipv6_mtu);
    }
    if let (true, Some(addr6)) = (cfg.enable_ipv4, underlay6) {
        let m6 = backend.inner_mtu_v6(u.mtu).min(mtu);
        if m6 < IPV6_MIN_MTU {
            notices.push(Notice::Ipv6MtuBelowMinimum {
                underlay_mtu: u.mtu,
            });
            kept = None;
        } else if m6 < mtu {
            ipv6_mtu = Some(m6);
        }
        notices.push(Notice::Ipv6Underlay {
            addr6,
            ipv6_mtu: m6,
        });
    }
    if cfg.ipv6.is_some() && cfg.enable_ipv4 && kept.is_none() {
        notices.push(Notice::NoIpv6Underlay {
            iface: u.name.clone(),
        });
    }
    (kept, ipv6_mtu)
}

/// What our lease says: IPv4 only, IPv6 only, or both with `BackendV6Data`.
fn lease_attrs(
    backend: &Backend,
    enable_ipv4: bool,
    public_ip: Ipv4Addr,
    public_ipv6: Option<Ipv6Addr>,
) -> LeaseAttrs {
    match public_ipv6 {
        None => backend.lease_attrs(public_ip),
        Some(ip6) if !enable_ipv4 => backend.lease_attrs_v6_only(ip6),
        Some(ip6) => backend
            .lease_attrs(public_ip)
            .with_ipv6(ip6, backend.lease_v6_data(ip6)),
    }
}

/// The keepalive period: a quarter of `--subnet-lease-renew-margin` (minutes), within
/// 30 s to 15 min.
fn keepalive_every(renew_margin_min: u64) -> Duration {
    Duration::from_secs((renew_margin_min.saturating_mul(60) / 4).clamp(30, 15 * 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const KEY: &str = "/coreos.com/network/config";
    const V4: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const DUAL: &str = r#"{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:5::/56","Backend":{"Type":"vxlan"}}"#;
    const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"vxlan"}}"#;

    fn args(flags: &[&str]) -> Args {
        let argv = std::iter::once("overlayd").chain(flags.iter().copied());
        Args::try_parse_from(argv).expect("flags")
    }

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json.as_bytes()).expect("config")
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// eth0 at 192.0.2.1 (or none: IPv6 only) and `addr6`, `mtu` bytes, 8 cores.
    fn host(addr: Option<&str>, addr6: Option<&str>, mtu: u32) -> HostFacts {
        HostFacts {
            underlay: Underlay {
                name: "eth0".into(),
                index: 2,
                addr: addr.map_or(Ipv4Addr::UNSPECIFIED, |a| a.parse().unwrap()),
                addr6: addr6.map(ip6),
                mtu,
            },
            local_ipv6: addr6.into_iter().map(ip6).collect(),
            cores: 8,
            wireguard: None,
        }
    }

    fn plan(flags: &[&str], json: &str, host: &HostFacts) -> Result<Plan, DaemonError> {
        Plan::new(&args(flags), &cfg(json), host, KEY)
    }

    fn dual_host() -> HostFacts {
        host(Some("192.0.2.1"), Some("2001:db8::1"), 1500)
    }

    #[test]
    fn ipv4_only_vxlan_takes_the_underlay_and_its_mtu() {
        let p = plan(&[], V4, &host(Some("192.0.2.1"), None, 1500)).unwrap();
        let ip: Ipv4Addr = "192.0.2.1".parse().unwrap();
        assert_eq!((p.public_ip, p.underlay4), (ip, Some(ip)));
        assert_eq!((p.public_ipv6, p.underlay6), (None, None));
        assert_eq!((p.mtu, p.ipv6_mtu), (1450, None));
        assert_eq!(p.attrs, p.backend.lease_attrs(ip));
        assert_eq!(p.device(), "flannel.1");
        assert_eq!(p.l3_port, Some(8472));
        assert!(p.notices.is_empty(), "{:?}", p.notices);
    }

    #[test]
    fn a_network_holding_the_underlay_address_is_refused() {
        let e = plan(&[], V4, &host(Some("10.5.3.4"), None, 1500)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(KEY) && msg.contains("10.5.0.0/16"), "{msg}");
        let e = plan(&[], DUAL, &host(Some("192.0.2.1"), Some("fd00:5::9"), 1500)).unwrap_err();
        assert!(e.to_string().contains("fd00:5::/56"), "{e}");
    }

    #[test]
    fn public_ip_flag_is_published_not_bound() {
        let p = plan(&["--public-ip", "203.0.113.9"], V4, &dual_host()).unwrap();
        assert_eq!(p.public_ip, "203.0.113.9".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p.underlay4, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(p.attrs.public_ip, p.public_ip);
    }

    #[test]
    fn dual_stack_carries_ipv6_over_the_ipv6_underlay_20_bytes_lower() {
        let p = plan(&[], DUAL, &dual_host()).unwrap();
        let a6 = ip6("2001:db8::1");
        assert_eq!((p.public_ipv6, p.underlay6), (Some(a6), Some(a6)));
        assert_eq!((p.mtu, p.ipv6_mtu), (1450, Some(1430)));
        assert_eq!(p.attrs.public_ipv6, Some(a6));
        let PlaneKind::Routed { encap, encap6 } = p.plane else {
            panic!("vxlan is routed")
        };
        assert_eq!(Some(encap6), p.backend.encap6(a6));
        assert_ne!(encap6, encap, "vxlan's IPv6 VtepMAC is its own");
        assert_eq!(
            p.notices,
            [Notice::Ipv6Underlay {
                addr6: a6,
                ipv6_mtu: 1430
            }]
        );
    }

    #[test]
    fn a_small_underlay_mtu_sends_ipv6_over_ipv4() {
        // 1340 - 70 = 1270 < 1280 for IPv6 over IPv6; IPv4 still gets 1340 - 50.
        let p = plan(
            &[],
            DUAL,
            &host(Some("192.0.2.1"), Some("2001:db8::1"), 1340),
        )
        .unwrap();
        assert_eq!((p.mtu, p.ipv6_mtu, p.underlay6), (1290, None, None));
        assert_eq!(p.public_ipv6, Some(ip6("2001:db8::1")), "still published");
        assert!(p
            .notices
            .contains(&Notice::Ipv6MtuBelowMinimum { underlay_mtu: 1340 }));
        assert!(p.notices.contains(&Notice::NoIpv6Underlay {
            iface: "eth0".into()
        }));
    }

    #[test]
    fn a_config_mtu_caps_the_ipv6_mtu_too() {
        let json = r#"{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:5::/56","Backend":{"Type":"vxlan","MTU":1400}}"#;
        let p = plan(&[], json, &dual_host()).unwrap();
        assert_eq!((p.mtu, p.ipv6_mtu), (1400, None));
    }

    #[test]
    fn ipv6_only_uses_the_ipv6_underlay_and_writes_no_ipv4_rules() {
        let h = host(None, Some("2001:db8::1"), 1500);
        let p = plan(&["--ip-masq"], V6_ONLY, &h).unwrap();
        assert_eq!((p.mtu, p.ipv6_mtu), (1430, None));
        assert_eq!(p.underlay4, None);
        assert_eq!(p.underlay6, Some(ip6("2001:db8::1")));
        assert_eq!(p.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.attrs.backend_data, None);
        assert!(!p.masq && !p.forward_rules);
        assert_eq!(p.notices, [Notice::NoIpv6Masquerade]);
    }

    #[test]
    fn ipv6_only_without_an_ipv6_address_names_the_config_and_interface() {
        let e = plan(&[], V6_ONLY, &host(None, None, 1500)).unwrap_err();
        assert!(
            matches!(&e, DaemonError::Ipv6OnlyNoUnderlay { key, iface } if key == KEY && iface == "eth0"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_only_refuses_l2_networks() {
        let h = host(None, Some("2001:db8::1"), 1500);
        let e = plan(&["--l2", "tenant-a"], V6_ONLY, &h).unwrap_err();
        assert!(
            matches!(&e, DaemonError::Ipv6OnlyL2 { key } if key == KEY),
            "{e}"
        );
    }

    #[test]
    fn ipv4_enabled_needs_an_ipv4_address() {
        let e = plan(&[], V4, &host(None, Some("2001:db8::1"), 1500)).unwrap_err();
        assert!(
            matches!(&e, DaemonError::Host(HostError::NoAddress(n)) if n == "eth0"),
            "{e}"
        );
    }

    #[test]
    fn dual_stack_without_any_ipv6_address_asks_for_public_ipv6() {
        let e = plan(&[], DUAL, &host(Some("192.0.2.1"), None, 1500)).unwrap_err();
        assert!(
            matches!(&e, DaemonError::NoIpv6Address { iface } if iface == "eth0"),
            "{e}"
        );
        assert!(e.to_string().contains("--public-ipv6"));
    }

    #[test]
    fn a_translated_public_ipv6_is_published_but_not_bound() {
        let flags = ["--public-ipv6", "2001:db8:ff::9"];
        let p = plan(&flags, DUAL, &dual_host()).unwrap();
        assert_eq!(p.public_ipv6, Some(ip6("2001:db8:ff::9")));
        assert_eq!(p.underlay6, Some(ip6("2001:db8::1")), "the interface's own");
        // Without an IPv6 address of its own, the node has no IPv6 underlay.
        let p = plan(&flags, DUAL, &host(Some("192.0.2.1"), None, 1500)).unwrap();
        assert_eq!(
            (p.public_ipv6, p.underlay6),
            (Some(ip6("2001:db8:ff::9")), None)
        );
        assert!(p.notices.contains(&Notice::NoIpv6Underlay {
            iface: "eth0".into()
        }));
    }

    #[test]
    fn a_local_public_ipv6_is_the_one_bound() {
        let mut h = dual_host();
        h.local_ipv6.push(ip6("2001:db8::2"));
        let p = plan(&["--public-ipv6", "2001:db8::2"], DUAL, &h).unwrap();
        assert_eq!(
            (p.public_ipv6, p.underlay6),
            (Some(ip6("2001:db8::2")), Some(ip6("2001:db8::2")))
        );
    }

    #[test]
    fn backend_flag_must_match_the_config() {
        let e = plan(&["--backend", "udp"], V4, &dual_host()).unwrap_err();
        assert!(
            matches!(
                e,
                DaemonError::BackendMismatch {
                    flag: BackendKind::Udp,
                    etcd: BackendKind::Vxlan
                }
            ),
            "{e}"
        );
        assert!(plan(&["--backend", "vxlan"], V4, &dual_host()).is_ok());
    }

    #[test]
    fn queues_default_to_the_cores_up_to_four() {
        let mut h = dual_host();
        assert_eq!(plan(&[], V4, &h).unwrap().queues, 4);
        h.cores = 2;
        assert_eq!(plan(&[], V4, &h).unwrap().queues, 2);
        let p = plan(&["--queues", "8"], V4, &h).unwrap();
        assert_eq!((p.queues, p.tun_options().queues), (8, 8));
    }

    #[test]
    fn keepalive_is_a_quarter_of_the_renew_margin_within_bounds() {
        assert_eq!(keepalive_every(60), Duration::from_secs(900));
        assert_eq!(keepalive_every(20), Duration::from_secs(300));
        assert_eq!(keepalive_every(1), Duration::from_secs(30));
        assert_eq!(keepalive_every(1439), Duration::from_secs(900));
        assert_eq!(keepalive_every(u64::MAX), Duration::from_secs(900));
        let p = plan(&["--subnet-lease-renew-margin", "20"], V4, &dual_host()).unwrap();
        assert_eq!(p.keepalive_every, Duration::from_secs(300));
    }

    #[test]
    fn tunnel_gso_is_wanted_for_udp_backends_with_offloads() {
        let h = dual_host();
        let gre = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"gre"}}"#;
        let t = |flags: &[&str], json| plan(flags, json, &h).unwrap().tunnel;
        assert!(t(&[], V4).wanted && !t(&[], V4).required && !t(&[], V4).check_forward);
        assert!(!t(&[], gre).wanted, "raw GRE is not a UDP tunnel");
        assert!(
            t(&["--l2", "tenant-a"], gre).wanted,
            "L2 vxlan networks are"
        );
        assert!(!t(&["--no-offload"], V4).wanted);
        assert!(!t(&["--tunnel-gso", "off"], V4).wanted);
        assert!(t(&["--tunnel-gso", "on"], V4).required);
        assert!(t(&["--iptables-forward-rules=false"], V4).check_forward);
        assert!(!t(&["--iptables-forward-rules=false", "--no-offload"], V4).check_forward);
    }

    #[test]
    fn tunnel_gso_unavailable_is_an_error_only_when_required() {
        let mut t = TunnelPlan {
            wanted: true,
            required: false,
            check_forward: false,
        };
        assert!(t.unavailable("no TAP".into()).is_ok());
        t.required = true;
        let e = t.unavailable(FORWARD_DROPS.into()).unwrap_err();
        assert!(e.to_string().contains("--tunnel-gso auto"), "{e}");
        assert!(
            e.to_string().contains("FORWARD chain's policy is DROP"),
            "{e}"
        );
    }

    #[test]
    fn gre_has_no_l3_port_and_its_own_device() {
        let gre = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"gre","VNI":3}}"#;
        let p = plan(&[], gre, &dual_host()).unwrap();
        assert_eq!(p.l3_port, None);
        assert_eq!(p.tun_options().name, p.backend.device_name());
    }

    #[test]
    fn a_vni_over_16_bits_is_noticed() {
        let json = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":70000}}"#;
        let p = plan(&[], json, &dual_host()).unwrap();
        assert_eq!(p.notices, [Notice::VniOver16Bits(70000)]);
    }

    #[test]
    fn direct_routing_on_vxlan_and_gre_only() {
        for (kind, honoured) in [("vxlan", true), ("gre", true), ("udp", false)] {
            let json = format!(
                r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{kind}","DirectRouting":true}}}}"#
            );
            let p = plan(&[], &json, &dual_host()).unwrap();
            assert_eq!(p.direct_routing, honoured, "{kind}");
            let ignored = Notice::DirectRoutingIgnored(kind.parse().unwrap());
            assert_eq!(p.notices.contains(&ignored), !honoured, "{kind}");
            let off = format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{kind}"}}}}"#);
            assert!(!plan(&[], &off, &dual_host()).unwrap().direct_routing);
        }
    }

    #[test]
    fn offload_flags_reach_the_device_options() {
        let o = plan(&[], V4, &dual_host()).unwrap().tun_options();
        assert!(o.vnet_hdr && !o.tunnel_hdr && matches!(o.kind, tun::Kind::Tun));
        let o = plan(&["--no-offload"], V4, &dual_host())
            .unwrap()
            .tun_options();
        assert!(!o.vnet_hdr);
    }

    #[test]
    fn the_device_gets_each_family_of_the_lease() {
        let h = dual_host();
        let acquired = Acquired {
            subnet: "10.5.3.0/24".parse().unwrap(),
            ipv6_subnet: Some("fd00:5:0:3::/64".parse().unwrap()),
            lease_id: 7,
            reservation: false,
        };
        let c = cfg(DUAL);
        let s = plan(&[], DUAL, &h).unwrap().device_setup(&c, &acquired);
        assert_eq!((s.mtu, s.ipv6_mtu), (1450, Some(1430)));
        assert_eq!(s.v4, Some((acquired.subnet, c.network)));
        assert_eq!(
            s.v6,
            Some((acquired.ipv6_subnet.unwrap(), c.ipv6.unwrap().network))
        );
        let c = cfg(V4);
        let s = plan(&[], V4, &h).unwrap().device_setup(&c, &acquired);
        assert_eq!(s.v6, None, "IPv4 config: no IPv6 on the device");
        let c = cfg(V6_ONLY);
        let s = plan(&[], V6_ONLY, &host(None, Some("2001:db8::1"), 1500)).unwrap();
        assert_eq!(s.device_setup(&c, &acquired).v4, None);
    }

    #[test]
    fn flags_are_checked_before_anything_else() {
        assert!(config_from_flags(&args(&[])).unwrap().is_none());
        let c = config_from_flags(&args(&["--network", "10.9.0.0/16", "--backend", "udp"]))
            .unwrap()
            .expect("a config");
        assert_eq!(
            (c.network, c.backend.kind),
            ("10.9.0.0/16".parse().unwrap(), BackendKind::Udp)
        );
        let c = config_from_flags(&args(&["--network", "10.9.0.0/16"]))
            .unwrap()
            .unwrap();
        assert_eq!(c.backend.kind, BackendKind::Vxlan);
        let e = config_from_flags(&args(&["--network", "10.9.0.1/16"])).unwrap_err();
        assert!(matches!(e, DaemonError::FlagConfig(_)), "{e}");
        let e = config_from_flags(&args(&["--l2", "a,a"])).unwrap_err();
        assert!(e.to_string().contains("attached twice"), "{e}");
    }

    const WG_DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"wireguard"}}"#;

    /// `dual_host` with a wireguard key whose secret is all 7s.
    fn wg_host() -> HostFacts {
        HostFacts {
            wireguard: Some(Identity {
                secret: boringtun::x25519::StaticSecret::from([7; 32]),
                psk: None,
                keepalive: None,
            }),
            ..dual_host()
        }
    }

    #[test]
    fn wireguard_plans_its_devices_mtu_and_lease() {
        let h = wg_host();
        let p = plan(&[], WG_DUAL, &h).unwrap();
        assert_eq!(p.devices(), ["flannel-wg", "flannel-wg-v6"]);
        assert_eq!(p.device(), "flannel-wg");
        assert_eq!(
            (p.mtu, p.ipv6_mtu),
            (1420, None),
            "underlay less 80, both families"
        );
        assert!(!p.tunnel.wanted, "wireguard sends its own datagrams");
        assert!(p.notices.is_empty(), "{:?}", p.notices);
        let PlaneKind::Wireguard { layouts, .. } = &p.plane else {
            panic!("wireguard plane")
        };
        assert_eq!(layouts.len(), 2);
        let k = crate::control::lease::encode_key(&h.wireguard.as_ref().unwrap().public_key());
        assert_eq!(
            p.attrs.to_json(),
            format!(
                r#"{{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1","BackendType":"wireguard","BackendData":{{"Port":51820,"PublicKey":"{k}"}},"BackendV6Data":{{"Port":51821,"PublicKey":"{k}"}}}}"#
            )
        );
        // A configured MTU is the link's: wireguard's overhead comes off it too.
        let mtu1400 = WG_DUAL.replace(r#""wireguard""#, r#""wireguard","MTU":1400"#);
        assert_eq!(plan(&[], &mtu1400, &h).unwrap().mtu, 1320);
    }

    #[test]
    fn wireguard_lease_per_mode_and_family() {
        let h = wg_host();
        let key = h.wireguard.as_ref().unwrap().public_key();
        let auto = WG_DUAL.replace(r#""wireguard""#, r#""wireguard","Mode":"auto""#);
        let p = plan(&[], &auto, &h).unwrap();
        assert_eq!(p.devices(), ["flannel-wg"]);
        assert_eq!(
            p.attrs.wireguard_data(true).unwrap().port,
            51820,
            "one device's port"
        );
        let v4 = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#;
        let a = plan(&[], v4, &h).unwrap().attrs;
        assert_eq!((a.public_ipv6, a.backend_v6_data), (None, None));
        let v6 = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"wireguard"}}"#;
        let p = plan(&[], v6, &h).unwrap();
        assert_eq!(p.devices(), ["flannel-wg-v6"]);
        assert_eq!(
            (p.attrs.public_ip, &p.attrs.backend_data),
            (Ipv4Addr::UNSPECIFIED, &None)
        );
        assert_eq!(p.attrs.wireguard_data(true).unwrap().public_key, key);
    }

    #[test]
    fn wireguard_refusals_name_the_problem() {
        let e = plan(&["--l2", "tenant-a"], WG_DUAL, &wg_host()).unwrap_err();
        assert!(matches!(e, DaemonError::WireguardL2 { .. }), "{e}");
        let ipv6_mode = WG_DUAL.replace(r#""wireguard""#, r#""wireguard","Mode":"ipv6""#);
        let v4_host = HostFacts {
            underlay: host(Some("192.0.2.1"), None, 1500).underlay,
            local_ipv6: Vec::new(),
            ..wg_host()
        };
        let e = plan(&["--public-ipv6", "2001:db8::9"], &ipv6_mode, &v4_host).unwrap_err();
        assert!(e.to_string().contains("Mode \"ipv6\" needs"), "{e}");
        let e = plan(&[], WG_DUAL, &dual_host()).unwrap_err();
        assert!(e.to_string().contains("key file"), "{e}");
    }
}
