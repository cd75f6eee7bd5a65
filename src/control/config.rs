//! The network config stored at `<prefix>/config`: parsing with flannel's defaults and
//! validation, and writing it back in flannel's JSON shape.
//!
//! Pure: bytes in, a validated [`NetworkConfig`] or a [`ConfigError`] out. Keys are matched
//! case-insensitively and unknown keys are ignored, as flannel's Go decoder does, so any
//! config a flannel v0.28 node accepts is read the same way here (see the notes on
//! [`NetworkConfig::parse`] for the few places overlayd is deliberately stricter or looser).

use super::gojson::{self, Member, Members};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Default udp backend port (flannel's).
pub const UDP_DEFAULT_PORT: u16 = 8285;
/// Default vxlan backend port (the Linux kernel's, which flannel uses).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;
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
}

impl BackendKind {
    /// Every kind, in the order they are listed in messages.
    pub const ALL: [BackendKind; 3] = [BackendKind::Udp, BackendKind::Vxlan, BackendKind::Gre];

    /// The name used in `Backend.Type` and in leases' `BackendType`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Udp => "udp",
            BackendKind::Vxlan => "vxlan",
            BackendKind::Gre => "gre",
        }
    }

    /// The UDP port used when `Backend.Port` is absent or 0 (`None` for gre, which is not UDP).
    pub fn default_port(self) -> Option<u16> {
        match self {
            BackendKind::Udp => Some(UDP_DEFAULT_PORT),
            BackendKind::Vxlan => Some(VXLAN_DEFAULT_PORT),
            BackendKind::Gre => None,
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
        BackendKind::ALL
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
        }
    }
}

/// The IPv6 half of a dual-stack config (`EnableIPv6`), validated as flannel does. overlayd
/// does not carry IPv6 yet; the daemon refuses such configs, but they parse.
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

/// A validated network config, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
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
    /// `EnableIPv4` is false: overlayd needs the IPv4 network.
    #[error("EnableIPv4 is false: overlayd needs an IPv4 Network (IPv6-only configs are not supported); remove EnableIPv4 or set it to true")]
    Ipv4Disabled,
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
    #[error("Backend.Type {value:?} is not supported: expected one of udp, vxlan, gre")]
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

const V4_EXAMPLE: &str = "10.244.0.0/16";
const V6_EXAMPLE: &str = "fd00:10:244::/56";

impl NetworkConfig {
    /// Parse and validate the JSON stored at `<prefix>/config`.
    ///
    /// Compatible with flannel v0.28's `ParseConfig` + `CheckNetworkConfig`, with these
    /// deliberate differences: `EnableIPv4: false` is refused (overlayd needs IPv4);
    /// a `Backend` without `Type` (or with `"Type":""`, or `"Backend":null`) means udp where
    /// flannel fails on the empty type; `SubnetMin > SubnetMax`, out-of-range ports, VNIs
    /// and MTUs are refused up front; `null` for an address field counts as absent.
    pub fn parse(json: &[u8]) -> Result<NetworkConfig, ConfigError> {
        let top: Members = serde_json::from_slice(json)?;

        let enable_v4 = match top.last_non_null("EnableIPv4") {
            Some(v) => boolean("EnableIPv4", v)?,
            None => true,
        };
        if !enable_v4 {
            return Err(ConfigError::Ipv4Disabled);
        }
        let enable_v6 = match top.last_non_null("EnableIPv6") {
            Some(v) => boolean("EnableIPv6", v)?,
            None => false,
        };

        let network = match top.last_non_null("Network") {
            None => {
                return Err(ConfigError::MissingNetwork {
                    field: "Network",
                    example: V4_EXAMPLE,
                })
            }
            Some(v) => {
                let s = string("Network", v)?;
                let net = Ipv4Net::from_str(s).map_err(|_| ConfigError::BadValue {
                    field: "Network",
                    value: s.to_owned(),
                    expected: "an IPv4 CIDR such as \"10.244.0.0/16\"",
                })?;
                // Go's ParseCIDR clears host bits.
                net.trunc()
            }
        };
        if network.prefix_len() == 0 {
            // flannel treats 0.0.0.0/0 as "no network".
            return Err(ConfigError::BadValue {
                field: "Network",
                value: network.to_string(),
                expected: "a CIDR narrower than /0, such as \"10.244.0.0/16\"",
            });
        }
        let subnet_len = prefix_len("SubnetLen", top.last_non_null("SubnetLen"))?;
        let subnet_min = v4_addr("SubnetMin", top.last_non_null("SubnetMin"))?;
        let subnet_max = v4_addr("SubnetMax", top.last_non_null("SubnetMax"))?;
        let (subnet_len, subnet_min, subnet_max) =
            check_v4(network, subnet_len, subnet_min, subnet_max)?;

        let ipv6 = if enable_v6 {
            Some(parse_v6(&top)?)
        } else {
            None
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
            network,
            subnet_len,
            subnet_min,
            subnet_max,
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
        if network.prefix_len() == 0 {
            return Err(ConfigError::BadValue {
                field: "Network",
                value: network.to_string(),
                expected: "a CIDR narrower than /0, such as \"10.244.0.0/16\"",
            });
        }
        let (subnet_len, subnet_min, subnet_max) = check_v4(
            network,
            u64::from(subnet_len.unwrap_or(0)),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
        )?;
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            ipv6: None,
            backend: BackendConfig::new(backend),
        })
    }

    /// flannel-style JSON for this config: `Network`, `SubnetLen`, `SubnetMin`/`SubnetMax` when
    /// not the defaults, and `Backend` with `Type` plus any non-default backend field.
    /// [`parse`](Self::parse) of the result gives back an equal config (IPv6 is not written).
    pub fn to_json(&self) -> String {
        let mut o = String::from("{\"Network\":");
        gojson::write_str(&mut o, &self.network.to_string());
        o.push_str(&format!(",\"SubnetLen\":{}", self.subnet_len));
        let (dmin, dmax) = default_min_max(self.network, self.subnet_len);
        if self.subnet_min != dmin {
            o.push_str(&format!(",\"SubnetMin\":\"{}\"", self.subnet_min));
        }
        if self.subnet_max != dmax {
            o.push_str(&format!(",\"SubnetMax\":\"{}\"", self.subnet_max));
        }
        let b = &self.backend;
        o.push_str(&format!(",\"Backend\":{{\"Type\":\"{}\"", b.kind));
        if Some(b.port) != b.kind.default_port() && b.kind != BackendKind::Gre {
            o.push_str(&format!(",\"Port\":{}", b.port));
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
        o.push_str("}}");
        o
    }

    /// Every subnet that may be handed out, SubnetMin to SubnetMax in address order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u64 << (32 - self.subnet_len);
        let len = self.subnet_len;
        (u64::from(u32::from(self.subnet_min))..=u64::from(u32::from(self.subnet_max)))
            .step_by(size as usize)
            // The range ends at SubnetMax <= u32::MAX, so every value fits.
            .map(move |a| Ipv4Net::new(Ipv4Addr::from(a as u32), len).expect("len <= 30"))
    }

    /// Number of subnets between SubnetMin and SubnetMax.
    pub fn subnet_count(&self) -> u64 {
        (u64::from(u32::from(self.subnet_max)) - u64::from(u32::from(self.subnet_min)))
            / (1u64 << (32 - self.subnet_len))
            + 1
    }

    /// Whether `sn` is a subnet this config hands out: a network address inside `Network`,
    /// `SubnetLen` long, between `SubnetMin` and `SubnetMax`.
    pub fn contains(&self, sn: Ipv4Net) -> bool {
        sn.prefix_len() == self.subnet_len
            && sn.addr() == sn.network()
            && self.network.contains(&sn)
            && sn.addr() >= self.subnet_min
            && sn.addr() <= self.subnet_max
    }
}

/// An optional IPv4 address field; absent or 0.0.0.0 means "use the default" (as flannel).
fn v4_addr(field: &'static str, v: Option<&Member>) -> Result<Ipv4Addr, ConfigError> {
    let Some(v) = v else {
        return Ok(Ipv4Addr::UNSPECIFIED);
    };
    let s = string(field, v)?;
    gojson::parse_ipv4(s).ok_or_else(|| ConfigError::BadValue {
        field,
        value: s.to_owned(),
        expected: "an IPv4 address such as \"10.244.1.0\"",
    })
}

fn default_min_max(network: Ipv4Net, subnet_len: u8) -> (Ipv4Addr, Ipv4Addr) {
    let size = 1u64 << (32 - subnet_len);
    let base = u64::from(u32::from(network.network()));
    let end = base + (1u64 << (32 - network.prefix_len()));
    // Both lie inside the network (subnet_len >= prefix + 2), so they fit in u32.
    (
        Ipv4Addr::from((base + size) as u32),
        Ipv4Addr::from((end - size) as u32),
    )
}

/// flannel's `CheckNetworkConfig` for IPv4, plus min <= max.
fn check_v4(
    network: Ipv4Net,
    subnet_len: u64,
    min: Ipv4Addr,
    max: Ipv4Addr,
) -> Result<(u8, Ipv4Addr, Ipv4Addr), ConfigError> {
    let prefix = network.prefix_len();
    let subnet_len: u8 = if subnet_len > 0 {
        if subnet_len > 30 {
            return Err(ConfigError::SubnetLenTooLong {
                field: "SubnetLen",
                value: subnet_len,
                max: 30,
            });
        }
        if subnet_len < u64::from(prefix) + 2 {
            return Err(ConfigError::SubnetLenTooShort {
                field: "SubnetLen",
                value: subnet_len,
                network: network.into(),
                min: prefix + 2,
            });
        }
        subnet_len as u8 // <= 30
    } else if prefix > 28 {
        return Err(ConfigError::NetworkTooSmall {
            field: "Network",
            network: network.into(),
            max_prefix: 28,
        });
    } else if prefix <= 22 {
        24
    } else {
        prefix + 2
    };

    let (dmin, dmax) = default_min_max(network, subnet_len);
    let check = |field: &'static str, v: Ipv4Addr, default: Ipv4Addr| {
        if v.is_unspecified() {
            return Ok(default);
        }
        if !network.contains(&v) {
            return Err(ConfigError::OutsideNetwork {
                field,
                value: v.into(),
                network: network.into(),
            });
        }
        let mask = u32::MAX << (32 - subnet_len);
        if u32::from(v) & mask != u32::from(v) {
            return Err(ConfigError::NotOnBoundary {
                field,
                value: v.into(),
                subnet_len,
                nearest: Ipv4Addr::from(u32::from(v) & mask).into(),
            });
        }
        Ok(v)
    };
    let min = check("SubnetMin", min, dmin)?;
    let max = check("SubnetMax", max, dmax)?;
    if min > max {
        return Err(ConfigError::MinAboveMax {
            min_field: "SubnetMin",
            min: min.into(),
            max_field: "SubnetMax",
            max: max.into(),
        });
    }
    Ok((subnet_len, min, max))
}

/// flannel's `CheckNetworkConfig` for IPv6, plus min <= max.
fn parse_v6(top: &Members) -> Result<Ipv6Config, ConfigError> {
    let network = match top.last_non_null("IPv6Network") {
        None => {
            return Err(ConfigError::MissingNetwork {
                field: "IPv6Network",
                example: V6_EXAMPLE,
            })
        }
        Some(v) => {
            let s = string("IPv6Network", v)?;
            Ipv6Net::from_str(s)
                .map_err(|_| ConfigError::BadValue {
                    field: "IPv6Network",
                    value: s.to_owned(),
                    expected: "an IPv6 CIDR such as \"fd00:10:244::/56\"",
                })?
                .trunc()
        }
    };
    if network.prefix_len() == 0 {
        return Err(ConfigError::BadValue {
            field: "IPv6Network",
            value: network.to_string(),
            expected: "a CIDR narrower than /0, such as \"fd00:10:244::/56\"",
        });
    }
    let prefix = network.prefix_len();
    let req = prefix_len("IPv6SubnetLen", top.last_non_null("IPv6SubnetLen"))?;
    let subnet_len: u8 = if req > 0 {
        if req > 126 {
            return Err(ConfigError::SubnetLenTooLong {
                field: "IPv6SubnetLen",
                value: req,
                max: 126,
            });
        }
        if req < u64::from(prefix) + 2 {
            return Err(ConfigError::SubnetLenTooShort {
                field: "IPv6SubnetLen",
                value: req,
                network: network.into(),
                min: prefix + 2,
            });
        }
        req as u8 // <= 126
    } else if prefix > 124 {
        return Err(ConfigError::NetworkTooSmall {
            field: "IPv6Network",
            network: network.into(),
            max_prefix: 124,
        });
    } else if prefix <= 62 {
        64
    } else {
        prefix + 2
    };
    let size = 1u128 << (128 - subnet_len);
    let base = u128::from(network.network());
    // prefix >= 1, so the span fits in u128.
    let span = 1u128 << (128 - prefix);
    let dmin = Ipv6Addr::from(base + size);
    let dmax = Ipv6Addr::from(base + (span - size));
    let mask = u128::MAX << (128 - subnet_len);
    let check = |field: &'static str, default: Ipv6Addr| -> Result<Ipv6Addr, ConfigError> {
        let Some(v) = top.last_non_null(field) else {
            return Ok(default);
        };
        let s = string(field, v)?;
        let a = Ipv6Addr::from_str(s).map_err(|_| ConfigError::BadValue {
            field,
            value: s.to_owned(),
            expected: "an IPv6 address such as \"fd00:10:244:1::\"",
        })?;
        if a.is_unspecified() {
            return Ok(default);
        }
        if !network.contains(&a) {
            return Err(ConfigError::OutsideNetwork {
                field,
                value: a.into(),
                network: network.into(),
            });
        }
        if u128::from(a) & mask != u128::from(a) {
            return Err(ConfigError::NotOnBoundary {
                field,
                value: a.into(),
                subnet_len,
                nearest: Ipv6Addr::from(u128::from(a) & mask).into(),
            });
        }
        Ok(a)
    };
    let subnet_min = check("IPv6SubnetMin", dmin)?;
    let subnet_max = check("IPv6SubnetMax", dmax)?;
    if subnet_min > subnet_max {
        return Err(ConfigError::MinAboveMax {
            min_field: "IPv6SubnetMin",
            min: subnet_min.into(),
            max_field: "IPv6SubnetMax",
            max: subnet_max.into(),
        });
    }
    Ok(Ipv6Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
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
    if let Some(v) = m.last_non_null("Port") {
        let p = integer("Backend.Port", v)?;
        match p {
            0 => {}
            1..=65535 => b.port = p as u16,
            _ => return Err(ConfigError::BadPort { value: p }),
        }
    }
    if kind != BackendKind::Udp {
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
    Ok(b)
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
        let c = parse(r#"{"Network":"0.0.0.0/1"}"#);
        assert_eq!(c.subnet_max, ip("127.255.255.0"));
        let c = parse(r#"{"Network":"128.0.0.0/1","SubnetLen":30}"#);
        assert_eq!(c.subnet_max, ip("255.255.255.252"));
        assert_eq!(c.subnet_count(), (1 << 29) - 1);
        assert!(c.contains(net("255.255.255.252/30")));
        assert_eq!(c.subnets().nth(2), Some(net("128.0.0.12/30")));
    }

    #[test]
    fn validation_errors_name_field_and_value() {
        let cases: &[(&str, &[&str])] = &[
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
                &["Network \"0.0.0.0/0\"", "narrower"],
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
                &["EnableIPv4 is false"],
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
