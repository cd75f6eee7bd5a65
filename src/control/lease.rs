//! Subnet leases as flannel stores them: the value JSON (`LeaseAttrs`), each backend's
//! `BackendData`, and the `<prefix>/subnets/<key>` key form.
//!
//! Pure: what is written is byte-identical to flannel v0.28's Go encoder output; what is read
//! is decoded as leniently as Go does (keys case-insensitive, unknown keys ignored), but with
//! strict types, and never panics on untrusted bytes.

use super::gojson::{self, Member, Members};
use ipnet::Ipv4Net;
use serde_json::Value;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Largest VNI: 24 bits.
const MAX_VNI: u32 = (1 << 24) - 1;

/// The value of a lease key: who holds the subnet and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// `PublicIP`: the holder's underlay address (node identity in flannel).
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6`: written as `null` when absent.
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType`: "vxlan", "gre"...; absent for udp (Go `omitempty`).
    pub backend_type: Option<String>,
    /// `BackendData`: the backend's own object; absent for udp (Go `omitempty`).
    pub backend_data: Option<Value>,
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
    /// `VtepMAC` that does not parse as a 6-byte MAC.
    #[error("lease VtepMAC {value:?} is not valid: expected a MAC address such as \"c6:d2:32:6f:8f:44\"")]
    BadMac { value: String },
    /// `VNI` out of the 24-bit range.
    #[error("lease VNI {value} is out of range: expected 0..=16777215")]
    VniOutOfRange { value: i128 },
    /// A key under `<prefix>/subnets/` that is not a subnet.
    #[error("subnet key {key:?} is not valid: expected an IPv4 subnet such as \"10.244.37.0-24\" (optionally \"&<ipv6>-<len>\")")]
    BadSubnetKey { key: String },
    /// A key whose address has host bits set.
    #[error("subnet key {key:?} has host bits set: expected its network address, {network}")]
    HostBitsSet { key: String, network: Ipv4Net },
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

impl LeaseAttrs {
    /// A udp lease: only `PublicIP` (flannel's udp backend sets nothing else).
    pub fn udp(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: None,
            backend_data: None,
        }
    }

    /// A vxlan lease, as flannel's vxlan backend writes it.
    pub fn vxlan(public_ip: Ipv4Addr, data: &VxlanData) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("vxlan".to_owned()),
            backend_data: Some(data.to_value()),
        }
    }

    /// A gre lease (overlayd's own backend type).
    pub fn gre(public_ip: Ipv4Addr, data: &GreData) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("gre".to_owned()),
            backend_data: Some(data.to_value()),
        }
    }

    /// The value bytes exactly as flannel's Go encoder writes them, e.g.
    /// `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`.
    pub fn to_json(&self) -> String {
        let mut o = String::with_capacity(128);
        // Writing to a String cannot fail.
        let _ = write!(o, "{{\"PublicIP\":\"{}\",\"PublicIPv6\":", self.public_ip);
        match self.public_ipv6 {
            None => o.push_str("null"),
            // Go prints IPv4-mapped addresses dotted.
            Some(a) => match a.to_ipv4_mapped() {
                Some(v4) => {
                    let _ = write!(o, "\"{v4}\"");
                }
                None => {
                    let _ = write!(o, "\"{a}\"");
                }
            },
        }
        if let Some(t) = self.backend_type.as_deref().filter(|t| !t.is_empty()) {
            o.push_str(",\"BackendType\":");
            gojson::write_str(&mut o, t);
        }
        if let Some(d) = &self.backend_data {
            o.push_str(",\"BackendData\":");
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
        let backend_type = match m.last_non_null("BackendType") {
            None => None,
            Some(v) => Some(string_of("BackendType", v)?.to_owned()).filter(|s| !s.is_empty()),
        };
        let backend_data = m.last_non_null("BackendData").map(Member::to_value);
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data,
        })
    }

    /// Decode `BackendData` as vxlan's.
    pub fn vxlan_data(&self) -> Result<VxlanData, LeaseError> {
        VxlanData::from_value(self.backend_data.as_ref().ok_or(LeaseError::MissingField {
            field: "BackendData",
            expected: "an object such as {\"VNI\":1,\"VtepMAC\":\"c6:d2:32:6f:8f:44\"}",
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

/// The key suffix under `<prefix>/subnets/` for a subnet: `10.244.37.0-24`.
pub fn subnet_key(sn: Ipv4Net) -> String {
    format!("{}-{}", sn.addr(), sn.prefix_len())
}

/// Parse a key suffix written by [`subnet_key`] or by flannel, including the dual-stack form
/// `10.5.34.0-24&fd00:12:13::-56` (the IPv4 part is returned; the IPv6 part must be well formed).
/// Addresses with host bits set are refused.
pub fn parse_subnet_key(key: &str) -> Result<Ipv4Net, LeaseError> {
    let bad = || LeaseError::BadSubnetKey {
        key: key.to_owned(),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
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
    if let Some(v6) = v6 {
        let (a6, l6) = v6.split_once('-').ok_or_else(bad)?;
        if !digits(l6) {
            return Err(bad());
        }
        let a6: Ipv6Addr = a6.parse().map_err(|_| bad())?;
        let l6: u8 = l6.parse().map_err(|_| bad())?;
        ipnet::Ipv6Net::new(a6, l6).map_err(|_| bad())?;
    }
    if sn.trunc() != sn {
        return Err(LeaseError::HostBitsSet {
            key: key.to_owned(),
            network: sn.trunc(),
        });
    }
    Ok(sn)
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
        fn key_round_trip(a in proptest::prelude::any::<u32>(), len in 0u8..=32) {
            let sn = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            proptest::prop_assert_eq!(parse_subnet_key(&subnet_key(sn)).unwrap(), sn);
        }

        #[test]
        fn key_parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_subnet_key(&s);
        }

        #[test]
        fn key_parse_near_keys(s in "[0-9.]{1,16}-[0-9+]{0,3}(&[0-9a-f:]{0,12}-[0-9]{0,3})?") {
            if let Ok(sn) = parse_subnet_key(&s) {
                proptest::prop_assert_eq!(sn.trunc(), sn);
            }
        }

        #[test]
        fn lease_parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = LeaseAttrs::from_json(&bytes);
        }

        #[test]
        fn lease_round_trip(ip in proptest::prelude::any::<u32>(), vni in 0u32..=MAX_VNI, mac in proptest::prelude::any::<[u8; 6]>()) {
            let a = LeaseAttrs::vxlan(Ipv4Addr::from(ip), &VxlanData { vni, vtep_mac: mac });
            let b = LeaseAttrs::from_json(a.to_json().as_bytes()).unwrap();
            proptest::prop_assert_eq!(b.vxlan_data().unwrap(), VxlanData { vni, vtep_mac: mac });
            proptest::prop_assert_eq!(b, a);
        }
    }
}
