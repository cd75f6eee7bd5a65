//! Control plane: the network config, subnet leases and subnet.env, in flannel's exact
//! formats, and the etcd client that keeps them.
//!
//! [`config`], [`lease`] and [`subnet`] are pure: they parse and render flannel's JSON
//! byte for byte and choose subnets, without touching etcd, clocks or the network.
//! [`subnet_env`] renders flannel's subnet.env and writes it (the CNI plugin's interface).
//! [`etcd`] is the async part on top of them: it talks to etcd (transactions, keepalive,
//! list + watch) and publishes forwarding-table snapshots, through [`pool`], which fails
//! over between the etcd members; [`follow`] is the list → watch → resume loop over a key
//! prefix that it and the L2 membership share.

pub mod config;
pub mod etcd;
pub mod follow;
pub mod lease;
pub mod pool;
pub mod subnet;
pub mod subnet_env;

/// Go `encoding/json` compatibility: key matching, value kinds and string escaping.
///
/// flannel's structs are decoded by Go's decoder (keys case-insensitive, duplicates: last wins,
/// `null` leaves a field untouched) and encoded by Go's encoder (HTML-safe escaping). These
/// helpers let the parsers here accept and write exactly what flannel does.
pub(crate) mod gojson {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;
    use std::fmt::{self, Write as _};

    /// A JSON object's members in document order, duplicates kept (Go applies them in order).
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Members(pub(crate) Vec<(String, Member)>);

    /// One member's value: nested objects keep their order and duplicates too.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Member {
        /// A JSON object.
        Object(Members),
        /// Anything else.
        Other(Value),
    }

    impl Member {
        /// Whether this is JSON `null`.
        pub(crate) fn is_null(&self) -> bool {
            matches!(self, Member::Other(Value::Null))
        }

        /// The plain JSON value (nested objects collapse into maps: last duplicate wins).
        pub(crate) fn to_value(&self) -> Value {
            match self {
                Member::Other(v) => v.clone(),
                Member::Object(m) => {
                    Value::Object(m.0.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
                }
            }
        }

        /// The JSON value if it is not an object.
        pub(crate) fn as_value(&self) -> Option<&Value> {
            match self {
                Member::Other(v) => Some(v),
                Member::Object(_) => None,
            }
        }
    }

    impl<'de> Deserialize<'de> for Member {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Member;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_bool<E>(self, b: bool) -> Result<Member, E> {
                    Ok(Member::Other(Value::Bool(b)))
                }
                fn visit_i64<E>(self, n: i64) -> Result<Member, E> {
                    Ok(Member::Other(Value::from(n)))
                }
                fn visit_u64<E>(self, n: u64) -> Result<Member, E> {
                    Ok(Member::Other(Value::from(n)))
                }
                fn visit_f64<E>(self, n: f64) -> Result<Member, E> {
                    Ok(Member::Other(
                        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
                    ))
                }
                fn visit_str<E>(self, s: &str) -> Result<Member, E> {
                    Ok(Member::Other(Value::String(s.to_owned())))
                }
                fn visit_string<E>(self, s: String) -> Result<Member, E> {
                    Ok(Member::Other(Value::String(s)))
                }
                fn visit_unit<E>(self) -> Result<Member, E> {
                    Ok(Member::Other(Value::Null))
                }
                fn visit_none<E>(self) -> Result<Member, E> {
                    Ok(Member::Other(Value::Null))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = seq.next_element::<Value>()? {
                        v.push(e);
                    }
                    Ok(Member::Other(Value::Array(v)))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Member, A::Error> {
                    MembersVisitor.visit_map(map).map(Member::Object)
                }
            }
            d.deserialize_any(V)
        }
    }

    struct MembersVisitor;

    impl<'de> Visitor<'de> for MembersVisitor {
        type Value = Members;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
            let mut v = Vec::new();
            while let Some(kv) = map.next_entry::<String, Member>()? {
                v.push(kv);
            }
            Ok(Members(v))
        }
        fn visit_unit<E>(self) -> Result<Members, E> {
            // Go: decoding `null` into a struct is a no-op.
            Ok(Members(Vec::new()))
        }
    }

    impl<'de> Deserialize<'de> for Members {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(MembersVisitor)
        }
    }

    impl Members {
        /// Members whose key matches `field` as Go's decoder would, in order.
        pub(crate) fn get<'a>(&'a self, field: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
            self.0
                .iter()
                .filter(move |(k, _)| key_matches(k, field))
                .map(|(_, v)| v)
        }

        /// The value Go would end up with for `field`: the last matching member that is not
        /// `null` (a `null` leaves a non-pointer field as it was).
        pub(crate) fn last_non_null<'a>(&'a self, field: &'a str) -> Option<&'a Member> {
            self.get(field).filter(|v| !v.is_null()).last()
        }
    }

    /// Whether a JSON key selects the (ASCII) Go field name `field`: `bytes.EqualFold` semantics,
    /// i.e. ASCII case folding plus the two non-ASCII letters that fold onto ASCII ones,
    /// U+017F (long s ~ s) and U+212A (Kelvin sign ~ k).
    pub(crate) fn key_matches(key: &str, field: &str) -> bool {
        let mut k = key.chars();
        for f in field.chars() {
            let Some(c) = k.next() else { return false };
            let ok = c.eq_ignore_ascii_case(&f)
                || (c == '\u{17F}' && f.eq_ignore_ascii_case(&'s'))
                || (c == '\u{212A}' && f.eq_ignore_ascii_case(&'k'));
            if !ok {
                return false;
            }
        }
        k.next().is_none()
    }

    /// A short description of a JSON value for error messages: its kind and (shortened) text.
    pub(crate) fn describe(m: &Member) -> String {
        let v = &m.to_value();
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let mut text = v.to_string();
        if text.len() > 40 {
            let mut cut = 37;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        format!("{kind} {text}")
    }

    /// Append `s` as a JSON string the way Go's `encoding/json` writes it (HTML-safe).
    pub(crate) fn write_str(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    /// Append `v` compactly, as Go re-encodes a `json.RawMessage` (members in map order).
    pub(crate) fn write_value(out: &mut String, v: &Value) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => {
                let _ = write!(out, "{n}");
            }
            Value::String(s) => write_str(out, s),
            Value::Array(a) => {
                out.push('[');
                for (i, e) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_value(out, e);
                }
                out.push(']');
            }
            Value::Object(o) => {
                out.push('{');
                for (i, (k, e)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    write_value(out, e);
                }
                out.push('}');
            }
        }
    }

    /// Parse an IPv4 address as flannel's `ip.ParseIP4` does: dotted quad, or an
    /// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
    pub(crate) fn parse_ipv4(s: &str) -> Option<std::net::Ipv4Addr> {
        if let Ok(a) = s.parse::<std::net::Ipv4Addr>() {
            return Some(a);
        }
        s.parse::<std::net::Ipv6Addr>()
            .ok()
            .and_then(|a| a.to_ipv4_mapped())
    }

    /// An IPv6 address as flannel's `ip.IP6.String()` writes it (pkg/ip/ip6net.go), in lease
    /// keys, `PublicIPv6` and subnet.env: Go's `net.IP.String()` (RFC 5952: lower case, the
    /// first longest run of two or more zero groups compressed, which is also what Rust's
    /// `Display` does), except that IPv4-mapped addresses are written dotted (`1.2.3.4`), and
    /// so are addresses from `::1.0.0.0` to `::255.255.255.255`: flannel keeps IPv6 addresses
    /// as big integers, and one whose minimal big-endian form is 4 bytes long is turned back
    /// into a 4-byte (IPv4) `net.IP`.
    pub(crate) fn format_ipv6(a: std::net::Ipv6Addr) -> String {
        let v = u128::from(a);
        if let Some(v4) = a.to_ipv4_mapped() {
            return v4.to_string();
        }
        if (1u128 << 24..1u128 << 32).contains(&v) {
            // The range guarantees the value fits in 32 bits.
            return std::net::Ipv4Addr::from(v as u32).to_string();
        }
        a.to_string()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ipv6_formats_like_flannel() {
            let f = |s: &str| format_ipv6(s.parse().unwrap());
            // RFC 5952, as Go's net.IP.String().
            assert_eq!(f("fd00:12:13::"), "fd00:12:13::");
            assert_eq!(f("FD00:0:0:5:0:0:0:1"), "fd00:0:0:5::1");
            assert_eq!(f("2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1");
            assert_eq!(f("2001:db8:0:1:1:1:1:1"), "2001:db8:0:1:1:1:1:1");
            assert_eq!(f("::"), "::");
            assert_eq!(f("::1"), "::1");
            assert_eq!(f("::a0b"), "::a0b");
            // flannel's big-integer quirks: dotted for mapped and for 4-byte values.
            assert_eq!(f("::ffff:10.1.2.3"), "10.1.2.3");
            assert_eq!(f("::1.0.0.0"), "1.0.0.0");
            assert_eq!(f("::255.255.255.255"), "255.255.255.255");
            assert_eq!(f("::1:0:0"), "::1:0:0");
            assert_eq!(f("::ff:ffff"), "::ff:ffff");
        }

        #[test]
        fn keys_fold_like_go() {
            assert!(key_matches("Network", "Network"));
            assert!(key_matches("network", "Network"));
            assert!(key_matches("NETWORK", "Network"));
            assert!(key_matches("\u{17F}ubnetLen", "SubnetLen"));
            assert!(key_matches("bac\u{212A}end", "Backend"));
            assert!(!key_matches("Networks", "Network"));
            assert!(!key_matches("Networ", "Network"));
            assert!(!key_matches("Net_work", "Network"));
        }

        #[test]
        fn strings_escape_like_go() {
            let mut s = String::new();
            write_str(&mut s, "a\"b\\c<d>&\n\u{1}\u{2028}é");
            assert_eq!(s, r#""a\"b\\c\u003cd\u003e\u0026\n\u0001\u2028é""#);
        }

        #[test]
        fn members_keep_order_and_duplicates() {
            let m: Members =
                serde_json::from_str(r#"{"b":1,"a":{"x":1,"X":2},"B":null,"b":3}"#).unwrap();
            assert_eq!(m.0.len(), 4);
            assert_eq!(m.last_non_null("B"), Some(&Member::Other(Value::from(3))));
            let Some(Member::Object(a)) = m.last_non_null("A") else {
                panic!("a is an object")
            };
            assert_eq!(a.0.len(), 2);
            assert_eq!(a.last_non_null("x"), Some(&Member::Other(Value::from(2))));
            let m: Members = serde_json::from_str("null").unwrap();
            assert!(m.0.is_empty());
            assert!(serde_json::from_str::<Members>("[1]").is_err());
        }

        #[test]
        fn ipv4_parse_like_go() {
            assert_eq!(parse_ipv4("10.1.2.3"), Some([10, 1, 2, 3].into()));
            assert_eq!(parse_ipv4("::ffff:10.1.2.3"), Some([10, 1, 2, 3].into()));
            assert_eq!(parse_ipv4("010.1.2.3"), None);
            assert_eq!(parse_ipv4("fd00::1"), None);
            assert_eq!(parse_ipv4(""), None);
        }
    }
}
