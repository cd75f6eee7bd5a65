//! The network config stored at `<prefix>/config`: parsing with flannel's defaults and
//! validation, and writing it back in flannel's JSON shape.
//!
//! Pure: bytes in, a validated [`NetworkConfig`] or a [`ConfigError`] out. Keys are matched
//! case-insensitively and unknown keys are ignored, as flannel's Go decoder does, so any
//! config a flannel v0.28 node accepts is read the same way here (see the notes on
//! [`NetworkConfig::parse`] for the few places overlayd is deliberately stricter or looser).

use super::family::{span, Family, Range};
use super::lease::{decode_key, encode_key};
use crate::fib::{V4, V6};
use crate::go::json::{self as gojson, Member, Members};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Default udp backend port (flannel's).
pub const UDP_DEFAULT_PORT: u16 = 8285;
/// Default vxlan backend port (the Linux kernel's, which flannel uses).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;
/// Default wireguard `ListenPort` (flannel's, WireGuard's usual port).
pub const WIREGUARD_DEFAULT_PORT: u16 = 51820;
/// Default wireguard `ListenPortV6` (flannel's).
pub const WIREGUARD_DEFAULT_PORT_V6: u16 = 51821;
/// Default VXLAN VNI / GRE key.
pub const DEFAULT_VNI: u32 = 1;
/// Largest VNI: 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Smallest underlay MTU accepted in `Backend.MTU`.
pub const MIN_MTU: u32 = 576;
/// Largest underlay MTU accepted in `Backend.MTU`.
pub const MAX_MTU: u32 = 65535;

/// How peers' packets are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// flannel's udp: the inner IP packet is the whole UDP payload.
    Udp,
    /// RFC 7348 VXLAN, compatible with flannel's kernel vxlan backend.
    Vxlan,
    /// GRE with a key (overlayd's own; flannel has no GRE backend).
    Gre,
    /// flannel's wireguard: WireGuard between nodes (its own data path, `crate::wg`).
    Wireguard,
}

impl BackendKind {
    /// Every kind, in the order they are listed in messages.
    pub const ALL: [BackendKind; 3] = [BackendKind::Udp, BackendKind::Vxlan, BackendKind::Gre];
    /// Every name `Backend.Type` accepts: the encapsulating backends and wireguard.
    const NAMED: [BackendKind; 4] = [
        BackendKind::Udp,
        BackendKind::Vxlan,
        BackendKind::Gre,
        BackendKind::Wireguard,
    ];

    /// The name used in `Backend.Type` and in leases' `BackendType`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Udp => "udp",
            BackendKind::Vxlan => "vxlan",
            BackendKind::Gre => "gre",
            BackendKind::Wireguard => "wireguard",
        }
    }

    /// The UDP port used when `Backend.Port` is absent or 0 (`None` for gre, which is not UDP).
    pub fn default_port(self) -> Option<u16> {
        match self {
            BackendKind::Udp => Some(UDP_DEFAULT_PORT),
            BackendKind::Vxlan => Some(VXLAN_DEFAULT_PORT),
            BackendKind::Gre => None,
            BackendKind::Wireguard => Some(WIREGUARD_DEFAULT_PORT),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = ConfigError;

    /// Case-insensitive, as flannel lower-cases `Backend.Type`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        BackendKind::NAMED
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ConfigError::UnknownBackend {
                value: s.to_owned(),
            })
    }
}

/// The `Backend` object, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `Backend.Type`.
    pub kind: BackendKind,
    /// `Backend.Port`: the UDP port (udp 8285, vxlan 8472 by default; unused by gre).
    pub port: u16,
    /// `Backend.VNI`: VXLAN network identifier, or the GRE key; 1..=16777215. Unused by udp.
    pub vni: u32,
    /// `Backend.MTU`: the underlay MTU to assume (flannel's vxlan meaning); `None` = the
    /// external interface's MTU.
    pub mtu: Option<u32>,
    /// gre: `Backend.Checksum`, send the GRE checksum (RFC 2784).
    pub checksum: bool,
    /// gre: `Backend.Sequence`, send GRE sequence numbers (RFC 2890).
    pub sequence: bool,
    /// `Backend.DirectRouting`: a peer on a link of this host is reached by a plain kernel
    /// route instead of the tunnel (vxlan, as flanneld's; gre, as flanneld's ipip). Parsed
    /// for every backend, so that the daemon can say when it is ignored.
    pub direct_routing: bool,
    /// wireguard's own fields (`port` is its `ListenPort`); `None` for the other backends.
    pub wireguard: Option<WireguardConfig>,
}

/// How flannel's wireguard backend lays out its devices (`Backend.Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireguardMode {
    /// `separate`: `flannel-wg` for IPv4 on `ListenPort`, `flannel-wg-v6` for IPv6 on
    /// `ListenPortV6`.
    #[default]
    Separate,
    /// `auto`, `ipv4`, `ipv6`: one `flannel-wg` device for both families (the underlay the
    /// peers' endpoints use: either, IPv4, IPv6).
    Auto,
    Ipv4,
    Ipv6,
}

impl WireguardMode {
    const ALL: [(WireguardMode, &'static str); 4] = [
        (WireguardMode::Separate, "separate"),
        (WireguardMode::Auto, "auto"),
        (WireguardMode::Ipv4, "ipv4"),
        (WireguardMode::Ipv6, "ipv6"),
    ];

    /// The name in `Backend.Mode`.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("", |(_, n)| n)
    }
}

/// flannel's wireguard `Backend` fields beyond `ListenPort` and `MTU`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardConfig {
    /// `ListenPortV6` (51821): the IPv6 device's port in separate mode.
    pub port_v6: u16,
    /// `PSK`: a pre-shared key as `wg genpsk` prints it (base64 of 32 bytes).
    pub psk: Option<[u8; 32]>,
    /// `PersistentKeepaliveInterval`, seconds (0 or absent: none).
    pub keepalive: Option<u16>,
    /// `Mode`.
    pub mode: WireguardMode,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            port_v6: WIREGUARD_DEFAULT_PORT_V6,
            psk: None,
            keepalive: None,
            mode: WireguardMode::Separate,
        }
    }
}

impl BackendConfig {
    /// The defaults for `kind`.
    pub fn new(kind: BackendKind) -> Self {
        BackendConfig {
            kind,
            port: kind.default_port().unwrap_or(0),
            vni: DEFAULT_VNI,
            mtu: None,
            checksum: false,
            sequence: false,
            direct_routing: false,
            wireguard: (kind == BackendKind::Wireguard).then(WireguardConfig::default),
        }
    }
}

/// The IPv6 half of a dual-stack or IPv6-only config (`EnableIPv6`), validated as flannel's
/// `CheckNetworkConfig` does (pkg/subnet/config.go). The control plane leases IPv6 subnets
/// from it; the data plane does not carry IPv6 packets yet (see docs/operations.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    /// `IPv6Network`.
    pub network: Ipv6Net,
    /// `IPv6SubnetLen` (default 64, or prefix+2 for networks narrower than /62).
    pub subnet_len: u8,
    /// `IPv6SubnetMin` (default: the second subnet).
    pub subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax` (default: the last subnet).
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Config {
    /// Whether `sn` is an IPv6 subnet this config hands out: a network address inside
    /// `IPv6Network`, `IPv6SubnetLen` long, between `IPv6SubnetMin` and `IPv6SubnetMax`.
    pub fn contains(&self, sn: Ipv6Net) -> bool {
        self.range().contains(sn)
    }

    /// Number of IPv6 subnets between `IPv6SubnetMin` and `IPv6SubnetMax`.
    pub fn subnet_count(&self) -> u128 {
        self.range().count()
    }

    /// The subnets handed out, as the family-generic checks and choice see them.
    pub fn range(&self) -> Range<V6> {
        Range {
            network: self.network,
            subnet_len: self.subnet_len,
            min: self.subnet_min,
            max: self.subnet_max,
        }
    }
}

impl From<Range<V6>> for Ipv6Config {
    fn from(r: Range<V6>) -> Self {
        Ipv6Config {
            network: r.network,
            subnet_len: r.subnet_len,
            subnet_min: r.min,
            subnet_max: r.max,
        }
    }
}

/// A validated network config, defaults applied.
///
/// The IPv4 fields (`network`, `subnet_len`, `subnet_min`, `subnet_max`) are meaningful only
/// when `enable_ipv4` is true; with `EnableIPv4: false` they hold flannel's zero values
/// (0.0.0.0/0, 0, 0.0.0.0), exactly as flannel's `Config` does, and [`contains`](Self::contains)
/// is false for every IPv4 subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `EnableIPv4` (default true).
    pub enable_ipv4: bool,
    /// `Network`: the whole overlay, e.g. 10.244.0.0/16 (host bits cleared).
    pub network: Ipv4Net,
    /// `SubnetLen`: each node's subnet prefix length.
    pub subnet_len: u8,
    /// `SubnetMin`: the lowest subnet handed out (its network address).
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: the highest subnet handed out (its network address).
    pub subnet_max: Ipv4Addr,
    /// `EnableIPv6` with its fields, if enabled.
    pub ipv6: Option<Ipv6Config>,
    /// `Backend`.
    pub backend: BackendConfig,
}

/// Why a network config was refused. Each message names the field, the value and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON at all.
    #[error("network config is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field holds the wrong JSON type.
    #[error("{field} is {got}: expected {expected}")]
    WrongType {
        field: &'static str,
        got: String,
        expected: &'static str,
    },
    /// `Network` (or `IPv6Network`) absent.
    #[error("{field} is missing: set it to a CIDR such as {example:?}")]
    MissingNetwork {
        field: &'static str,
        example: &'static str,
    },
    /// A network or address field that does not parse.
    #[error("{field} {value:?} is not valid: expected {expected}")]
    BadValue {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// `EnableIPv4` and `EnableIPv6` both false: no network at all.
    #[error("EnableIPv4 and EnableIPv6 are both false: enable at least one (EnableIPv4 defaults to true)")]
    NoFamily,
    /// The network is wider than overlayd accepts (see [`Family::MIN_PREFIX`]).
    #[error("{field} {network} is too wide: an overlay network must be /{min_prefix} or narrower, such as {example:?}, so that it cannot cover the hosts' own networks")]
    NetworkTooWide {
        field: &'static str,
        network: IpNet,
        min_prefix: u8,
        example: &'static str,
    },
    /// The overlay network overlaps an address or subnet of the host's underlay.
    #[error("{field} {network} overlaps the host's underlay {underlay}: choose an overlay network that is disjoint from the hosts' own addresses and routes")]
    OverlapsUnderlay {
        field: &'static str,
        network: IpNet,
        underlay: IpNet,
    },
    /// The network has too few addresses to split.
    #[error("{field} {network} is too small: its prefix must be /{max_prefix} or shorter")]
    NetworkTooSmall {
        field: &'static str,
        network: IpNet,
        max_prefix: u8,
    },
    /// A network given on the command line has host bits set.
    #[error("{field} {value} has host bits set: did you mean {network}?")]
    HostBitsSet {
        field: &'static str,
        value: IpNet,
        network: IpNet,
    },
    /// `SubnetLen` longer than allowed.
    #[error("{field} {value} is too long: it must be {max} or less")]
    SubnetLenTooLong {
        field: &'static str,
        value: u64,
        max: u8,
    },
    /// `SubnetLen` too short for the network to hold four subnets.
    #[error("{field} {value} is too short for {network}: it must be at least {min} so the network holds at least four subnets")]
    SubnetLenTooShort {
        field: &'static str,
        value: u64,
        network: IpNet,
        min: u8,
    },
    /// `SubnetMin`/`SubnetMax` outside the network.
    #[error(
        "{field} {value} is outside the network {network}: it must be a subnet address inside it"
    )]
    OutsideNetwork {
        field: &'static str,
        value: IpAddr,
        network: IpNet,
    },
    /// `SubnetMin`/`SubnetMax` not on a subnet boundary.
    #[error("{field} {value} is not on a /{subnet_len} boundary: use a subnet's network address such as {nearest}")]
    NotOnBoundary {
        field: &'static str,
        value: IpAddr,
        subnet_len: u8,
        nearest: IpAddr,
    },
    /// `SubnetMin` above `SubnetMax`.
    #[error(
        "{min_field} {min} is above {max_field} {max}: the minimum must not exceed the maximum"
    )]
    MinAboveMax {
        min_field: &'static str,
        min: IpAddr,
        max_field: &'static str,
        max: IpAddr,
    },
    /// `Backend.Type` names no backend overlayd has.
    #[error("Backend.Type {value:?} is not supported: expected one of udp, vxlan, gre, wireguard")]
    UnknownBackend { value: String },
    /// `Backend.Port` out of range.
    #[error(
        "Backend.Port {value} is out of range: expected 1..=65535 (0 or absent for the default)"
    )]
    BadPort { value: i128 },
    /// `Backend.VNI` out of range.
    #[error("Backend.VNI {value} is out of range: expected 1..=16777215 (a 24-bit identifier; absent for 1)")]
    BadVni { value: i128 },
    /// `Backend.MTU` out of range.
    #[error("Backend.MTU {value} is out of range: expected 576..=65535 (0 or absent for the interface's MTU)")]
    BadMtu { value: i128 },
}

/// Read a JSON integer (Go decodes only plain integer literals into int/uint fields).
fn integer(field: &'static str, v: &Member) -> Result<i128, ConfigError> {
    let wrong = || ConfigError::WrongType {
        field,
        got: gojson::describe(v),
        expected: "an integer",
    };
    match v.as_value() {
        Some(Value::Number(n)) => n
            .as_u64()
            .map(i128::from)
            .or_else(|| n.as_i64().map(i128::from))
            .ok_or_else(wrong),
        _ => Err(wrong()),
    }
}

fn boolean(field: &'static str, v: &Member) -> Result<bool, ConfigError> {
    v.as_value()
        .and_then(Value::as_bool)
        .ok_or_else(|| ConfigError::WrongType {
            field,
            got: gojson::describe(v),
            expected: "true or false",
        })
}

fn string<'a>(field: &'static str, v: &'a Member) -> Result<&'a str, ConfigError> {
    v.as_value()
        .and_then(Value::as_str)
        .ok_or_else(|| ConfigError::WrongType {
            field,
            got: gojson::describe(v),
            expected: "a string",
        })
}

/// A prefix length field (`SubnetLen`, `IPv6SubnetLen`): a Go `uint`, 0 = unset.
fn prefix_len(field: &'static str, v: Option<&Member>) -> Result<u64, ConfigError> {
    match v {
        None => Ok(0),
        Some(v) => {
            let n = integer(field, v)?;
            u64::try_from(n).map_err(|_| ConfigError::WrongType {
                field,
                got: gojson::describe(v),
                expected: "a non-negative integer",
            })
        }
    }
}

/// flannel's zero `IP4Net`, what the IPv4 network reads as when `EnableIPv4` is false.
const V4_UNSET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

impl NetworkConfig {
    /// Parse and validate the JSON stored at `<prefix>/config`.
    ///
    /// Compatible with flannel v0.28's `ParseConfig` + `CheckNetworkConfig`, with these
    /// deliberate differences: a `Backend` without `Type` (or with `"Type":""`, or
    /// `"Backend":null`) means udp where flannel fails on the empty type; `SubnetMin >
    /// SubnetMax` (and the IPv6 pair), out-of-range ports, VNIs and MTUs are refused up front;
    /// `null` for an address field counts as absent; `EnableIPv4` and `EnableIPv6` both false
    /// is refused here (flannel refuses it at startup: "none defined stack"); a `Network`
    /// wider than /8 or an `IPv6Network` wider than /16 is refused (flannel only refuses /0).
    /// As in Go, a field of the family that is not enabled must still have the right type and
    /// form (flannel's decoder fails on it), but is otherwise ignored.
    pub fn parse(json: &[u8]) -> Result<NetworkConfig, ConfigError> {
        let top: Members = serde_json::from_slice(json)?;

        let enable_v4 = match top.last_non_null("EnableIPv4") {
            Some(v) => boolean("EnableIPv4", v)?,
            None => true,
        };
        let enable_v6 = match top.last_non_null("EnableIPv6") {
            Some(v) => boolean("EnableIPv6", v)?,
            None => false,
        };
        if !enable_v4 && !enable_v6 {
            return Err(ConfigError::NoFamily);
        }

        let v4_fields = FamilyFields::<V4>::decode(&top)?;
        let v6_fields = FamilyFields::<V6>::decode(&top)?;
        let v4 = match enable_v4 {
            true => v4_fields.check()?,
            false => Range {
                network: V4_UNSET,
                subnet_len: 0,
                min: Ipv4Addr::UNSPECIFIED,
                max: Ipv4Addr::UNSPECIFIED,
            },
        };
        let ipv6 = match enable_v6 {
            true => Some(v6_fields.check()?.into()),
            false => None,
        };

        let backend = match top.last_non_null("Backend") {
            None => BackendConfig::new(BackendKind::Udp),
            Some(Member::Object(members)) => parse_backend(members)?,
            Some(v) => {
                return Err(ConfigError::WrongType {
                    field: "Backend",
                    got: gojson::describe(v),
                    expected: "an object such as {\"Type\":\"vxlan\"}",
                })
            }
        };

        Ok(NetworkConfig {
            enable_ipv4: enable_v4,
            network: v4.network,
            subnet_len: v4.subnet_len,
            subnet_min: v4.min,
            subnet_max: v4.max,
            ipv6,
            backend,
        })
    }

    /// Build a config from command-line flags (when overlayd creates `<prefix>/config`),
    /// with the same defaults and validation as [`parse`](Self::parse).
    pub fn from_cli(
        network: Ipv4Net,
        subnet_len: Option<u8>,
        backend: BackendKind,
    ) -> Result<NetworkConfig, ConfigError> {
        if network.trunc() != network {
            return Err(ConfigError::HostBitsSet {
                field: "Network",
                value: network.into(),
                network: network.trunc().into(),
            });
        }
        let r = check::<V4>(network, u64::from(subnet_len.unwrap_or(0)), None, None)?;
        Ok(NetworkConfig {
            enable_ipv4: true,
            network,
            subnet_len: r.subnet_len,
            subnet_min: r.min,
            subnet_max: r.max,
            ipv6: None,
            backend: BackendConfig::new(backend),
        })
    }

    /// flannel-style JSON for this config: `Network`, `SubnetLen`, `SubnetMin`/`SubnetMax` when
    /// not the defaults (or `"EnableIPv4":false`), then `EnableIPv6` with `IPv6Network`,
    /// `IPv6SubnetLen` and `IPv6SubnetMin`/`IPv6SubnetMax` when not the defaults, and
    /// `Backend` with `Type` plus any non-default backend field. [`parse`](Self::parse) of the
    /// result gives back an equal config.
    pub fn to_json(&self) -> String {
        let mut o = String::from("{");
        match self.range4() {
            Some(r) => write_range(&mut o, &r),
            None => o.push_str("\"EnableIPv4\":false"),
        }
        if let Some(v6) = &self.ipv6 {
            o.push_str(",\"EnableIPv6\":true,");
            write_range(&mut o, &v6.range());
        }
        let b = &self.backend;
        o.push_str(&format!(",\"Backend\":{{\"Type\":\"{}\"", b.kind));
        if Some(b.port) != b.kind.default_port() && b.kind != BackendKind::Gre {
            let name = match b.kind {
                BackendKind::Wireguard => "ListenPort",
                _ => "Port",
            };
            o.push_str(&format!(",\"{name}\":{}", b.port));
        }
        if let Some(w) = &b.wireguard {
            write_wireguard(&mut o, w);
        }
        if b.kind != BackendKind::Udp && b.vni != DEFAULT_VNI {
            o.push_str(&format!(",\"VNI\":{}", b.vni));
        }
        if let Some(mtu) = b.mtu {
            o.push_str(&format!(",\"MTU\":{mtu}"));
        }
        if b.kind == BackendKind::Gre {
            if b.checksum {
                o.push_str(",\"Checksum\":true");
            }
            if b.sequence {
                o.push_str(",\"Sequence\":true");
            }
        }
        if b.direct_routing {
            o.push_str(",\"DirectRouting\":true");
        }
        o.push_str("}}");
        o
    }

    /// Every IPv4 subnet that may be handed out, SubnetMin to SubnetMax in address order
    /// (none when IPv4 is disabled).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u64 << (32 - self.subnet_len);
        let len = self.subnet_len;
        let (first, last) = if self.enable_ipv4 {
            (
                u64::from(u32::from(self.subnet_min)),
                u64::from(u32::from(self.subnet_max)),
            )
        } else {
            (1, 0)
        };
        (first..=last)
            .step_by(size as usize)
            // The range ends at SubnetMax <= u32::MAX, so every value fits.
            .map(move |a| Ipv4Net::new(Ipv4Addr::from(a as u32), len).expect("len <= 30"))
    }

    /// Number of IPv4 subnets between SubnetMin and SubnetMax (0 when IPv4 is disabled).
    pub fn subnet_count(&self) -> u64 {
        // At most 2^30 IPv4 subnets.
        self.range4().map_or(0, |r| r.count() as u64)
    }

    /// Whether `sn` is an IPv4 subnet this config hands out: IPv4 enabled, a network address
    /// inside `Network`, `SubnetLen` long, between `SubnetMin` and `SubnetMax`.
    pub fn contains(&self, sn: Ipv4Net) -> bool {
        self.range4().is_some_and(|r| r.contains(sn))
    }

    /// The IPv4 subnets handed out, as the family-generic checks and choice see them
    /// (`None` when IPv4 is disabled).
    pub fn range4(&self) -> Option<Range<V4>> {
        self.enable_ipv4.then_some(Range {
            network: self.network,
            subnet_len: self.subnet_len,
            min: self.subnet_min,
            max: self.subnet_max,
        })
    }
}

/// Refuse a config whose enabled networks overlap any of `underlay`: the host's own
/// addresses (as /32 or /128) and the subnets of its interfaces and routes, default routes
/// left out (every network lies inside 0.0.0.0/0). Routing the
/// overlay there would take the host's own traffic into the tunnel.
pub fn overlaps_underlay(cfg: &NetworkConfig, underlay: &[IpNet]) -> Result<(), ConfigError> {
    let v4 = cfg
        .range4()
        .map(|r| (V4::FIELDS.network, IpNet::from(r.network)));
    let v6 = (cfg.ipv6.as_ref()).map(|c| (V6::FIELDS.network, IpNet::from(c.network)));
    for (field, network) in v4.into_iter().chain(v6) {
        let hit = underlay
            .iter()
            .find(|u| u.contains(&network) || network.contains(*u));
        if let Some(&underlay) = hit {
            return Err(ConfigError::OverlapsUnderlay {
                field,
                network,
                underlay,
            });
        }
    }
    Ok(())
}

/// `"Network":…,"SubnetLen":…` (or the IPv6 names), then `SubnetMin`/`SubnetMax` when they
/// are not the defaults.
fn write_range<F: Family>(o: &mut String, r: &Range<F>)
where
    F::Net: fmt::Display,
    F::Addr: fmt::Display,
{
    let f = F::FIELDS;
    o.push_str(&format!("\"{}\":", f.network));
    gojson::write_str(o, &r.network.to_string());
    o.push_str(&format!(",\"{}\":{}", f.subnet_len, r.subnet_len));
    let (dmin, dmax) = Range::<F>::default_min_max(r.network, r.subnet_len);
    for (field, v, default) in [(f.subnet_min, r.min, dmin), (f.subnet_max, r.max, dmax)] {
        if F::to_u128(v) != F::to_u128(default) {
            o.push_str(&format!(",\"{field}\":\"{v}\""));
        }
    }
}

/// One family's fields as decoded (type and form checked, as Go's decoder does), before
/// flannel's `CheckNetworkConfig` applies defaults and range checks.
struct FamilyFields<F: Family> {
    network: Option<F::Net>,
    subnet_len: u64,
    subnet_min: Option<F::Addr>,
    subnet_max: Option<F::Addr>,
}

/// An optional address field (`SubnetMin`, `IPv6SubnetMax`...); absent or unspecified
/// (0.0.0.0, `::`) means "use the default", as flannel's `ip.IsEmpty`.
fn addr_field<F: Family>(
    field: &'static str,
    v: Option<&Member>,
) -> Result<Option<F::Addr>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let s = string(field, v)?;
    let a = F::parse_addr(s).ok_or_else(|| ConfigError::BadValue {
        field,
        value: s.to_owned(),
        expected: F::ADDR_EXPECTED,
    })?;
    Ok(Some(a).filter(|a| F::to_u128(*a) != 0))
}

impl<F: Family> FamilyFields<F> {
    fn decode(top: &Members) -> Result<Self, ConfigError> {
        let f = F::FIELDS;
        let network = match top.last_non_null(f.network) {
            None => None,
            Some(v) => {
                let s = string(f.network, v)?;
                let net = F::parse_net(s).ok_or_else(|| ConfigError::BadValue {
                    field: f.network,
                    value: s.to_owned(),
                    expected: F::NET_EXPECTED,
                })?;
                // Go's ParseCIDR clears host bits.
                Some(F::net(F::network(&net), F::prefix_len(&net)))
            }
        };
        Ok(FamilyFields {
            network,
            subnet_len: prefix_len(f.subnet_len, top.last_non_null(f.subnet_len))?,
            subnet_min: addr_field::<F>(f.subnet_min, top.last_non_null(f.subnet_min))?,
            subnet_max: addr_field::<F>(f.subnet_max, top.last_non_null(f.subnet_max))?,
        })
    }

    /// flannel's `CheckNetworkConfig` for this family (pkg/subnet/config.go), plus min <= max.
    fn check(self) -> Result<Range<F>, ConfigError> {
        // flannel: an absent network reads as the empty one, refused as "no network".
        let network = self.network.ok_or(ConfigError::MissingNetwork {
            field: F::FIELDS.network,
            example: F::EXAMPLE,
        })?;
        check(network, self.subnet_len, self.subnet_min, self.subnet_max)
    }
}

/// flannel's `CheckNetworkConfig` for one family: `SubnetLen` 24 / 64 by default (prefix+2
/// for narrower networks), at most 30 / 126, at least prefix+2; without one, networks
/// narrower than /28 / /124 refused; min/max (`None`: the defaults) inside the network and
/// on a subnet boundary. Plus overlayd's own: min <= max, and the network /8 / /16 or
/// narrower ([`Family::MIN_PREFIX`]).
fn check<F: Family>(
    network: F::Net,
    req: u64,
    min: Option<F::Addr>,
    max: Option<F::Addr>,
) -> Result<Range<F>, ConfigError> {
    let f = F::FIELDS;
    let subnet_len = subnet_len::<F>(network, req)?;
    let (dmin, dmax) = Range::<F>::default_min_max(network, subnet_len);
    let (first, last) = span::<F>(network);
    let host_mask = (1u128 << (F::BITS - subnet_len)) - 1;
    let bound = |field: &'static str, v: Option<F::Addr>, default: F::Addr| {
        let Some(a) = v else { return Ok(default) };
        let n = F::to_u128(a);
        if !(first..=last).contains(&n) {
            return Err(ConfigError::OutsideNetwork {
                field,
                value: F::ip(a),
                network: F::ip_net(network),
            });
        }
        if n & host_mask != 0 {
            return Err(ConfigError::NotOnBoundary {
                field,
                value: F::ip(a),
                subnet_len,
                nearest: F::ip(F::from_u128(n & !host_mask)),
            });
        }
        Ok(a)
    };
    let min = bound(f.subnet_min, min, dmin)?;
    let max = bound(f.subnet_max, max, dmax)?;
    if F::to_u128(min) > F::to_u128(max) {
        return Err(ConfigError::MinAboveMax {
            min_field: f.subnet_min,
            min: F::ip(min),
            max_field: f.subnet_max,
            max: F::ip(max),
        });
    }
    Ok(Range {
        network,
        subnet_len,
        min,
        max,
    })
}

/// The network's size checked, and its subnets' length: `req`, or the default when 0.
fn subnet_len<F: Family>(network: F::Net, req: u64) -> Result<u8, ConfigError> {
    let f = F::FIELDS;
    let prefix = F::prefix_len(&network);
    if prefix < F::MIN_PREFIX {
        return Err(ConfigError::NetworkTooWide {
            field: f.network,
            network: F::ip_net(network),
            min_prefix: F::MIN_PREFIX,
            example: F::EXAMPLE,
        });
    }
    let max_prefix = F::MAX_SUBNET_LEN - 2;
    Ok(if req > 0 {
        if req > u64::from(F::MAX_SUBNET_LEN) {
            return Err(ConfigError::SubnetLenTooLong {
                field: f.subnet_len,
                value: req,
                max: F::MAX_SUBNET_LEN,
            });
        }
        if req < u64::from(prefix) + 2 {
            return Err(ConfigError::SubnetLenTooShort {
                field: f.subnet_len,
                value: req,
                network: F::ip_net(network),
                min: prefix + 2,
            });
        }
        req as u8 // <= MAX_SUBNET_LEN
    } else if prefix > max_prefix {
        return Err(ConfigError::NetworkTooSmall {
            field: f.network,
            network: F::ip_net(network),
            max_prefix,
        });
    } else if prefix <= F::DEFAULT_SUBNET_LEN - 2 {
        F::DEFAULT_SUBNET_LEN
    } else {
        prefix + 2
    })
}

fn parse_backend(m: &Members) -> Result<BackendConfig, ConfigError> {
    let kind = match m.last_non_null("Type") {
        None => BackendKind::Udp,
        Some(v) => match string("Backend.Type", v)? {
            "" => BackendKind::Udp,
            s => s.parse()?,
        },
    };
    let mut b = BackendConfig::new(kind);
    let wireguard = kind == BackendKind::Wireguard;
    let (key, field) = match wireguard {
        true => ("ListenPort", "Backend.ListenPort"),
        false => ("Port", "Backend.Port"),
    };
    if let Some(v) = m.last_non_null(key) {
        let p = integer(field, v)?;
        match p {
            0 => {}
            1..=65535 => b.port = p as u16,
            _ if wireguard => return Err(bad(field, p, "1..=65535 (0 or absent for 51820)")),
            _ => return Err(ConfigError::BadPort { value: p }),
        }
    }
    if kind == BackendKind::Wireguard {
        b.wireguard = Some(parse_wireguard(m)?);
    }
    if kind != BackendKind::Udp && kind != BackendKind::Wireguard {
        if let Some(v) = m.last_non_null("VNI") {
            let n = integer("Backend.VNI", v)?;
            match u32::try_from(n) {
                Ok(n @ 1..=MAX_VNI) => b.vni = n,
                _ => return Err(ConfigError::BadVni { value: n }),
            }
        }
    }
    if let Some(v) = m.last_non_null("MTU") {
        let n = integer("Backend.MTU", v)?;
        match u32::try_from(n) {
            Ok(0) => {}
            Ok(n @ MIN_MTU..=MAX_MTU) => b.mtu = Some(n),
            _ => return Err(ConfigError::BadMtu { value: n }),
        }
    }
    if kind == BackendKind::Gre {
        if let Some(v) = m.last_non_null("Checksum") {
            b.checksum = boolean("Backend.Checksum", v)?;
        }
        if let Some(v) = m.last_non_null("Sequence") {
            b.sequence = boolean("Backend.Sequence", v)?;
        }
    }
    if let Some(v) = m.last_non_null("DirectRouting") {
        b.direct_routing = boolean("Backend.DirectRouting", v)?;
    }
    Ok(b)
}

/// wireguard's fields as flannel decodes them (Go's JSON rules; `null` = absent).
fn parse_wireguard(m: &Members) -> Result<WireguardConfig, ConfigError> {
    let mut w = WireguardConfig::default();
    if let Some(v) = m.last_non_null("ListenPortV6") {
        match integer("Backend.ListenPortV6", v)? {
            0 => {}
            p @ 1..=65535 => w.port_v6 = p as u16,
            p => {
                return Err(bad(
                    "Backend.ListenPortV6",
                    p,
                    "1..=65535 (0 or absent for 51821)",
                ))
            }
        }
    }
    if let Some(v) = m.last_non_null("PSK") {
        let s = string("Backend.PSK", v)?;
        if !s.is_empty() {
            w.psk = Some(decode_key(s).ok_or_else(|| {
                bad(
                    "Backend.PSK",
                    s,
                    "32 bytes in base64, as `wg genpsk` prints them",
                )
            })?);
        }
    }
    if let Some(v) = m.last_non_null("PersistentKeepaliveInterval") {
        let n = integer("Backend.PersistentKeepaliveInterval", v)?;
        match u16::try_from(n) {
            Ok(0) => {}
            Ok(s) => w.keepalive = Some(s),
            Err(_) => {
                return Err(bad(
                    "Backend.PersistentKeepaliveInterval",
                    n,
                    "seconds, 0..=65535 (0 for none)",
                ))
            }
        }
    }
    if let Some(v) = m.last_non_null("Mode") {
        let s = string("Backend.Mode", v)?;
        w.mode = WireguardMode::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(mode, _)| *mode)
            .ok_or_else(|| bad("Backend.Mode", s, "one of separate, auto, ipv4, ipv6"))?;
    }
    Ok(w)
}

fn bad(field: &'static str, value: impl fmt::Display, expected: &'static str) -> ConfigError {
    ConfigError::BadValue {
        field,
        value: value.to_string(),
        expected,
    }
}

/// wireguard's non-default fields, for [`NetworkConfig::to_json`].
fn write_wireguard(o: &mut String, w: &WireguardConfig) {
    if w.port_v6 != WIREGUARD_DEFAULT_PORT_V6 {
        o.push_str(&format!(",\"ListenPortV6\":{}", w.port_v6));
    }
    if let Some(psk) = &w.psk {
        o.push_str(&format!(",\"PSK\":\"{}\"", encode_key(psk)));
    }
    if let Some(k) = w.keepalive {
        o.push_str(&format!(",\"PersistentKeepaliveInterval\":{k}"));
    }
    if w.mode != WireguardMode::Separate {
        o.push_str(&format!(",\"Mode\":\"{}\"", w.mode.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> NetworkConfig {
        NetworkConfig::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match NetworkConfig::parse(s.as_bytes()) {
            Ok(c) => panic!("{s} parsed: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// flannel's documented example (Documentation/configuration.md).
    #[test]
    fn flannel_doc_example() {
        let c = parse(
            r#"{
            "Network": "10.0.0.0/8",
            "SubnetLen": 20,
            "SubnetMin": "10.10.0.0",
            "SubnetMax": "10.99.0.0",
            "Backend": {
                "Type": "udp",
                "Port": 7890
            }
        }"#,
        );
        assert_eq!(c.network, net("10.0.0.0/8"));
        assert_eq!(c.subnet_len, 20);
        assert_eq!(c.subnet_min, ip("10.10.0.0"));
        assert_eq!(c.subnet_max, ip("10.99.0.0"));
        assert_eq!(c.backend.kind, BackendKind::Udp);
        assert_eq!(c.backend.port, 7890);
        assert!(c.ipv6.is_none());
    }

    /// The kube-flannel.yml net-conf.json.
    #[test]
    fn kube_flannel_example() {
        let c = parse(
            r#"{ "Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": { "Type": "vxlan" } }"#,
        );
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, ip("10.244.1.0"));
        assert_eq!(c.subnet_max, ip("10.244.255.0"));
        assert_eq!(c.backend, BackendConfig::new(BackendKind::Vxlan));
        assert_eq!(c.backend.port, 8472);
        assert_eq!(c.backend.vni, 1);
        assert_eq!(c.subnet_count(), 255);
    }

    #[test]
    fn dual_stack_example() {
        let c = parse(
            r#"{"EnableIPv6": true, "Network": "10.42.0.0/16", "IPv6Network": "2001:cafe:42::/56",
                "Backend": {"Type": "vxlan"}}"#,
        );
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(
            v6.subnet_min,
            "2001:cafe:42:1::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            v6.subnet_max,
            "2001:cafe:42:ff::".parse::<Ipv6Addr>().unwrap()
        );
        let c = parse(
            r#"{"EnableIPv6": true, "Network": "10.42.0.0/16", "IPv6Network": "fd00::/120"}"#,
        );
        assert_eq!(c.ipv6.unwrap().subnet_len, 122);
        assert!(err(r#"{"EnableIPv6": true, "Network": "10.42.0.0/16"}"#)
            .contains("IPv6Network is missing"));
        let e =
            err(r#"{"EnableIPv6": true, "Network": "10.42.0.0/16", "IPv6Network": "fd00::/125"}"#);
        assert!(e.contains("IPv6Network fd00::/125 is too small"), "{e}");
        let e = err(
            r#"{"EnableIPv6": true, "Network": "10.42.0.0/16", "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00:0:0:1::1"}"#,
        );
        assert!(
            e.contains("IPv6SubnetMin fd00:0:0:1::1 is not on a /64 boundary"),
            "{e}"
        );
    }

    /// flannel's documented dual-stack and IPv6-only net-conf.json (Documentation/configuration.md,
    /// "Dual-stack" and "IPv6 only" sections), and flannel's e2e dual-stack config.
    #[test]
    fn ipv6_only_and_dual_stack_like_flannel() {
        let c = parse(
            r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "2001:cafe:42::/56",
                "Backend": {"Type": "vxlan"}}"#,
        );
        assert!(!c.enable_ipv4);
        // flannel's zero values for the disabled family.
        assert_eq!(c.network, net("0.0.0.0/0"));
        assert_eq!(
            (c.subnet_len, c.subnet_min, c.subnet_max),
            (0, ip("0.0.0.0"), ip("0.0.0.0"))
        );
        assert_eq!(c.subnet_count(), 0);
        assert_eq!(c.subnets().count(), 0);
        assert!(!c.contains(net("0.0.0.0/0")));
        let v6 = c.ipv6.as_ref().unwrap();
        assert_eq!(v6.network, "2001:cafe:42::/56".parse::<Ipv6Net>().unwrap());
        assert_eq!(v6.subnet_count(), 255);
        assert!(v6.contains("2001:cafe:42:1::/64".parse().unwrap()));
        assert!(v6.contains("2001:cafe:42:ff::/64".parse().unwrap()));
        assert!(!v6.contains("2001:cafe:42::/64".parse().unwrap()));
        assert!(!v6.contains("2001:cafe:42:5::/65".parse().unwrap()));
        assert!(!v6.contains("2001:cafe:42:5::1/64".parse().unwrap()));
        assert!(!v6.contains("2001:cafe:43:5::/64".parse().unwrap()));
        // A Network given with EnableIPv4 false is decoded but ignored, as in flannel.
        let c2 = parse(
            r#"{"EnableIPv4":false,"Network":"10.0.0.0/30","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56"}"#,
        );
        assert_eq!(
            c2,
            NetworkConfig {
                backend: BackendConfig::new(BackendKind::Udp),
                ..c.clone()
            }
        );
        // Explicit range, case-insensitive keys.
        let c = parse(
            r#"{"network":"10.42.0.0/16","enableipv6":true,"ipv6network":"fd00:10::/48",
                "ipv6subnetlen":80,"IPV6SUBNETMIN":"fd00:10:0:5::","ipv6SubnetMax":"fd00:10:0:9::"}"#,
        );
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 80);
        assert_eq!(v6.subnet_min, "fd00:10:0:5::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_max, "fd00:10:0:9::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_count(), (4 << 16) + 1);
        // "::" for min/max means the default, like flannel's ip.IsEmpty.
        let c = parse(
            r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/60","IPv6SubnetMin":"::"}"#,
        );
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, "fd00:0:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_max, "fd00:0:0:f::".parse::<Ipv6Addr>().unwrap());
        // The v6 network's host bits are cleared, as Go's ParseCIDR does.
        let c =
            parse(r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::77/56"}"#);
        assert_eq!(
            c.ipv6.unwrap().network,
            "fd00::/56".parse::<Ipv6Net>().unwrap()
        );
    }

    #[test]
    fn ipv6_to_json_round_trips() {
        for json in [
            r#"{"Network":"10.42.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10::/56","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","IPv6SubnetLen":80,"IPv6SubnetMin":"fd00:10:0:5::","IPv6SubnetMax":"fd00:10:0:9::","Backend":{"Type":"gre","VNI":3}}"#,
        ] {
            let c = parse(json);
            assert_eq!(c.to_json(), json);
            assert_eq!(parse(&c.to_json()), c);
        }
    }

    #[test]
    fn keys_are_case_insensitive_and_last_wins() {
        let c = parse(
            r#"{"network":"10.1.0.0/16","SUBNETLEN":26,"backend":{"type":"VXLAN","vni":7,"port":4789}}"#,
        );
        assert_eq!(c.network, net("10.1.0.0/16"));
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.backend.kind, BackendKind::Vxlan);
        assert_eq!(c.backend.vni, 7);
        assert_eq!(c.backend.port, 4789);
        let c =
            parse(r#"{"Network":"10.1.0.0/16","SubnetLen":20,"subnetlen":22,"SubnetLen":null}"#);
        assert_eq!(c.subnet_len, 22);
    }

    #[test]
    fn subnet_len_defaults() {
        assert_eq!(parse(r#"{"Network":"10.0.0.0/8"}"#).subnet_len, 24);
        assert_eq!(parse(r#"{"Network":"10.0.0.0/22"}"#).subnet_len, 24);
        assert_eq!(parse(r#"{"Network":"10.0.0.0/23"}"#).subnet_len, 25);
        let c = parse(r#"{"Network":"10.0.0.0/28"}"#);
        assert_eq!(c.subnet_len, 30);
        assert_eq!(c.subnet_min, ip("10.0.0.4"));
        assert_eq!(c.subnet_max, ip("10.0.0.12"));
        assert_eq!(
            c.subnets().collect::<Vec<_>>(),
            vec![net("10.0.0.4/30"), net("10.0.0.8/30"), net("10.0.0.12/30")]
        );
        // Explicit 0 is "unset", as in Go.
        assert_eq!(
            parse(r#"{"Network":"10.0.0.0/16","SubnetLen":0}"#).subnet_len,
            24
        );
    }

    #[test]
    fn defaults_and_host_bits() {
        let c = parse(r#"{"Network":"10.5.7.9/16"}"#);
        assert_eq!(c.network, net("10.5.0.0/16"));
        assert_eq!(c.backend, BackendConfig::new(BackendKind::Udp));
        assert_eq!(c.backend.port, 8285);
        let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{}}"#);
        assert_eq!(c.backend.kind, BackendKind::Udp);
        let c = parse(r#"{"Network":"10.5.0.0/16","Backend":null,"SubnetMin":"0.0.0.0"}"#);
        assert_eq!(c.backend.kind, BackendKind::Udp);
        assert_eq!(c.subnet_min, ip("10.5.1.0"));
        let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"gre"}}"#);
        assert_eq!(c.backend.vni, 1);
        assert!(!c.backend.checksum && !c.backend.sequence);
        let c = parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"gre","VNI":42,"Checksum":true,"Sequence":true,"MTU":9000}}"#,
        );
        assert_eq!(c.backend.vni, 42);
        assert!(c.backend.checksum && c.backend.sequence);
        assert_eq!(c.backend.mtu, Some(9000));
        // The whole network range when min/max are the default.
        let c = parse(r#"{"Network":"0.0.0.0/8"}"#);
        assert_eq!(c.subnet_max, ip("0.255.255.0"));
        let c = parse(r#"{"Network":"255.0.0.0/8","SubnetLen":30}"#);
        assert_eq!(c.subnet_max, ip("255.255.255.252"));
        assert_eq!(c.subnet_count(), (1 << 22) - 1);
        assert!(c.contains(net("255.255.255.252/30")));
        assert_eq!(c.subnets().nth(2), Some(net("255.0.0.12/30")));
    }

    /// Invalid configs and the words their error must contain.
    const VALIDATION_CASES: &[(&str, &[&str])] = &[
        ("not json", &["not valid JSON"]),
        ("[1,2]", &["not valid JSON"]),
        ("{}", &["Network is missing", "10.244.0.0/16"]),
        (r#"{"Network":null}"#, &["Network is missing"]),
        (
            r#"{"Network":16}"#,
            &["Network is number 16", "expected a string"],
        ),
        (
            r#"{"Network":"10.0.0.0"}"#,
            &["Network \"10.0.0.0\" is not valid", "IPv4 CIDR"],
        ),
        (
            r#"{"Network":"fd00::/64"}"#,
            &["Network \"fd00::/64\"", "IPv4 CIDR"],
        ),
        (
            r#"{"Network":"0.0.0.0/0"}"#,
            &[
                "Network 0.0.0.0/0 is too wide",
                "/8 or narrower",
                "10.244.0.0/16",
            ],
        ),
        (
            r#"{"Network":"10.0.0.0/7"}"#,
            &["Network 10.0.0.0/7 is too wide", "/8 or narrower"],
        ),
        (
            r#"{"Network":"10.0.0.0/29"}"#,
            &["Network 10.0.0.0/29 is too small", "/28"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
            &["SubnetLen 31 is too long", "30 or less"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#,
            &["SubnetLen 17 is too short for 10.0.0.0/16", "at least 18"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#,
            &["SubnetLen is number -1", "non-negative"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":24.0}"#,
            &["SubnetLen is number 24.0", "integer"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#,
            &["SubnetLen is string \"24\"", "integer"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
            &["SubnetMin 10.1.0.0 is outside the network 10.0.0.0/16"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMax":"11.0.0.0"}"#,
            &["SubnetMax 11.0.0.0 is outside"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.1"}"#,
            &["SubnetMin 10.0.1.1 is not on a /24 boundary", "10.0.1.0"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.9.128"}"#,
            &["SubnetMax 10.0.9.128 is not on a /24 boundary", "10.0.9.0"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}"#,
            &["SubnetMin 10.0.9.0 is above SubnetMax 10.0.3.0"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"banana"}"#,
            &["SubnetMin \"banana\" is not valid", "IPv4 address"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"fd00::"}"#,
            &["SubnetMin \"fd00::\""],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv4":false}"#,
            &[
                "EnableIPv4 and EnableIPv6 are both false",
                "enable at least one",
            ],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv4":false,"EnableIPv6":false,"IPv6Network":"fd00::/56"}"#,
            &["EnableIPv4 and EnableIPv6 are both false"],
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true}"#,
            &["IPv6Network is missing", "fd00:10:244::/56"],
        ),
        (
            r#"{"EnableIPv6":true,"IPv6Network":"fd00::/56"}"#,
            &["Network is missing"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":"yes","IPv6Network":"fd00::/56"}"#,
            &["EnableIPv6 is string \"yes\"", "true or false"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"10.1.0.0/16"}"#,
            &["IPv6Network \"10.1.0.0/16\" is not valid", "IPv6 CIDR"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"::/0"}"#,
            &[
                "IPv6Network ::/0 is too wide",
                "/16 or narrower",
                "fd00:10:244::/56",
            ],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"2000::/3"}"#,
            &["IPv6Network 2000::/3 is too wide", "/16 or narrower"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":127}"#,
            &["IPv6SubnetLen 127 is too long", "126 or less"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":57}"#,
            &["IPv6SubnetLen 57 is too short for fd00::/56", "at least 58"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::"}"#,
            &["IPv6SubnetMin fd01:: is outside the network fd00::/56"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMax":"fd00:0:0:9::1"}"#,
            &[
                "IPv6SubnetMax fd00:0:0:9::1 is not on a /64 boundary",
                "fd00:0:0:9::",
            ],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:3::"}"#,
            &["IPv6SubnetMin fd00:0:0:9:: is above IPv6SubnetMax fd00:0:0:3::"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"10.0.0.0"}"#,
            &["IPv6SubnetMin \"10.0.0.0\" is not valid", "IPv6 address"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":"64"}"#,
            &["IPv6SubnetLen is string \"64\"", "integer"],
        ),
        // A disabled family's fields must still decode, as Go's decoder requires.
        (
            r#"{"EnableIPv4":false,"Network":"banana","EnableIPv6":true,"IPv6Network":"fd00::/56"}"#,
            &["Network \"banana\" is not valid"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","IPv6Network":"garbage"}"#,
            &["IPv6Network \"garbage\" is not valid"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv4":"no"}"#,
            &["EnableIPv4 is string \"no\"", "true or false"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#,
            &["Backend is string \"vxlan\"", "object"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw"}}"#,
            &["Backend.Type \"host-gw\"", "udp, vxlan, gre"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":7}}"#,
            &["Backend.Type is number 7"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#,
            &["Backend.VNI 0 is out of range", "1..=16777215"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            &["Backend.VNI 16777216 is out of range"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"gre","VNI":-3}}"#,
            &["Backend.VNI -3 is out of range"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":65536}}"#,
            &["Backend.Port 65536 is out of range", "1..=65535"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Port":-1}}"#,
            &["Backend.Port -1 is out of range"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","MTU":100}}"#,
            &["Backend.MTU 100 is out of range", "576..=65535"],
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"gre","Checksum":1}}"#,
            &["Backend.Checksum is number 1", "true or false"],
        ),
    ];

    #[test]
    fn validation_errors_name_field_and_value() {
        let cases = VALIDATION_CASES;
        for (json, wants) in cases {
            let e = err(json);
            for w in *wants {
                assert!(e.contains(w), "{json}: {e:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn udp_ignores_vni_and_gre_ignores_port() {
        let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp","VNI":0}}"#);
        assert_eq!(c.backend.vni, 1);
        let c = parse(
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":0,"GBP":true,"DirectRouting":true}}"#,
        );
        assert_eq!(c.backend.port, 8472);
    }

    #[test]
    fn direct_routing_as_flannel_spells_it() {
        let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert!(!c.backend.direct_routing);
        for spelt in ["DirectRouting", "directRouting", "directrouting"] {
            let c = parse(&format!(
                r#"{{"Network":"10.0.0.0/16","Backend":{{"Type":"vxlan","{spelt}":true}}}}"#
            ));
            assert!(c.backend.direct_routing, "{spelt}");
        }
        let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"gre","DirectRouting":true}}"#);
        assert_eq!(
            c.to_json(),
            r#"{"Network":"10.0.0.0/16","SubnetLen":24,"Backend":{"Type":"gre","DirectRouting":true}}"#
        );
        assert_eq!(NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c);
        let e =
            err(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#);
        assert!(e.contains("Backend.DirectRouting"), "{e}");
    }

    #[test]
    fn wireguard_fields_like_flannel() {
        let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#);
        assert_eq!(c.backend.kind, BackendKind::Wireguard);
        assert_eq!(c.backend.port, 51820);
        assert_eq!(c.backend.wireguard, Some(WireguardConfig::default()));
        let psk = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let c = parse(&format!(
            r#"{{"Network":"10.5.0.0/16","Backend":{{"type":"WireGuard","listenport":4000,"ListenPortV6":4001,"PSK":"{psk}","PersistentKeepaliveInterval":25,"Mode":"auto","MTU":1400,"VNI":9}}}}"#
        ));
        let w = c.backend.wireguard.clone().unwrap();
        assert_eq!(
            (c.backend.port, c.backend.mtu, c.backend.vni),
            (4000, Some(1400), 1)
        );
        assert_eq!(w.port_v6, 4001);
        assert_eq!(w.psk, Some([1; 32]));
        assert_eq!((w.keepalive, w.mode), (Some(25), WireguardMode::Auto));
        assert_eq!(NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c);
        assert!(c.to_json().contains(&format!(
            r#""ListenPort":4000,"ListenPortV6":4001,"PSK":"{psk}""#
        )));
        for (json, want) in [
            (
                r#"{"PSK":"short"}"#,
                "Backend.PSK \"short\" is not valid: expected 32 bytes in base64",
            ),
            (r#"{"PSK":5}"#, "Backend.PSK is number 5: expected a string"),
            (
                r#"{"Mode":"both"}"#,
                "Backend.Mode \"both\" is not valid: expected one of separate, auto, ipv4, ipv6",
            ),
            (r#"{"Mode":""}"#, "Backend.Mode \"\" is not valid"),
            (
                r#"{"ListenPort":70000}"#,
                "Backend.ListenPort \"70000\" is not valid: expected 1..=65535",
            ),
            (
                r#"{"ListenPortV6":-1}"#,
                "Backend.ListenPortV6 \"-1\" is not valid",
            ),
            (
                r#"{"PersistentKeepaliveInterval":65536}"#,
                "Backend.PersistentKeepaliveInterval \"65536\" is not valid: expected seconds",
            ),
        ] {
            let json = json.replacen('{', r#"{"Type":"wireguard","#, 1);
            let e = err(&format!(r#"{{"Network":"10.5.0.0/16","Backend":{json}}}"#));
            assert!(e.contains(want), "{json}: {e}");
        }
        // null is absent, as in Go; 0 ports and keepalive mean the defaults.
        let c = parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Mode":null,"PSK":"","ListenPort":0,"PersistentKeepaliveInterval":0}}"#,
        );
        assert_eq!(c.backend, BackendConfig::new(BackendKind::Wireguard));
    }

    #[test]
    fn backend_kind_names() {
        for k in BackendKind::ALL {
            assert_eq!(k.to_string().parse::<BackendKind>().unwrap(), k);
        }
        assert_eq!("VxLaN".parse::<BackendKind>().unwrap(), BackendKind::Vxlan);
        let e = "ipip".parse::<BackendKind>().unwrap_err().to_string();
        assert!(
            e.contains("\"ipip\"") && e.contains("udp, vxlan, gre"),
            "{e}"
        );
    }

    #[test]
    fn from_cli_and_to_json() {
        let c = NetworkConfig::from_cli(net("10.244.0.0/16"), None, BackendKind::Vxlan).unwrap();
        assert_eq!(
            c.to_json(),
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#
        );
        assert_eq!(NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c);
        let c = NetworkConfig::from_cli(net("10.5.0.0/24"), Some(28), BackendKind::Udp).unwrap();
        assert_eq!(c.subnet_min, ip("10.5.0.16"));
        assert_eq!(
            c.to_json(),
            r#"{"Network":"10.5.0.0/24","SubnetLen":28,"Backend":{"Type":"udp"}}"#
        );
        let e = NetworkConfig::from_cli(net("10.5.3.0/16"), None, BackendKind::Udp).unwrap_err();
        assert!(e
            .to_string()
            .contains("10.5.3.0/16 has host bits set: did you mean 10.5.0.0/16"));
        let e =
            NetworkConfig::from_cli(net("10.5.0.0/16"), Some(31), BackendKind::Udp).unwrap_err();
        assert!(e.to_string().contains("SubnetLen 31"));
        let e = NetworkConfig::from_cli(net("10.5.0.0/30"), None, BackendKind::Udp).unwrap_err();
        assert!(e.to_string().contains("too small"));
        let e = NetworkConfig::from_cli(net("0.0.0.0/0"), None, BackendKind::Udp).unwrap_err();
        assert!(
            e.to_string().contains("Network 0.0.0.0/0 is too wide"),
            "{e}"
        );

        let mut c = parse(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"gre","VNI":9,"MTU":1500,"Checksum":true,"Sequence":true}}"#,
        );
        assert_eq!(
            c.to_json(),
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"gre","VNI":9,"MTU":1500,"Checksum":true,"Sequence":true}}"#
        );
        assert_eq!(NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c);
        c.backend = BackendConfig::new(BackendKind::Udp);
        c.backend.port = 7890;
        assert!(c
            .to_json()
            .ends_with(r#""Backend":{"Type":"udp","Port":7890}}"#));
        assert_eq!(NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c);
    }

    #[test]
    fn underlay_overlap_is_refused() {
        let dual =
            parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#);
        let u = |s: &[&str]| s.iter().map(|n| n.parse().unwrap()).collect::<Vec<IpNet>>();
        let ok = u(&[
            "192.168.1.0/24",
            "10.245.0.1/32",
            "10.0.0.0/16",
            "fd00:11::/64",
        ]);
        assert!(overlaps_underlay(&dual, &ok).is_ok());
        assert!(overlaps_underlay(&dual, &[]).is_ok());
        let cases = [
            // An address inside the overlay, a wider route around it, one inside it.
            (
                "10.244.3.7/32",
                "Network 10.244.0.0/16 overlaps the host's underlay 10.244.3.7/32",
            ),
            (
                "10.0.0.0/8",
                "Network 10.244.0.0/16 overlaps the host's underlay 10.0.0.0/8",
            ),
            ("10.244.128.0/17", "underlay 10.244.128.0/17"),
            (
                "fd00:10:0:5::1/128",
                "IPv6Network fd00:10::/56 overlaps the host's underlay fd00:10:0:5::1/128",
            ),
            ("fd00::/16", "IPv6Network fd00:10::/56 overlaps"),
        ];
        for (under, want) in cases {
            let e = overlaps_underlay(&dual, &u(&["192.168.1.0/24", under])).unwrap_err();
            assert!(e.to_string().contains(want), "{under}: {e}");
        }
        // A disabled family is not checked.
        let v6_only =
            parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#);
        assert!(overlaps_underlay(&v6_only, &u(&["0.0.0.0/0"])).is_ok());
        let v4_only = parse(r#"{"Network":"10.244.0.0/16"}"#);
        assert!(overlaps_underlay(&v4_only, &u(&["fd00:10::1/128"])).is_ok());
        assert!(overlaps_underlay(&v4_only, &u(&["0.0.0.0/0"])).is_err());
    }

    #[test]
    fn contains_checks_everything() {
        let c = parse(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.5.0","SubnetMax":"10.0.9.0"}"#);
        assert!(c.contains(net("10.0.5.0/24")));
        assert!(c.contains(net("10.0.9.0/24")));
        assert!(!c.contains(net("10.0.4.0/24")));
        assert!(!c.contains(net("10.0.10.0/24")));
        assert!(!c.contains(net("10.0.6.0/25")));
        assert!(!c.contains(net("10.0.6.0/23")));
        assert!(!c.contains(net("10.0.6.1/24")));
        assert!(!c.contains(net("11.0.6.0/24")));
        assert_eq!(c.subnets().count(), 5);
        assert_eq!(c.subnet_count(), 5);
        assert!(c.subnets().all(|s| c.contains(s)));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = NetworkConfig::parse(&bytes);
        }

        #[test]
        fn ipv6_configs_are_consistent(
            addr in proptest::prelude::any::<u128>(),
            prefix in 1u8..=128,
            len in 0u64..140,
            min in proptest::option::of(proptest::prelude::any::<u128>()),
            max in proptest::option::of(proptest::prelude::any::<u128>()),
            v4 in proptest::prelude::any::<bool>(),
        ) {
            let net = Ipv6Net::new(Ipv6Addr::from(addr), prefix).unwrap();
            let field = |k: &str, a: Option<u128>| a.map(|a| format!(r#","{k}":"{}""#, Ipv6Addr::from(a))).unwrap_or_default();
            let json = format!(
                r#"{{"EnableIPv4":{v4},"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"{net}","IPv6SubnetLen":{len}{}{}}}"#,
                field("IPv6SubnetMin", min),
                field("IPv6SubnetMax", max),
            );
            if let Ok(c) = NetworkConfig::parse(json.as_bytes()) {
                let v6 = c.ipv6.clone().unwrap();
                proptest::prop_assert!(v6.subnet_len <= 126 && v6.subnet_len >= v6.network.prefix_len() + 2);
                proptest::prop_assert!(v6.subnet_min <= v6.subnet_max);
                proptest::prop_assert!(v6.contains(Ipv6Net::new(v6.subnet_min, v6.subnet_len).unwrap()));
                proptest::prop_assert!(v6.contains(Ipv6Net::new(v6.subnet_max, v6.subnet_len).unwrap()));
                proptest::prop_assert!(v6.subnet_count() >= 1);
                proptest::prop_assert_eq!(NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c);
            } else {
                // Refused only for a reason flannel's CheckNetworkConfig (or min <= max) gives.
                let refused = prefix < 16
                    || prefix > 124 && len == 0
                    || len > 126
                    || (len > 0 && len < u64::from(prefix) + 2)
                    || min.is_some() || max.is_some();
                proptest::prop_assert!(refused, "{json}");
            }
        }

        #[test]
        fn parse_never_panics_on_near_configs(
            net in "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9]{1,2}",
            len in proptest::prelude::any::<i64>(),
            min in "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
            vni in proptest::prelude::any::<i64>(),
        ) {
            let json = format!(r#"{{"Network":"{net}","SubnetLen":{},"SubnetMin":"{min}","Backend":{{"Type":"vxlan","VNI":{vni}}}}}"#, len % 40);
            if let Ok(c) = NetworkConfig::parse(json.as_bytes()) {
                proptest::prop_assert!(c.subnet_len <= 30 && c.subnet_min <= c.subnet_max);
                proptest::prop_assert!(c.contains(Ipv4Net::new(c.subnet_min, c.subnet_len).unwrap()));
                proptest::prop_assert!(c.contains(Ipv4Net::new(c.subnet_max, c.subnet_len).unwrap()));
                proptest::prop_assert_eq!(NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c);
            }
        }
    }
}
