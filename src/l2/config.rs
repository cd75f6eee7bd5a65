//! L2 network configuration: the JSON an operator writes at `<prefix>/l2/networks/<name>`,
//! and the `--l2` / `--l2-vlan` flag syntax that attaches networks to this node. Pure.
//!
//! ```json
//! {"VNI": 100, "Backend": "vxlan", "Port": 4789, "ArpSuppression": true, "AgeingSecs": 300}
//! ```
//! Only `VNI` is required. It must fit VXLAN's and NVGRE's 24 bits and not be 0
//! (1..=16777215).

use std::fmt;

use serde_json::Value;

use crate::go::json::Members;

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// IANA's VXLAN port, the default for L2 networks (the kernel's `dstport 4789`).
pub const DEFAULT_PORT: u16 = 4789;
/// How long a learned MAC lives without being seen, by default (the kernel bridge's 300 s).
pub const DEFAULT_AGEING_SECS: u32 = 300;
/// Longest ageing accepted (the limit of the old 16-bit table clock, kept for config compatibility).
pub const MAX_AGEING_SECS: u32 = 30_000;
/// Highest usable 802.1Q VLAN ID (4095 is reserved).
pub const MAX_VLAN: u16 = 4094;
/// Longest network name.
pub const MAX_NAME_LEN: usize = 64;

/// How an L2 network is carried between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L2Backend {
    /// VXLAN (RFC 7348) over UDP, as the kernel's L2 VXLAN device.
    Vxlan,
    /// GRE with protocol 0x6558 and the NVGRE key (VSID << 8), as Linux `gretap`.
    Gre,
}

impl L2Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            L2Backend::Vxlan => "vxlan",
            L2Backend::Gre => "gre",
        }
    }

    /// Bytes added in front of the inner Ethernet frame on the wire, outer IPv4 header
    /// included: IPv4 20 + UDP 8 + VXLAN 8, or IPv4 20 + GRE with key 8; plus the inner
    /// Ethernet header itself, which the device MTU does not count.
    pub const fn overhead(self) -> u32 {
        match self {
            L2Backend::Vxlan => 20 + 8 + 8 + 14,
            L2Backend::Gre => 20 + 8 + 14,
        }
    }

    /// The TAP device's name for a network with this VNI (at most 11 characters).
    pub fn tap_name(self, vni: u32) -> String {
        match self {
            L2Backend::Vxlan => format!("l2v{vni}"),
            L2Backend::Gre => format!("l2g{vni}"),
        }
    }
}

impl fmt::Display for L2Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One L2 network's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2NetworkConfig {
    pub vni: u32,
    pub backend: L2Backend,
    /// UDP destination port (vxlan only).
    pub port: u16,
    pub arp_suppression: bool,
    pub ageing_secs: u32,
}

/// What is wrong with an L2 network config or flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L2ConfigError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("VNI is missing; set \"VNI\" to a number in 1..=16777215")]
    MissingVni,
    #[error("VNI {0} is out of range: VNI must be 1..=16777215 (24 bits, 0 reserved)")]
    VniRange(String),
    #[error("Backend {0:?} is not an L2 backend; use \"vxlan\" or \"gre\"")]
    Backend(String),
    #[error("Port {0} is not a UDP port; use 1..=65535 (default 4789)")]
    Port(String),
    #[error("{field} must be {expected}, not {got}")]
    Type {
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("AgeingSecs {0} is out of range; use 1..=30000 (default 300)")]
    Ageing(String),
    #[error("network name {0:?} is not valid: use 1 to 64 of A-Z a-z 0-9 _ . -")]
    Name(String),
    #[error("VLAN ID in {0:?} is not valid: use VID=NAME with VID in 1..=4094")]
    Vlan(String),
    #[error("{0:?} is not valid: use NAME or NAME@BRIDGE")]
    Access(String),
}

impl L2NetworkConfig {
    /// Parses and validates the JSON value of `<prefix>/l2/networks/<name>`.
    pub fn parse(json: &[u8]) -> Result<Self, L2ConfigError> {
        // Keys match as in the network config: case-insensitively, the last non-null
        // duplicate winning, as Go's decoder (flannel's) reads `<prefix>/config`.
        let members: Members =
            serde_json::from_slice(json).map_err(|e| L2ConfigError::NotJson(e.to_string()))?;
        let field = |f: &str| members.last_non_null(f).map(|m| m.to_value());
        let vni = match field("VNI").as_ref() {
            None | Some(Value::Null) => return Err(L2ConfigError::MissingVni),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) if (1..=u64::from(MAX_VNI)).contains(&x) => x as u32,
                _ => return Err(L2ConfigError::VniRange(n.to_string())),
            },
            Some(other) => return Err(L2ConfigError::VniRange(other.to_string())),
        };
        let backend = match field("Backend").as_ref() {
            None | Some(Value::Null) => L2Backend::Vxlan,
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "vxlan" => L2Backend::Vxlan,
                "gre" | "gretap" | "nvgre" => L2Backend::Gre,
                _ => return Err(L2ConfigError::Backend(s.clone())),
            },
            Some(other) => return Err(L2ConfigError::Backend(other.to_string())),
        };
        let port = match field("Port").as_ref() {
            None | Some(Value::Null) => DEFAULT_PORT,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(p @ 1..=65535) => p as u16,
                _ => return Err(L2ConfigError::Port(n.to_string())),
            },
            Some(other) => return Err(L2ConfigError::Port(other.to_string())),
        };
        let arp_suppression = match field("ArpSuppression").as_ref() {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(L2ConfigError::Type {
                    field: "ArpSuppression",
                    expected: "true or false",
                    got: other.to_string(),
                })
            }
        };
        let ageing_secs = match field("AgeingSecs").as_ref() {
            None | Some(Value::Null) => DEFAULT_AGEING_SECS,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(a) if (1..=u64::from(MAX_AGEING_SECS)).contains(&a) => a as u32,
                _ => return Err(L2ConfigError::Ageing(n.to_string())),
            },
            Some(other) => return Err(L2ConfigError::Ageing(other.to_string())),
        };
        Ok(Self {
            vni,
            backend,
            port,
            arp_suppression,
            ageing_secs,
        })
    }

    /// The canonical JSON form (what `parse` reads back to the same value).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "VNI": self.vni,
            "Backend": self.backend.as_str(),
            "Port": self.port,
            "ArpSuppression": self.arp_suppression,
            "AgeingSecs": self.ageing_secs,
        })
        .to_string()
    }
}

/// Checks a network name (it is an etcd key segment and a metrics label).
pub fn validate_name(name: &str) -> Result<(), L2ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(L2ConfigError::Name(name.to_string()))
    }
}

/// `--l2 NAME[@BRIDGE]`: a network attached through its own TAP (an access port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessSpec {
    pub network: String,
    /// Bridge to enslave the TAP to (created if absent).
    pub bridge: Option<String>,
}

impl std::str::FromStr for AccessSpec {
    type Err = L2ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (network, bridge) = match s.split_once('@') {
            Some((n, b)) => {
                if b.is_empty() || b.len() > 15 || b.contains(['/', ' ', '@']) {
                    return Err(L2ConfigError::Access(s.to_string()));
                }
                (n, Some(b.to_string()))
            }
            None => (s, None),
        };
        validate_name(network)?;
        Ok(Self {
            network: network.to_string(),
            bridge,
        })
    }
}

/// `--l2-vlan VID=NAME`: VLAN `vid` on the trunk TAP is network `network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanSpec {
    pub vid: u16,
    pub network: String,
}

impl std::str::FromStr for VlanSpec {
    type Err = L2ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (vid, name) = s
            .split_once('=')
            .ok_or_else(|| L2ConfigError::Vlan(s.to_string()))?;
        let vid: u16 = vid
            .trim()
            .parse()
            .ok()
            .filter(|v| (1..=MAX_VLAN).contains(v))
            .ok_or_else(|| L2ConfigError::Vlan(s.to_string()))?;
        validate_name(name)?;
        Ok(Self {
            vid,
            network: name.to_string(),
        })
    }
}

/// Checks a node's attachments as a whole: each network attached once (as an access port
/// or through one trunk VLAN), each VLAN ID used once.
pub fn check_attachments(access: &[AccessSpec], vlans: &[VlanSpec]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for a in access {
        if !seen.insert(a.network.as_str()) {
            return Err(format!("network {} is attached twice by --l2", a.network));
        }
    }
    let mut vids = std::collections::HashSet::new();
    for v in vlans {
        if !vids.insert(v.vid) {
            return Err(format!("VLAN {} is mapped twice by --l2-vlan", v.vid));
        }
        if !seen.insert(v.network.as_str()) {
            return Err(format!(
                "network {} is attached twice (--l2 and/or --l2-vlan); attach it once",
                v.network
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_minimal() {
        let c = L2NetworkConfig::parse(br#"{"VNI": 100}"#).unwrap();
        assert_eq!(c.vni, 100);
        assert_eq!(c.backend, L2Backend::Vxlan);
        assert_eq!(c.port, 4789);
        assert!(c.arp_suppression);
        assert_eq!(c.ageing_secs, 300);
        let c = L2NetworkConfig::parse(
            br#"{"VNI":16777215,"Backend":"gre","Port":9,"ArpSuppression":false,"AgeingSecs":5}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            L2NetworkConfig {
                vni: MAX_VNI,
                backend: L2Backend::Gre,
                port: 9,
                arp_suppression: false,
                ageing_secs: 5
            }
        );
        assert_eq!(L2NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c);
    }

    /// Keys match as in flannel's network config (Go's decoder): in any case, a later
    /// duplicate winning, a `null` leaving the default.
    #[test]
    fn keys_match_case_insensitively_as_the_network_config() {
        let c = L2NetworkConfig::parse(
            br#"{"vni":7,"backend":"GRE","PORT":9,"arpsuppression":false,"ageingsecs":5,"Port":null}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            L2NetworkConfig {
                vni: 7,
                backend: L2Backend::Gre,
                port: 9,
                arp_suppression: false,
                ageing_secs: 5
            }
        );
        let c = L2NetworkConfig::parse(br#"{"VNI":1,"vni":2}"#).unwrap();
        assert_eq!(c.vni, 2, "the last duplicate wins");
        assert!(L2NetworkConfig::parse(b"[1]").is_err());
        assert!(L2NetworkConfig::parse(b"null").is_err(), "no VNI");
    }

    #[test]
    fn vni_bounds() {
        for ok in [1u64, 4096, 16_777_215] {
            let j = format!(r#"{{"VNI": {ok}}}"#);
            assert_eq!(L2NetworkConfig::parse(j.as_bytes()).unwrap().vni as u64, ok);
        }
        for bad in ["0", "16777216", "-1", "1.5", "\"100\"", "4294967396"] {
            let j = format!(r#"{{"VNI": {bad}}}"#);
            let e = L2NetworkConfig::parse(j.as_bytes()).unwrap_err();
            assert!(matches!(e, L2ConfigError::VniRange(_)), "{bad}: {e}");
            assert!(e.to_string().contains("VNI must be 1..=16777215"), "{e}");
        }
        assert_eq!(
            L2NetworkConfig::parse(b"{}").unwrap_err(),
            L2ConfigError::MissingVni
        );
    }

    #[test]
    fn rejects_bad_fields() {
        assert!(matches!(
            L2NetworkConfig::parse(br#"{"VNI":1,"Backend":"udp"}"#),
            Err(L2ConfigError::Backend(_))
        ));
        assert!(matches!(
            L2NetworkConfig::parse(br#"{"VNI":1,"Port":0}"#),
            Err(L2ConfigError::Port(_))
        ));
        assert!(matches!(
            L2NetworkConfig::parse(br#"{"VNI":1,"ArpSuppression":"yes"}"#),
            Err(L2ConfigError::Type { .. })
        ));
        assert!(matches!(
            L2NetworkConfig::parse(br#"{"VNI":1,"AgeingSecs":0}"#),
            Err(L2ConfigError::Ageing(_))
        ));
        assert!(matches!(
            L2NetworkConfig::parse(b"[1]"),
            Err(L2ConfigError::NotJson(_))
        ));
        assert!(matches!(
            L2NetworkConfig::parse(b"nope"),
            Err(L2ConfigError::NotJson(_))
        ));
    }

    #[test]
    fn flag_syntax() {
        let a: AccessSpec = "tenant-a@br0".parse().unwrap();
        assert_eq!(a.network, "tenant-a");
        assert_eq!(a.bridge.as_deref(), Some("br0"));
        let a: AccessSpec = "t".parse().unwrap();
        assert_eq!(a.bridge, None);
        assert!("".parse::<AccessSpec>().is_err());
        assert!("a@".parse::<AccessSpec>().is_err());
        assert!("a b".parse::<AccessSpec>().is_err());
        assert!("a@averyveryverylongbridge".parse::<AccessSpec>().is_err());

        let v: VlanSpec = "10=tenant-a".parse().unwrap();
        assert_eq!((v.vid, v.network.as_str()), (10, "tenant-a"));
        assert!("4094=x".parse::<VlanSpec>().is_ok());
        for bad in ["0=x", "4095=x", "x=y", "10", "10=", "=x", "70000=x"] {
            assert!(bad.parse::<VlanSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn attachments_are_unique() {
        let a = |s: &str| s.parse::<AccessSpec>().unwrap();
        let v = |s: &str| s.parse::<VlanSpec>().unwrap();
        assert!(check_attachments(&[a("x"), a("y")], &[v("10=z")]).is_ok());
        assert!(check_attachments(&[a("x"), a("x@br")], &[]).is_err());
        assert!(check_attachments(&[a("x")], &[v("10=x")]).is_err());
        assert!(check_attachments(&[], &[v("10=x"), v("10=y")]).is_err());
    }

    #[test]
    fn names_and_taps() {
        assert!(validate_name("a.b_c-1").is_ok());
        assert!(validate_name(&"x".repeat(65)).is_err());
        assert!(validate_name("a/b").is_err());
        assert_eq!(L2Backend::Vxlan.tap_name(MAX_VNI), "l2v16777215");
        assert!(L2Backend::Gre.tap_name(MAX_VNI).len() <= 15);
        assert_eq!(1500 - L2Backend::Vxlan.overhead(), 1450);
        assert_eq!(1500 - L2Backend::Gre.overhead(), 1458);
    }
}
