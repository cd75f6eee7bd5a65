//! How a wireguard node lays out its devices for `Backend.Mode`, as flanneld's wireguard
//! backend does (pure: config and addresses in, values out). What its lease says is
//! `crate::backend`'s, as for every backend.
//!
//! `separate` (the default): `flannel-wg` carries IPv4 on `ListenPort` to the peers'
//! `PublicIP`, `flannel-wg-v6` carries IPv6 on `ListenPortV6` to their `PublicIPv6`.
//! `ipv4`, `ipv6`, `auto`: one `flannel-wg` on `ListenPort` carries both families, each
//! peer's AllowedIPs being both of its subnets and its endpoint its `PublicIP` (`ipv4`) or
//! `PublicIPv6` (`ipv6`). flanneld's `auto` picks the family per peer; our one device has
//! one underlay socket, so `auto` picks it per node: IPv4 when this node has an IPv4
//! underlay, else IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::control::config::{NetworkConfig, WireguardMode};

pub use crate::backend::wireguard::{DEVICE, DEVICE_V6};

/// The underlay family of a device's socket and of its peers' endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Under {
    V4,
    V6,
}

/// One wireguard device of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub name: &'static str,
    /// Its listen port, also the port a peer's lease is reached on when it gives none.
    pub port: u16,
    /// Whether it carries the IPv4 / IPv6 subnets.
    pub v4: bool,
    pub v6: bool,
    pub under: Under,
    /// The underlay address its socket binds.
    pub bind: IpAddr,
}

/// The devices `cfg`'s mode asks for, given the underlay addresses this node binds
/// (`underlay4` when IPv4 is enabled, `underlay6` when IPv6 has an underlay); an error
/// names the mode and the address it lacks.
pub fn layouts(
    cfg: &NetworkConfig,
    underlay4: Option<Ipv4Addr>,
    underlay6: Option<Ipv6Addr>,
) -> Result<Vec<Layout>, String> {
    let wg = cfg.backend.wireguard.clone().unwrap_or_default();
    let (v4, v6) = (cfg.enable_ipv4, cfg.ipv6.is_some());
    let bind = |under: Under| match under {
        Under::V4 => underlay4.map(IpAddr::V4),
        Under::V6 => underlay6.map(IpAddr::V6),
    };
    let one = |name, port, v4, v6, under| {
        bind(under)
            .map(|bind| Layout {
                name,
                port,
                v4,
                v6,
                under,
                bind,
            })
            .ok_or_else(|| missing(wg.mode, under))
    };
    let port = cfg.backend.port;
    let mut out = Vec::new();
    match wg.mode {
        WireguardMode::Separate => {
            if v4 {
                out.push(one(DEVICE, port, true, false, Under::V4)?);
            }
            if v6 {
                out.push(one(DEVICE_V6, wg.port_v6, false, true, Under::V6)?);
            }
        }
        WireguardMode::Ipv4 => out.push(one(DEVICE, port, v4, v6, Under::V4)?),
        WireguardMode::Ipv6 => out.push(one(DEVICE, port, v4, v6, Under::V6)?),
        WireguardMode::Auto => {
            let under = match underlay4 {
                Some(_) => Under::V4,
                None => Under::V6,
            };
            out.push(one(DEVICE, port, v4, v6, under)?);
        }
    }
    Ok(out)
}

fn missing(mode: WireguardMode, under: Under) -> String {
    let (what, fix) = match under {
        Under::V4 => ("an IPv4 underlay address (and EnableIPv4)", "\"ipv6\" or \"separate\""),
        Under::V6 => ("an IPv6 underlay address (EnableIPv6 and an IPv6 address on the interface, or a local --public-ipv6)", "\"ipv4\" or \"auto\""),
    };
    format!(
        "wireguard Backend.Mode {:?} needs {what} for its device's socket and its peers' endpoints, and this node has none; give it one or set Mode to {fix}",
        mode.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json.as_bytes()).unwrap()
    }

    const DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"wireguard"}}"#;
    const A4: Option<Ipv4Addr> = Some(Ipv4Addr::new(192, 168, 1, 2));
    const A6: Option<Ipv6Addr> = Some(Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2));

    fn names(v: &[Layout]) -> Vec<(&str, u16, bool, bool, Under)> {
        v.iter()
            .map(|l| (l.name, l.port, l.v4, l.v6, l.under))
            .collect()
    }

    #[test]
    fn mode_to_devices() {
        let sep = layouts(&cfg(DUAL), A4, A6).unwrap();
        assert_eq!(
            names(&sep),
            [
                (DEVICE, 51820, true, false, Under::V4),
                (DEVICE_V6, 51821, false, true, Under::V6)
            ]
        );
        assert_eq!(sep[1].bind, IpAddr::V6(A6.unwrap()));
        let with =
            |mode: &str| DUAL.replace(r#""wireguard""#, &format!(r#""wireguard","Mode":"{mode}""#));
        for (mode, a4, under) in [
            ("ipv4", A4, Under::V4),
            ("ipv6", A4, Under::V6),
            ("auto", A4, Under::V4),
            ("auto", None, Under::V6),
        ] {
            let got = layouts(&cfg(&with(mode)), a4, A6).unwrap();
            assert_eq!(names(&got), [(DEVICE, 51820, true, true, under)], "{mode}");
        }
        let e = layouts(&cfg(&with("ipv6")), A4, None).unwrap_err();
        assert!(e.contains("\"ipv6\"") && e.contains("IPv6 underlay"), "{e}");
        let e = layouts(&cfg(DUAL), A4, None).unwrap_err();
        assert!(e.contains("\"separate\""), "{e}");
        // IPv4 only and IPv6 only.
        let v4 = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#;
        assert_eq!(
            names(&layouts(&cfg(v4), A4, None).unwrap()),
            [(DEVICE, 51820, true, false, Under::V4)]
        );
        let v6 = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"wireguard","ListenPortV6":5000}}"#;
        assert_eq!(
            names(&layouts(&cfg(v6), None, A6).unwrap()),
            [(DEVICE_V6, 5000, false, true, Under::V6)]
        );
    }
}
