//! Subnet leases as flannel stores them: the value JSON (`LeaseAttrs`, with `PublicIPv6` and
//! `BackendV6Data` for IPv6), each backend's `BackendData`, and the `<prefix>/subnets/<key>`
//! key form, `10.5.34.0-24`, `10.5.34.0-24&fd00:12:13::-64` (dual stack) or
//! `0.0.0.0-0&fd00:12:13::-64` (IPv6 only).
//!
//! Pure: what is written is byte-identical to flannel v0.28's Go encoder output; what is read
//! is decoded as leniently as Go does (keys case-insensitive, unknown keys ignored), but with
//! strict types, and never panics on untrusted bytes.

use crate::go::json::{self as gojson, Member, Members};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Largest VNI: 24 bits.
const MAX_VNI: u32 = (1 << 24) - 1;

/// The value of a lease key: who holds the subnet and how to reach it.
///
/// flannel's `lease.LeaseAttrs` (pkg/lease/lease.go). A dual-stack vxlan node writes both
/// addresses and both backend objects (its `flannel.<VNI>` and `flannel-v6.<VNI>` devices have
/// their own MACs):
/// `{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{...},"BackendV6Data":{...}}`;
/// an IPv6-only node has `"PublicIP":"0.0.0.0"` (flannel's zero `IP4`) and no `BackendData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// `PublicIP`: the holder's underlay IPv4 address (node identity in flannel);
    /// 0.0.0.0 for an IPv6-only node.
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6`: the holder's underlay IPv6 address; written as `null` when absent.
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType`: "vxlan", "gre"...; absent for udp (Go `omitempty`).
    pub backend_type: Option<String>,
    /// `BackendData`: the backend's own object for IPv4; absent for udp (Go `omitempty`).
    pub backend_data: Option<Value>,
    /// `BackendV6Data`: the backend's own object for IPv6 (vxlan: the `flannel-v6.<VNI>`
    /// device's VNI and MAC); absent unless the node carries IPv6 (Go `omitempty`).
    pub backend_v6_data: Option<Value>,
}

/// Why a lease value or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Not JSON at all, or not an object.
    #[error("lease value is not a valid JSON object: {0}")]
    Json(#[from] serde_json::Error),
    /// A field holds the wrong JSON type.
    #[error("lease {field} is {got}: expected {expected}")]
    WrongType {
        field: &'static str,
        got: String,
        expected: &'static str,
    },
    /// A required field is absent.
    #[error("lease has no {field}: expected {expected}")]
    MissingField {
        field: &'static str,
        expected: &'static str,
    },
    /// An address field that does not parse.
    #[error("lease {field} {value:?} is not valid: expected {expected}")]
    BadAddress {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// An underlay address no peer can be reached at (unspecified, loopback, multicast,
    /// broadcast): a lease that would send our packets to ourselves or to everyone.
    #[error("lease {field} {value} is {why}: expected the holder's unicast underlay address")]
    UnusableAddress {
        field: &'static str,
        value: IpAddr,
        why: &'static str,
    },
    /// `VtepMAC` that does not parse as a 6-byte MAC.
    #[error("lease VtepMAC {value:?} is not valid: expected a MAC address such as \"c6:d2:32:6f:8f:44\"")]
    BadMac { value: String },
    /// `VNI` out of the 24-bit range.
    #[error("lease VNI {value} is out of range: expected 0..=16777215")]
    VniOutOfRange { value: i128 },
    /// A key under `<prefix>/subnets/` that is not a subnet.
    #[error("subnet key {key:?} is not valid: expected an IPv4 subnet such as \"10.244.37.0-24\", optionally followed by \"&\" and an IPv6 subnet (\"10.244.37.0-24&fd00:12:13::-64\"; \"0.0.0.0-0&fd00:12:13::-64\" for IPv6 only)")]
    BadSubnetKey { key: String },
    /// A key whose address has host bits set.
    #[error("subnet key {key:?} has host bits set: expected its network address, {network}")]
    HostBitsSet { key: String, network: IpNet },
}

fn wrong(field: &'static str, m: &Member, expected: &'static str) -> LeaseError {
    LeaseError::WrongType {
        field,
        got: gojson::describe(m),
        expected,
    }
}

fn string_of<'a>(field: &'static str, m: &'a Member) -> Result<&'a str, LeaseError> {
    m.as_value()
        .and_then(Value::as_str)
        .ok_or_else(|| wrong(field, m, "a string"))
}

/// Why `a` cannot be a peer's underlay address, if it cannot.
/// An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
fn unusable(a: IpAddr) -> Option<&'static str> {
    match a.to_canonical() {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

/// The lease's underlay addresses must be unicast addresses a peer can be reached at.
/// `PublicIP` 0.0.0.0 is flannel's form for an IPv6-only node, so it is accepted only with
/// a `PublicIPv6`.
fn check_underlay(v4: Ipv4Addr, v6: Option<Ipv6Addr>) -> Result<(), LeaseError> {
    let ipv6_only = v4.is_unspecified() && v6.is_some();
    let v4 = Some(("PublicIP", IpAddr::V4(v4))).filter(|_| !ipv6_only);
    let v6 = v6.map(|a| ("PublicIPv6", IpAddr::V6(a)));
    for (field, value) in v4.into_iter().chain(v6) {
        if let Some(why) = unusable(value) {
            return Err(LeaseError::UnusableAddress { field, value, why });
        }
    }
    Ok(())
}

impl LeaseAttrs {
    /// A udp lease: only `PublicIP` (flannel's udp backend sets nothing else).
    pub fn udp(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: None,
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// A vxlan lease, as flannel's vxlan backend writes it.
    pub fn vxlan(public_ip: Ipv4Addr, data: &VxlanData) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("vxlan".to_owned()),
            backend_data: Some(data.to_value()),
            backend_v6_data: None,
        }
    }

    /// A gre lease (overlayd's own backend type).
    pub fn gre(public_ip: Ipv4Addr, data: &GreData) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("gre".to_owned()),
            backend_data: Some(data.to_value()),
            backend_v6_data: None,
        }
    }

    /// A dual-stack vxlan lease, as flannel's vxlan backend writes it (`newSubnetAttrs` in
    /// pkg/backend/vxlan/vxlan.go): `v4` for the `flannel.<VNI>` device, `v6` for
    /// `flannel-v6.<VNI>`. With `public_ip` `None` (IPv6 only) `PublicIP` is 0.0.0.0 and there
    /// is no `BackendData`.
    pub fn vxlan_dual(
        public_ip: Option<Ipv4Addr>,
        v4: &VxlanData,
        public_ipv6: Ipv6Addr,
        v6: &VxlanData,
    ) -> Self {
        LeaseAttrs {
            public_ip: public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: Some(public_ipv6),
            backend_type: Some("vxlan".to_owned()),
            backend_data: public_ip.map(|_| v4.to_value()),
            backend_v6_data: Some(v6.to_value()),
        }
    }

    /// This lease with the IPv6 half added: `PublicIPv6` and the backend's `BackendV6Data`
    /// (`None` for udp, which has no backend data).
    pub fn with_ipv6(mut self, public_ipv6: Ipv6Addr, backend_v6_data: Option<Value>) -> Self {
        self.public_ipv6 = Some(public_ipv6);
        self.backend_v6_data = backend_v6_data;
        self
    }

    /// The value bytes exactly as flannel's Go encoder writes them, e.g.
    /// `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`.
    pub fn to_json(&self) -> String {
        let mut o = String::with_capacity(128);
        // Writing to a String cannot fail.
        let _ = write!(o, "{{\"PublicIP\":\"{}\",\"PublicIPv6\":", self.public_ip);
        match self.public_ipv6 {
            None => o.push_str("null"),
            Some(a) => {
                let _ = write!(o, "\"{}\"", gojson::format_ipv6(a));
            }
        }
        if let Some(t) = self.backend_type.as_deref().filter(|t| !t.is_empty()) {
            o.push_str(",\"BackendType\":");
            gojson::write_str(&mut o, t);
        }
        if let Some(d) = &self.backend_data {
            o.push_str(",\"BackendData\":");
            gojson::write_value(&mut o, d);
        }
        if let Some(d) = &self.backend_v6_data {
            o.push_str(",\"BackendV6Data\":");
            gojson::write_value(&mut o, d);
        }
        o.push('}');
        o
    }

    /// Decode a lease value. Keys are case-insensitive and unknown keys ignored (as Go);
    /// `PublicIP` is required; `BackendType` `""` and `BackendData` `null` count as absent.
    pub fn from_json(json: &[u8]) -> Result<LeaseAttrs, LeaseError> {
        let m: Members = serde_json::from_slice(json)?;
        let public_ip = match m.last_non_null("PublicIP") {
            None => {
                return Err(LeaseError::MissingField {
                    field: "PublicIP",
                    expected: "the holder's IPv4 address",
                })
            }
            Some(v) => {
                let s = string_of("PublicIP", v)?;
                gojson::parse_ipv4(s).ok_or_else(|| LeaseError::BadAddress {
                    field: "PublicIP",
                    value: s.to_owned(),
                    expected: "an IPv4 address such as \"192.168.64.3\"",
                })?
            }
        };
        // A pointer in Go: `null` resets it, so the last member decides.
        let public_ipv6 = match m.get("PublicIPv6").last() {
            None => None,
            Some(v) if v.is_null() => None,
            Some(v) => {
                let s = string_of("PublicIPv6", v)?;
                let a = s
                    .parse::<Ipv6Addr>()
                    .ok()
                    .or_else(|| s.parse::<Ipv4Addr>().ok().map(|a| a.to_ipv6_mapped()));
                Some(a.ok_or_else(|| LeaseError::BadAddress {
                    field: "PublicIPv6",
                    value: s.to_owned(),
                    expected: "an IPv6 address such as \"fd00::3\", or null",
                })?)
            }
        };
        check_underlay(public_ip, public_ipv6)?;
        let backend_type = match m.last_non_null("BackendType") {
            None => None,
            Some(v) => Some(string_of("BackendType", v)?.to_owned()).filter(|s| !s.is_empty()),
        };
        let backend_data = m.last_non_null("BackendData").map(Member::to_value);
        let backend_v6_data = m.last_non_null("BackendV6Data").map(Member::to_value);
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data,
            backend_v6_data,
        })
    }

    /// Decode `BackendData` as vxlan's.
    pub fn vxlan_data(&self) -> Result<VxlanData, LeaseError> {
        VxlanData::from_value(self.backend_data.as_ref().ok_or(LeaseError::MissingField {
            field: "BackendData",
            expected: "an object such as {\"VNI\":1,\"VtepMAC\":\"c6:d2:32:6f:8f:44\"}",
        })?)
    }

    /// Decode `BackendV6Data` as vxlan's (the IPv6 device's VNI and MAC).
    pub fn vxlan_v6_data(&self) -> Result<VxlanData, LeaseError> {
        VxlanData::from_value(
            self.backend_v6_data
                .as_ref()
                .ok_or(LeaseError::MissingField {
                    field: "BackendV6Data",
                    expected: "an object such as {\"VNI\":1,\"VtepMAC\":\"c6:d2:32:6f:8f:44\"}",
                })?,
        )
    }

    /// Decode `BackendV6Data` as gre's.
    pub fn gre_v6_data(&self) -> Result<GreData, LeaseError> {
        GreData::from_value(
            self.backend_v6_data
                .as_ref()
                .ok_or(LeaseError::MissingField {
                    field: "BackendV6Data",
                    expected: "an object such as {\"VNI\":1}",
                })?,
        )
    }

    /// Decode `BackendData` (`v6` false) or `BackendV6Data` (`v6` true) as wireguard's.
    pub fn wireguard_data(&self, v6: bool) -> Result<WireguardData, LeaseError> {
        let (data, field) = match v6 {
            false => (&self.backend_data, "BackendData"),
            true => (&self.backend_v6_data, "BackendV6Data"),
        };
        WireguardData::from_value(data.as_ref().ok_or(LeaseError::MissingField {
            field,
            expected: "an object such as {\"PublicKey\":\"<base64 of 32 bytes>\"}",
        })?)
    }

    /// Decode `BackendData` as gre's.
    pub fn gre_data(&self) -> Result<GreData, LeaseError> {
        GreData::from_value(self.backend_data.as_ref().ok_or(LeaseError::MissingField {
            field: "BackendData",
            expected: "an object such as {\"VNI\":1}",
        })?)
    }
}

/// Look `field` up case-insensitively in a `BackendData` object (last match wins).
fn data_field<'a>(v: &'a Value, field: &str) -> Result<Option<&'a Value>, LeaseError> {
    let Value::Object(o) = v else {
        return Err(wrong("BackendData", &Member::Other(v.clone()), "an object"));
    };
    Ok(o.iter()
        .filter(|(k, _)| gojson::key_matches(k, field))
        .map(|(_, v)| v)
        .next_back())
}

fn vni_of(v: Option<&Value>, required: bool) -> Result<u32, LeaseError> {
    let Some(v) = v else {
        return if required {
            Err(LeaseError::MissingField {
                field: "VNI",
                expected: "an integer 0..=16777215",
            })
        } else {
            Ok(0)
        };
    };
    let n = match v {
        Value::Number(n) => n
            .as_u64()
            .map(i128::from)
            .or_else(|| n.as_i64().map(i128::from)),
        _ => None,
    }
    .ok_or_else(|| wrong("VNI", &Member::Other(v.clone()), "an integer"))?;
    match u32::try_from(n) {
        Ok(n) if n <= MAX_VNI => Ok(n),
        _ => Err(LeaseError::VniOutOfRange { value: n }),
    }
}

/// vxlan `BackendData`: `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`.
///
/// flannel writes and reads `VNI` as a Go `uint16`: a VNI above 65535 is truncated in flannel's
/// own leases, and flannel peers fail to decode (and so ignore) a lease carrying one. Peers
/// use their own configured VNI, not the one in the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanData {
    /// `VNI`.
    pub vni: u32,
    /// `VtepMAC`: the VXLAN device's MAC, the inner destination MAC for frames to this node.
    pub vtep_mac: [u8; 6],
}

impl VxlanData {
    /// As a JSON value, members in flannel's order.
    pub fn to_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("VNI".to_owned(), Value::from(self.vni));
        m.insert(
            "VtepMAC".to_owned(),
            Value::from(format_mac(&self.vtep_mac)),
        );
        Value::Object(m)
    }

    /// Decode; a missing `VNI` reads as 0 (as Go), `VtepMAC` is required.
    pub fn from_value(v: &Value) -> Result<VxlanData, LeaseError> {
        let vni = vni_of(data_field(v, "VNI")?, false)?;
        let mac = match data_field(v, "VtepMAC")? {
            None => {
                return Err(LeaseError::MissingField {
                    field: "VtepMAC",
                    expected: "a MAC address such as \"c6:d2:32:6f:8f:44\"",
                })
            }
            Some(Value::String(s)) => {
                parse_mac(s).ok_or_else(|| LeaseError::BadMac { value: s.clone() })?
            }
            Some(other) => {
                return Err(wrong(
                    "VtepMAC",
                    &Member::Other(other.clone()),
                    "a MAC address string",
                ))
            }
        };
        Ok(VxlanData { vni, vtep_mac: mac })
    }
}

/// gre `BackendData`: `{"VNI":N}`, N being the GRE key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GreData {
    /// `VNI`: the GRE key.
    pub vni: u32,
}

impl GreData {
    /// As a JSON value.
    pub fn to_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("VNI".to_owned(), Value::from(self.vni));
        Value::Object(m)
    }

    /// Decode; `VNI` is required.
    pub fn from_value(v: &Value) -> Result<GreData, LeaseError> {
        Ok(GreData {
            vni: vni_of(data_field(v, "VNI")?, true)?,
        })
    }
}

/// wireguard `BackendData` / `BackendV6Data`: `{"PublicKey":"<base64>","Port":51820}`.
/// flanneld writes only `PublicKey`; `Port` absent or 0 means the reader's own listen port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WireguardData {
    /// `PublicKey`: the node's Curve25519 public key.
    pub public_key: [u8; 32],
    /// `Port`: the node's listen port; 0 = not given.
    pub port: u16,
}

impl WireguardData {
    /// As a JSON value (`Port` only when given).
    pub fn to_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        let key = encode_key(&self.public_key);
        m.insert("PublicKey".to_owned(), Value::from(key));
        if self.port != 0 {
            m.insert("Port".to_owned(), Value::from(self.port));
        }
        Value::Object(m)
    }

    /// Decode; `PublicKey` is required, `Port` optional (0..=65535).
    pub fn from_value(v: &Value) -> Result<WireguardData, LeaseError> {
        let public_key = match data_field(v, "PublicKey")? {
            None => {
                return Err(LeaseError::MissingField {
                    field: "PublicKey",
                    expected: "a WireGuard public key in base64",
                })
            }
            Some(Value::String(s)) => decode_key(s).ok_or_else(|| LeaseError::BadAddress {
                field: "PublicKey",
                value: s.clone(),
                expected: "32 bytes in base64, as `wg pubkey` prints them",
            })?,
            Some(other) => {
                return Err(wrong(
                    "PublicKey",
                    &Member::Other(other.clone()),
                    "a string",
                ))
            }
        };
        let port = match data_field(v, "Port")? {
            None | Some(Value::Null) => 0,
            Some(p) => p
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| wrong("Port", &Member::Other(p.clone()), "a port 0..=65535"))?,
        };
        Ok(WireguardData { public_key, port })
    }
}

/// Go's `net.HardwareAddr.String()`: lower-case hex pairs joined by colons.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Go's `net.ParseMAC`, 6-byte forms only: `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`,
/// `aabb.ccdd.eeff` (hex digits of either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let hex = |p: &str| -> Option<u8> {
        (p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u8::from_str_radix(p, 16).ok())
            .flatten()
    };
    let mut mac = [0u8; 6];
    if s.len() == 17 {
        let sep = if s.as_bytes()[2] == b':' { ':' } else { '-' };
        let mut n = 0;
        for (i, p) in s.split(sep).enumerate() {
            *mac.get_mut(i)? = hex(p)?;
            n = i + 1;
        }
        return (n == 6).then_some(mac);
    }
    if s.len() == 14 {
        let mut n = 0;
        for (i, p) in s.split('.').enumerate() {
            if i >= 3 || p.len() != 4 {
                return None;
            }
            mac[2 * i] = hex(p.get(..2)?)?;
            mac[2 * i + 1] = hex(p.get(2..)?)?;
            n = i + 1;
        }
        return (n == 3).then_some(mac);
    }
    None
}

/// The subnets one lease key names: an IPv4 subnet, an IPv6 subnet, or both.
///
/// flannel's `MakeSubnetKey`/`ParseSubnetKey` (pkg/subnet/subnet.go): the IPv4 subnet as
/// `a.b.c.d-len`, then for an IPv6 subnet `&` and the IPv6 subnet as `<address>-len`. An
/// IPv6-only node's key starts with flannel's zero IPv4 subnet, `0.0.0.0-0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet; `None` for an IPv6-only lease (written `0.0.0.0-0`).
    pub ipv4: Option<Ipv4Net>,
    /// The IPv6 subnet, if any.
    pub ipv6: Option<Ipv6Net>,
}

/// flannel's zero `IP4Net`: the IPv4 part of an IPv6-only key.
const V4_NONE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

impl SubnetKey {
    /// An IPv4-only key.
    pub fn v4(sn: Ipv4Net) -> Self {
        SubnetKey {
            ipv4: Some(sn),
            ipv6: None,
        }
    }

    /// The key suffix under `<prefix>/subnets/`, byte for byte as flannel writes it.
    pub fn to_key(&self) -> String {
        let v4 = self.ipv4.unwrap_or(V4_NONE);
        let mut k = format!("{}-{}", v4.addr(), v4.prefix_len());
        if let Some(v6) = self.ipv6 {
            let _ = write!(k, "&{}-{}", gojson::format_ipv6(v6.addr()), v6.prefix_len());
        }
        k
    }

    /// Parse a key suffix written by [`to_key`](Self::to_key) or by flannel. Stricter than
    /// flannel's regular expression where it is lax (the whole suffix must match, no leading
    /// zeros, no host bits, prefix lengths up to 32 and 128, lower-case hex as flannel writes
    /// it), and refuses `0.0.0.0-0` without an IPv6 part (a key naming no subnet).
    pub fn parse(key: &str) -> Result<SubnetKey, LeaseError> {
        let bad = || LeaseError::BadSubnetKey {
            key: key.to_owned(),
        };
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
        let (v4, v6) = match key.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (key, None),
        };
        let (addr, len) = v4.split_once('-').ok_or_else(bad)?;
        if !digits(len) {
            return Err(bad());
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let sn = Ipv4Net::new(addr, len).map_err(|_| bad())?;
        let ipv6 = match v6 {
            None => None,
            Some(v6) => {
                let (a6, l6) = v6.split_once('-').ok_or_else(bad)?;
                // flannel's pattern for this part: [a-f\d:]+
                if a6.is_empty()
                    || !a6
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':')
                    || !digits(l6)
                {
                    return Err(bad());
                }
                let a6: Ipv6Addr = a6.parse().map_err(|_| bad())?;
                let l6: u8 = l6.parse().map_err(|_| bad())?;
                let sn6 = Ipv6Net::new(a6, l6).map_err(|_| bad())?;
                if sn6.trunc() != sn6 {
                    return Err(LeaseError::HostBitsSet {
                        key: key.to_owned(),
                        network: sn6.trunc().into(),
                    });
                }
                Some(sn6)
            }
        };
        if sn.trunc() != sn {
            return Err(LeaseError::HostBitsSet {
                key: key.to_owned(),
                network: sn.trunc().into(),
            });
        }
        let ipv4 = (sn != V4_NONE).then_some(sn);
        if ipv4.is_none() && ipv6.is_none() {
            return Err(bad());
        }
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

impl fmt::Display for SubnetKey {
    /// `10.5.34.0/24`, `10.5.34.0/24+fd00:12:13::/64` or `fd00:12:13::/64`, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ipv4, self.ipv6) {
            (Some(a), Some(b)) => write!(f, "{a}+{b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => f.write_str("none"),
        }
    }
}

/// The key suffix under `<prefix>/subnets/` for an IPv4-only subnet: `10.244.37.0-24`.
pub fn subnet_key(sn: Ipv4Net) -> String {
    SubnetKey::v4(sn).to_key()
}

/// The IPv4 subnet a key names; an IPv6-only key is refused (see [`SubnetKey::parse`] for
/// every form).
pub fn parse_subnet_key(key: &str) -> Result<Ipv4Net, LeaseError> {
    SubnetKey::parse(key)?
        .ipv4
        .ok_or_else(|| LeaseError::BadSubnetKey {
            key: key.to_owned(),
        })
}

/// A WireGuard key as `wg` prints it: standard base64 of exactly 32 bytes.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let mut out = [0u8; 32];
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    (bytes.len() == 32).then(|| {
        out.copy_from_slice(&bytes);
        out
    })
}

/// A WireGuard key as `wg` prints it.
pub fn encode_key(key: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44];
    const VXLAN_LEASE: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn vxlan_lease_bytes() {
        let a = LeaseAttrs::vxlan(
            ip("192.168.64.3"),
            &VxlanData {
                vni: 1,
                vtep_mac: MAC,
            },
        );
        assert_eq!(a.to_json(), VXLAN_LEASE);
        let b = LeaseAttrs::from_json(VXLAN_LEASE.as_bytes()).unwrap();
        assert_eq!(b, a);
        assert_eq!(
            b.vxlan_data().unwrap(),
            VxlanData {
                vni: 1,
                vtep_mac: MAC
            }
        );
        assert_eq!(b.to_json(), VXLAN_LEASE);
    }

    #[test]
    fn udp_lease_bytes() {
        // flannel's udp backend sets only PublicIP; Go omits the empty BackendType/Data.
        let a = LeaseAttrs::udp(ip("10.0.0.7"));
        assert_eq!(a.to_json(), r#"{"PublicIP":"10.0.0.7","PublicIPv6":null}"#);
        assert_eq!(LeaseAttrs::from_json(a.to_json().as_bytes()).unwrap(), a);
        // What older flannel wrote (no PublicIPv6) and an empty BackendType read the same.
        let b = LeaseAttrs::from_json(br#"{"PublicIP":"10.0.0.7","BackendType":""}"#).unwrap();
        assert_eq!(b, a);
    }

    #[test]
    fn gre_lease_bytes() {
        let a = LeaseAttrs::gre(ip("10.0.0.7"), &GreData { vni: 77 });
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"10.0.0.7","PublicIPv6":null,"BackendType":"gre","BackendData":{"VNI":77}}"#
        );
        let b = LeaseAttrs::from_json(a.to_json().as_bytes()).unwrap();
        assert_eq!(b.gre_data().unwrap(), GreData { vni: 77 });
        assert!(LeaseAttrs::udp(ip("1.2.3.4")).gre_data().is_err());
        assert!(GreData::from_value(&serde_json::json!({})).is_err());
    }

    #[test]
    fn ipv6_and_escaping() {
        let mut a = LeaseAttrs::udp(ip("10.0.0.7"));
        a.public_ipv6 = Some("fd00::3".parse().unwrap());
        a.backend_type = Some("a<b".to_owned());
        a.backend_data = Some(serde_json::json!({"k": "x&y", "n": [1, true, null]}));
        let j = a.to_json();
        assert_eq!(
            j,
            r#"{"PublicIP":"10.0.0.7","PublicIPv6":"fd00::3","BackendType":"a\u003cb","BackendData":{"k":"x\u0026y","n":[1,true,null]}}"#
        );
        assert_eq!(LeaseAttrs::from_json(j.as_bytes()).unwrap(), a);
        a.public_ipv6 = Some(ip("1.2.3.4").to_ipv6_mapped());
        assert!(a.to_json().contains(r#""PublicIPv6":"1.2.3.4""#));
        assert_eq!(LeaseAttrs::from_json(a.to_json().as_bytes()).unwrap(), a);
    }

    #[test]
    fn lenient_decoding() {
        let a = LeaseAttrs::from_json(
            br#"{"publicip":"10.1.1.1","BACKENDTYPE":"vxlan","backenddata":{"vni":5,"vtepmac":"C6-D2-32-6F-8F-44"},"Extra":[1],"BackendV6Data":null,"PublicIPv6":"fd00::1","publicIPv6":null}"#,
        )
        .unwrap();
        assert_eq!(a.public_ip, ip("10.1.1.1"));
        assert_eq!(a.public_ipv6, None);
        assert_eq!(a.backend_type.as_deref(), Some("vxlan"));
        assert_eq!(
            a.vxlan_data().unwrap(),
            VxlanData {
                vni: 5,
                vtep_mac: MAC
            }
        );
        let a = LeaseAttrs::from_json(br#"{"PublicIP":"10.1.1.1","BackendData":null}"#).unwrap();
        assert_eq!(a.backend_data, None);
        assert!(a.vxlan_data().is_err());
        // Missing VNI reads as 0, as Go does.
        let d = VxlanData::from_value(&serde_json::json!({"VtepMAC":"c6d2.326f.8f44"})).unwrap();
        assert_eq!(
            d,
            VxlanData {
                vni: 0,
                vtep_mac: MAC
            }
        );
    }

    /// A number in BackendData is kept through a decode/encode round trip, however many digits
    /// it was written with (found by the lease_json fuzz target: without correctly rounded
    /// float parsing the re-encoded value decoded to a different float).
    #[test]
    fn long_numbers_round_trip() {
        let json = format!(
            r#"{{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1{},"VtepMAC":"c6:d2:32:6f:8f:44"}}}}"#,
            "7".repeat(75)
        );
        let a = LeaseAttrs::from_json(json.as_bytes()).unwrap();
        let b = LeaseAttrs::from_json(a.to_json().as_bytes()).unwrap();
        assert_eq!(b, a);
        assert_eq!(b.to_json(), a.to_json());
    }

    #[test]
    fn ipv6_only_lease_keeps_unspecified_public_ip() {
        let l = LeaseAttrs::from_json(br#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3"}"#).unwrap();
        assert_eq!(l.public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(l.public_ipv6, Some("fd00::3".parse().unwrap()));
        for usable in ["10.0.0.1", "192.168.255.255", "223.255.255.254", "1.0.0.0"] {
            let json = format!(r#"{{"PublicIP":"{usable}"}}"#);
            assert!(LeaseAttrs::from_json(json.as_bytes()).is_ok(), "{usable}");
        }
    }

    #[test]
    fn strict_types_and_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not a valid JSON"),
            (b"[]", "not a valid JSON"),
            (b"null", "lease has no PublicIP"),
            (b"{}", "lease has no PublicIP"),
            (
                br#"{"PublicIP":7}"#,
                "lease PublicIP is number 7: expected a string",
            ),
            (
                br#"{"PublicIP":"10.0.0.256"}"#,
                "lease PublicIP \"10.0.0.256\" is not valid",
            ),
            (
                br#"{"PublicIP":"fd00::1"}"#,
                "lease PublicIP \"fd00::1\" is not valid",
            ),
            (
                br#"{"PublicIP":"1.2.3.4","PublicIPv6":"x"}"#,
                "lease PublicIPv6 \"x\" is not valid",
            ),
            (
                br#"{"PublicIP":"1.2.3.4","BackendType":1}"#,
                "lease BackendType is number 1",
            ),
            (
                br#"{"PublicIP":"0.0.0.0"}"#,
                "lease PublicIP 0.0.0.0 is unspecified: expected the holder's unicast",
            ),
            (
                br#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#,
                "lease PublicIP 0.0.0.0 is unspecified",
            ),
            (
                br#"{"PublicIP":"127.0.0.2"}"#,
                "lease PublicIP 127.0.0.2 is a loopback address",
            ),
            (
                br#"{"PublicIP":"224.0.0.5"}"#,
                "lease PublicIP 224.0.0.5 is a multicast address",
            ),
            (
                br#"{"PublicIP":"255.255.255.255"}"#,
                "lease PublicIP 255.255.255.255 is the broadcast address",
            ),
            (
                br#"{"PublicIP":"::ffff:127.0.0.1"}"#,
                "lease PublicIP 127.0.0.1 is a loopback address",
            ),
            (
                br#"{"PublicIP":"1.2.3.4","PublicIPv6":"::"}"#,
                "lease PublicIPv6 :: is unspecified",
            ),
            (
                br#"{"PublicIP":"0.0.0.0","PublicIPv6":"::1"}"#,
                "lease PublicIPv6 ::1 is a loopback address",
            ),
            (
                br#"{"PublicIP":"1.2.3.4","PublicIPv6":"ff02::1"}"#,
                "lease PublicIPv6 ff02::1 is a multicast address",
            ),
            (
                br#"{"PublicIP":"1.2.3.4","PublicIPv6":"127.0.0.1"}"#,
                "lease PublicIPv6 ::ffff:127.0.0.1 is a loopback address",
            ),
        ];
        for (json, want) in cases {
            let e = LeaseAttrs::from_json(json).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{:?}: {e:?} lacks {want:?}",
                String::from_utf8_lossy(json)
            );
        }
        let data_cases: &[(Value, &str)] = &[
            (serde_json::json!([1]), "BackendData is array"),
            (serde_json::json!({"VNI":1}), "lease has no VtepMAC"),
            (
                serde_json::json!({"VNI":1,"VtepMAC":null}),
                "lease VtepMAC is null",
            ),
            (
                serde_json::json!({"VNI":1,"VtepMAC":"c6:d2:32:6f:8f"}),
                "VtepMAC \"c6:d2:32:6f:8f\" is not valid",
            ),
            (
                serde_json::json!({"VNI":"1","VtepMAC":"c6:d2:32:6f:8f:44"}),
                "lease VNI is string \"1\"",
            ),
            (
                serde_json::json!({"VNI":1.5,"VtepMAC":"c6:d2:32:6f:8f:44"}),
                "lease VNI is number 1.5",
            ),
            (
                serde_json::json!({"VNI":16777216,"VtepMAC":"c6:d2:32:6f:8f:44"}),
                "VNI 16777216 is out of range",
            ),
            (
                serde_json::json!({"VNI":-1,"VtepMAC":"c6:d2:32:6f:8f:44"}),
                "VNI -1 is out of range",
            ),
        ];
        for (v, want) in data_cases {
            let e = VxlanData::from_value(v).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn wireguard_lease_bytes() {
        let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        // As flanneld writes it: no Port.
        let flannel = format!(
            r#"{{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{key}"}}}}"#
        );
        let a = LeaseAttrs::from_json(flannel.as_bytes()).unwrap();
        let d = a.wireguard_data(false).unwrap();
        assert_eq!(
            d,
            WireguardData {
                public_key: [1; 32],
                port: 0
            }
        );
        assert_eq!(a.to_json(), flannel);
        let ours = WireguardData {
            public_key: [1; 32],
            port: 51820,
        };
        assert_eq!(
            ours.to_value().to_string(),
            format!(r#"{{"Port":51820,"PublicKey":"{key}"}}"#)
        );
        assert_eq!(WireguardData::from_value(&ours.to_value()).unwrap(), ours);
        let e = a.wireguard_data(true).unwrap_err().to_string();
        assert!(e.contains("no BackendV6Data"), "{e}");
        for (v, want) in [
            (r#"{}"#, "no PublicKey"),
            (r#"{"PublicKey":"abc"}"#, "PublicKey \"abc\" is not valid"),
            (r#"{"PublicKey":1}"#, "PublicKey is number 1"),
            (
                r#"{"PublicKey":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","Port":65536}"#,
                "Port is number 65536",
            ),
            (r#"[]"#, "BackendData is array []"),
        ] {
            let e = WireguardData::from_value(&serde_json::from_str(v).unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(format_mac(&MAC), "c6:d2:32:6f:8f:44");
        for s in [
            "c6:d2:32:6f:8f:44",
            "C6:D2:32:6F:8F:44",
            "c6-d2-32-6f-8f-44",
            "c6d2.326f.8f44",
        ] {
            assert_eq!(parse_mac(s), Some(MAC), "{s}");
        }
        for s in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:4",
            "c6:d2:32:6f:8f:44:00",
            "c6:d2-32:6f:8f:44",
            "g6:d2:32:6f:8f:44",
            "c6d2.326f.8f4g",
            "c6d2.326f8f44",
            "+6:d2:32:6f:8f:44",
            "c6:d2:32:6f:8f:é",
        ] {
            assert_eq!(parse_mac(s), None, "{s}");
        }
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    /// A dual-stack vxlan lease as flannel writes it: `newSubnetAttrs` in
    /// pkg/backend/vxlan/vxlan.go fills PublicIP + BackendData from the `flannel.1` device and
    /// PublicIPv6 + BackendV6Data from `flannel-v6.1`; pkg/lease/lease.go's struct order and
    /// `omitempty` tags give the member order and presence.
    const DUAL_VXLAN_LEASE: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"6a:0b:1e:22:7c:01"}}"#;
    /// The IPv6-only form: no IPv4 device, so PublicIP stays flannel's zero IP4 and there is no
    /// BackendData (same sources).
    const V6_ONLY_VXLAN_LEASE: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"6a:0b:1e:22:7c:01"}}"#;
    const MAC6: [u8; 6] = [0x6a, 0x0b, 0x1e, 0x22, 0x7c, 0x01];

    #[test]
    fn dual_stack_vxlan_lease_bytes() {
        let v4 = VxlanData {
            vni: 1,
            vtep_mac: MAC,
        };
        let v6 = VxlanData {
            vni: 1,
            vtep_mac: MAC6,
        };
        let pub6: Ipv6Addr = "fd00:64::3".parse().unwrap();
        let a = LeaseAttrs::vxlan_dual(Some(ip("192.168.64.3")), &v4, pub6, &v6);
        assert_eq!(a.to_json(), DUAL_VXLAN_LEASE);
        let b = LeaseAttrs::from_json(DUAL_VXLAN_LEASE.as_bytes()).unwrap();
        assert_eq!(b, a);
        assert_eq!(b.vxlan_data().unwrap(), v4);
        assert_eq!(b.vxlan_v6_data().unwrap(), v6);
        assert_eq!(b.public_ipv6, Some(pub6));

        let a = LeaseAttrs::vxlan_dual(None, &v4, pub6, &v6);
        assert_eq!(a.to_json(), V6_ONLY_VXLAN_LEASE);
        let b = LeaseAttrs::from_json(V6_ONLY_VXLAN_LEASE.as_bytes()).unwrap();
        assert_eq!(b, a);
        assert_eq!(b.public_ip, Ipv4Addr::UNSPECIFIED);
        assert!(b.vxlan_data().is_err());
        assert_eq!(b.vxlan_v6_data().unwrap(), v6);

        // flannel's own fuzz seed (pkg/subnet/etcd/fuzz_test.go): a udp-style dual-stack value.
        let b =
            LeaseAttrs::from_json(br#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#).unwrap();
        assert_eq!(b.public_ipv6, Some("fc00::1".parse().unwrap()));
        assert_eq!(b.backend_v6_data, None);
        assert_eq!(
            b.to_json(),
            r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#
        );
        // gre's IPv6 data is its key again; null BackendV6Data counts as absent.
        let mut g = LeaseAttrs::gre(ip("10.0.0.7"), &GreData { vni: 77 });
        g.public_ipv6 = Some(pub6);
        g.backend_v6_data = Some(GreData { vni: 77 }.to_value());
        assert_eq!(
            g.to_json(),
            r#"{"PublicIP":"10.0.0.7","PublicIPv6":"fd00:64::3","BackendType":"gre","BackendData":{"VNI":77},"BackendV6Data":{"VNI":77}}"#
        );
        assert_eq!(
            LeaseAttrs::from_json(g.to_json().as_bytes())
                .unwrap()
                .gre_v6_data()
                .unwrap(),
            GreData { vni: 77 }
        );
        let n = LeaseAttrs::from_json(
            br#"{"PublicIP":"10.0.0.7","backendv6data":{"VNI":3},"BackendV6Data":null}"#,
        )
        .unwrap();
        assert_eq!(n.backend_v6_data, Some(serde_json::json!({"VNI":3})));
        assert!(LeaseAttrs::udp(ip("10.0.0.7")).vxlan_v6_data().is_err());
    }

    #[test]
    fn dual_stack_and_v6_only_keys() {
        // flannel's own test key (pkg/subnet/subnet_test.go, TestSubnetNodev6) and fuzz seed
        // (pkg/subnet/fuzz_test.go).
        for (key, v4, v6) in [
            (
                "10.12.13.0-24&fd00:12:13::-56",
                "10.12.13.0/24",
                "fd00:12:13::/56",
            ),
            ("10.5.1.0-24&fc00::-64", "10.5.1.0/24", "fc00::/64"),
            (
                "10.5.34.0-24&fd00:12:13:5::-64",
                "10.5.34.0/24",
                "fd00:12:13:5::/64",
            ),
        ] {
            let k = SubnetKey::parse(key).unwrap();
            assert_eq!(k.ipv4, Some(v4.parse().unwrap()), "{key}");
            assert_eq!(k.ipv6, Some(net6(v6)), "{key}");
            assert_eq!(k.to_key(), key);
            assert_eq!(parse_subnet_key(key).unwrap(), k.ipv4.unwrap());
        }
        // IPv6 only: MakeSubnetKey with flannel's zero IP4Net.
        let k = SubnetKey {
            ipv4: None,
            ipv6: Some(net6("fd00:12:13:7::/64")),
        };
        assert_eq!(k.to_key(), "0.0.0.0-0&fd00:12:13:7::-64");
        assert_eq!(SubnetKey::parse("0.0.0.0-0&fd00:12:13:7::-64").unwrap(), k);
        assert!(parse_subnet_key("0.0.0.0-0&fd00:12:13:7::-64").is_err());
        assert_eq!(k.to_string(), "fd00:12:13:7::/64");
        // flannel writes compressed lower-case; uncompressed forms are still read.
        assert_eq!(
            SubnetKey::parse("10.5.34.0-24&fd00:12:13:0:0:0:0:0-56")
                .unwrap()
                .to_key(),
            "10.5.34.0-24&fd00:12:13::-56"
        );
        let e = SubnetKey::parse("10.5.34.0-24&fd00:12:13::1-56")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("host bits") && e.contains("fd00:12:13::/56"),
            "{e}"
        );
        for k in [
            "0.0.0.0-0",
            "0.0.0.0-0&",
            "10.5.34.0-24&FD00::-56",
            "10.5.34.0-24&::ffff:1.2.3.4-120",
            "10.5.34.0-24&fd00::-",
            "10.5.34.0-24&-64",
            "10.5.34.0-24&fd00::-0064",
            "10.5.34.0-24&fd00::-64&fd01::-64",
            "10.5.34.0-24&fd00::/64",
        ] {
            assert!(SubnetKey::parse(k).is_err(), "{k:?} accepted");
        }
    }

    #[test]
    fn keys() {
        let sn: Ipv4Net = "10.244.37.0/24".parse().unwrap();
        assert_eq!(subnet_key(sn), "10.244.37.0-24");
        assert_eq!(parse_subnet_key("10.244.37.0-24").unwrap(), sn);
        assert_eq!(
            parse_subnet_key("10.5.34.0-24&fd00:12:13::-56").unwrap(),
            "10.5.34.0/24".parse::<Ipv4Net>().unwrap()
        );
        let e = parse_subnet_key("10.244.37.1-24").unwrap_err().to_string();
        assert!(
            e.contains("host bits") && e.contains("10.244.37.0/24"),
            "{e}"
        );
        for k in [
            "",
            "-",
            "10.244.37.0",
            "10.244.37.0/24",
            "10.244.37.0-",
            "10.244.37.0-33",
            "10.244.37.0-+4",
            "10.244.37.0-0024",
            "010.244.37.0-24",
            "10.244.37-24",
            "10.244.37.0-24&",
            "10.244.37.0-24&fd00::",
            "10.244.37.0-24&fd00::-129",
            "0.0.0.0-0",
            "10.244.37.0-24&zz::-56",
            "x10.244.37.0-24",
            "10.244.37.0-24 ",
            "fd00::-64",
        ] {
            assert!(parse_subnet_key(k).is_err(), "{k:?} accepted");
        }
    }

    proptest::proptest! {
        #[test]
        fn key_round_trip(a in proptest::prelude::any::<u32>(), len in 1u8..=32) {
            let sn = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            proptest::prop_assert_eq!(parse_subnet_key(&subnet_key(sn)).unwrap(), sn);
        }

        #[test]
        fn key_parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_subnet_key(&s);
        }

        #[test]
        fn key_parse_near_keys(s in "[0-9.]{1,16}-[0-9+]{0,3}(&[0-9a-f:]{0,12}-[0-9]{0,3})?") {
            if let Ok(k) = SubnetKey::parse(&s) {
                proptest::prop_assert!(k.ipv4.is_some() || k.ipv6.is_some());
                if let Some(sn) = k.ipv4 {
                    proptest::prop_assert_eq!(sn.trunc(), sn);
                }
                if let Some(sn) = k.ipv6 {
                    proptest::prop_assert_eq!(sn.trunc(), sn);
                }
                proptest::prop_assert_eq!(SubnetKey::parse(&k.to_key()).unwrap(), k);
            }
        }

        #[test]
        fn dual_key_round_trip(
            a in 1u32..,
            len in 1u8..=32,
            a6 in proptest::prelude::any::<u128>(),
            len6 in 1u8..=128,
            v4 in proptest::prelude::any::<bool>(),
        ) {
            let sn6 = Ipv6Net::new(Ipv6Addr::from(a6), len6).unwrap().trunc();
            let sn = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            let k = SubnetKey { ipv4: v4.then_some(sn), ipv6: Some(sn6) };
            let text = k.to_key();
            // Keys flannel's writer turns dotted (see gojson::format_ipv6) are not keys
            // flannel's reader accepts either; every other one round-trips.
            if text.contains('&') && text.rsplit('&').next().is_some_and(|p| p.contains('.')) {
                proptest::prop_assert!(SubnetKey::parse(&text).is_err());
            } else {
                proptest::prop_assert_eq!(SubnetKey::parse(&text).unwrap(), k);
            }
        }

        #[test]
        fn lease_parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = LeaseAttrs::from_json(&bytes);
        }

        #[test]
        fn lease_round_trip(ip in proptest::prelude::any::<u32>(), vni in 0u32..=MAX_VNI, mac in proptest::prelude::any::<[u8; 6]>()) {
            let a = LeaseAttrs::vxlan(Ipv4Addr::from(ip), &VxlanData { vni, vtep_mac: mac });
            let decoded = LeaseAttrs::from_json(a.to_json().as_bytes());
            if unusable(a.public_ip.into()).is_some() {
                let refused = matches!(decoded, Err(LeaseError::UnusableAddress { field: "PublicIP", .. }));
                proptest::prop_assert!(refused);
                return Ok(());
            }
            let b = decoded.unwrap();
            proptest::prop_assert_eq!(b.vxlan_data().unwrap(), VxlanData { vni, vtep_mac: mac });
            proptest::prop_assert_eq!(b, a);
        }
    }
}
