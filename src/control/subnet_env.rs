//! subnet.env (`--subnet-file`, default `/run/flannel/subnet.env`): what flannel's CNI plugin
//! reads to configure pods. Rendered byte for byte as flannel writes it, written atomically.
//!
//! The only I/O in the control plane's pure layer: the file itself. The daemon leaves the file
//! in place on exit (as flannel does), so a restart can ask for the same subnet again.

use super::config::NetworkConfig;
use super::lease::SubnetKey;
use crate::go::json as gojson;
use ipnet::{Ipv4Net, Ipv6Net};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The contents of subnet.env: the IPv4 part, the IPv6 part, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the whole IPv4 overlay (ignored when `ipv4` is false).
    pub network: Ipv4Net,
    /// This node's IPv4 subnet (`FLANNEL_SUBNET`); written as its first host address with the
    /// subnet's length.
    pub subnet: Ipv4Net,
    /// Whether the IPv4 lines are written (`EnableIPv4`).
    pub ipv4: bool,
    /// `FLANNEL_IPV6_NETWORK` and this node's IPv6 subnet (`FLANNEL_IPV6_SUBNET`, written as
    /// its first host address), when IPv6 is enabled.
    pub ipv6: Option<Ipv6Subnets>,
    /// `FLANNEL_MTU`: the overlay device's MTU.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether overlayd masquerades (so the CNI plugin should not).
    pub ipmasq: bool,
}

/// The IPv6 lines of subnet.env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Subnets {
    /// `FLANNEL_IPV6_NETWORK`: the whole IPv6 overlay.
    pub network: Ipv6Net,
    /// This node's IPv6 subnet.
    pub subnet: Ipv6Net,
}

impl SubnetEnv {
    /// An IPv4-only subnet.env.
    pub fn v4(network: Ipv4Net, subnet: Ipv4Net, mtu: u32, ipmasq: bool) -> Self {
        SubnetEnv {
            network,
            subnet,
            ipv4: true,
            ipv6: None,
            mtu,
            ipmasq,
        }
    }

    /// subnet.env for the subnets `held` under `cfg`: the IPv4 lines when `EnableIPv4`, the
    /// IPv6 lines when `EnableIPv6` and an IPv6 subnet is held.
    pub fn for_lease(cfg: &NetworkConfig, held: SubnetKey, mtu: u32, ipmasq: bool) -> Self {
        SubnetEnv {
            network: cfg.network,
            subnet: held.ipv4.unwrap_or(cfg.network),
            ipv4: cfg.enable_ipv4 && held.ipv4.is_some(),
            ipv6: cfg
                .ipv6
                .as_ref()
                .zip(held.ipv6)
                .map(|(c6, subnet)| Ipv6Subnets {
                    network: c6.network,
                    subnet,
                }),
            mtu,
            ipmasq,
        }
    }

    /// The file's text as flannel's `WriteSubnetFile` (pkg/subnet/subnet.go) writes it, e.g.
    /// `FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n`;
    /// a dual-stack node adds `FLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:34::1/64\n`
    /// after the IPv4 lines, an IPv6-only node has only those.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(160);
        // Writing to a String cannot fail.
        if self.ipv4 {
            let first = Ipv4Addr::from(u32::from(self.subnet.network()).wrapping_add(1));
            let _ = write!(
                o,
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\n",
                self.network,
                first,
                self.subnet.prefix_len()
            );
        }
        if let Some(v6) = &self.ipv6 {
            let first = Ipv6Addr::from(u128::from(v6.subnet.network()).wrapping_add(1));
            let _ = write!(
                o,
                "FLANNEL_IPV6_NETWORK={}/{}\nFLANNEL_IPV6_SUBNET={}/{}\n",
                gojson::format_ipv6(v6.network.network()),
                v6.network.prefix_len(),
                gojson::format_ipv6(first),
                v6.subnet.prefix_len()
            );
        }
        let _ = write!(
            o,
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        );
        o
    }

    /// Write the file atomically: parent directories created, a temporary file in the same
    /// directory written and fsynced, renamed over `path`, and the directory fsynced.
    /// Readers see the old file or the new one, never a partial one.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("subnet file path {} has no file name", path.display()),
            )
        })?;
        fs::create_dir_all(dir)?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        // Never through a link planted at the temporary name: unlink whatever is there
        // (the link, not its target), then create anew, refusing any link (O_EXCL, O_NOFOLLOW).
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// The subnets named by `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET` in an existing subnet
/// file (`10.5.52.1/24` gives `10.5.52.0/24`), to ask for the same subnets after a restart,
/// as flanneld does (`ReadCIDRFromSubnetFile`/`ReadIP6CIDRFromSubnetFile` in its main.go).
/// Each is `None` when the file is missing, unreadable or has no well-formed value for it.
pub fn read_previous(path: &Path) -> SubnetKey {
    match fs::read_to_string(path) {
        Ok(text) => parse_previous(&text),
        Err(_) => SubnetKey::default(),
    }
}

/// [`read_previous`] on the file's text.
pub fn parse_previous(text: &str) -> SubnetKey {
    SubnetKey {
        ipv4: previous(text, "FLANNEL_SUBNET", |n: Ipv4Net| n.trunc()),
        ipv6: previous(text, "FLANNEL_IPV6_SUBNET", |n: Ipv6Net| n.trunc()),
    }
}

/// The `KEY=value` lines of a subnet.env, in order: the one grammar both overlayd (for
/// [`read_previous`]) and the CNI plugin read it with. Dotenv style: lines without `=` are
/// skipped; blanks around the line, the key and the value, an `export ` prefix and one pair
/// of quotes (`"` or `'`) around the value are tolerated.
pub fn vars(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let l = l.trim();
        let l = l.strip_prefix("export ").map_or(l, str::trim_start);
        let (k, v) = l.split_once('=')?;
        let v = v.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q)?.strip_suffix(*q));
        Some((k.trim(), unquoted.unwrap_or(v)))
    })
}

/// The value of the last `key=` line.
fn env_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    vars(text)
        .filter_map(|(k, v)| (k == key).then_some(v))
        .last()
}

/// The network of the last `key=` line holding a CIDR of that type (`10.5.52.1/24` gives
/// `10.5.52.0/24`); a malformed last line gives `None`.
fn previous<N: std::str::FromStr>(text: &str, key: &str, trunc: fn(N) -> N) -> Option<N> {
    env_value(text, key)?.parse::<N>().ok().map(trunc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn env() -> SubnetEnv {
        SubnetEnv::v4(
            "10.5.0.0/16".parse().unwrap(),
            "10.5.52.0/24".parse().unwrap(),
            1450,
            false,
        )
    }

    /// A unique scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "overlayd-subnet-env-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&p);
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn renders_flannel_format() {
        assert_eq!(
            env().render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let e = SubnetEnv::v4(
            "10.0.0.0/28".parse().unwrap(),
            "10.0.0.12/30".parse().unwrap(),
            8950,
            true,
        );
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.0.0.0/28\nFLANNEL_SUBNET=10.0.0.13/30\nFLANNEL_MTU=8950\nFLANNEL_IPMASQ=true\n"
        );
    }

    /// What flannel's `WriteSubnetFile` (pkg/subnet/subnet.go) writes for a dual-stack and an
    /// IPv6-only node: the IPv4 pair, then the IPv6 pair (each subnet's first address, via
    /// `IncrementIP`, printed by `IP6Net.String`), then MTU and IPMASQ.
    #[test]
    fn renders_flannel_ipv6_format() {
        let v6 = Ipv6Subnets {
            network: "fd00:5::/56".parse().unwrap(),
            subnet: "fd00:5:0:34::/64".parse().unwrap(),
        };
        let dual = SubnetEnv {
            ipv6: Some(v6),
            ..env()
        };
        let text = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:34::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        assert_eq!(dual.render(), text);
        assert_eq!(
            parse_previous(text),
            SubnetKey {
                ipv4: Some("10.5.52.0/24".parse().unwrap()),
                ipv6: Some("fd00:5:0:34::/64".parse().unwrap()),
            }
        );
        let only6 = SubnetEnv {
            ipv4: false,
            mtu: 1430,
            ipmasq: true,
            ..dual
        };
        let text = "FLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:34::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n";
        assert_eq!(only6.render(), text);
        assert_eq!(parse_previous(text).ipv4, None);
        // A /126 subnet's first address; flannel's uncompressed-zero rules.
        let small = SubnetEnv {
            ipv4: false,
            ipv6: Some(Ipv6Subnets {
                network: "2001:db8:0:0:1::/124".parse().unwrap(),
                subnet: "2001:db8::1:0:0:4/126".parse().unwrap(),
            }),
            ..env()
        };
        assert_eq!(
            small.render(),
            "FLANNEL_IPV6_NETWORK=2001:db8:0:0:1::/124\nFLANNEL_IPV6_SUBNET=2001:db8::1:0:0:5/126\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        // The file overlayd read back is what flannel's CNI plugin reads too.
        let p = |t: &str| parse_previous(t).ipv6;
        assert_eq!(
            p("FLANNEL_IPV6_SUBNET=\"fd00:5:0:34::1/64\""),
            Some("fd00:5:0:34::/64".parse().unwrap())
        );
        assert_eq!(p("FLANNEL_IPV6_SUBNET=10.5.52.1/24\n"), None);
        assert_eq!(p("FLANNEL_IPV6_SUBNET=fd00::1\n"), None);
        assert_eq!(p("FLANNEL_SUBNET=10.5.52.1/24\n"), None);
    }

    #[test]
    fn writes_atomically_and_reads_back() {
        let s = Scratch::new("write");
        let path = s.0.join("run/flannel/subnet.env");
        env().write_atomic(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), env().render());
        assert_eq!(
            read_previous(&path).ipv4,
            Some("10.5.52.0/24".parse().unwrap())
        );
        // Overwrite in place; no temporary file left behind.
        let mut e2 = env();
        e2.subnet = "10.5.9.0/24".parse().unwrap();
        e2.write_atomic(&path).unwrap();
        assert_eq!(
            read_previous(&path).ipv4,
            Some("10.5.9.0/24".parse().unwrap())
        );
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("subnet.env")]);
    }

    #[test]
    fn write_never_follows_a_planted_link() {
        let s = Scratch::new("link");
        fs::create_dir_all(&s.0).unwrap();
        let path = s.0.join("subnet.env");
        let victim = s.0.join("victim");
        fs::write(&victim, "keep").unwrap();
        let tmp = s.0.join(format!(".subnet.env.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        env().write_atomic(&path).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(fs::read_to_string(&path).unwrap(), env().render());
    }

    #[test]
    fn write_fails_cleanly() {
        let s = Scratch::new("fail");
        fs::create_dir_all(&s.0).unwrap();
        // The target is a directory: rename fails, the temporary file is removed.
        let path = s.0.join("subnet.env");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "x").unwrap();
        assert!(env().write_atomic(&path).is_err());
        assert_eq!(fs::read_dir(&s.0).unwrap().count(), 1);
    }

    #[test]
    fn previous_subnet_parsing() {
        let p = |t: &str| parse_previous(t).ipv4;
        let want = Some("10.5.52.0/24".parse().unwrap());
        assert_eq!(p(&env().render()), want);
        assert_eq!(p("FLANNEL_SUBNET=\"10.5.52.1/24\"\n"), want);
        assert_eq!(p("  export FLANNEL_SUBNET = 10.5.52.1/24  "), want);
        assert_eq!(
            p("FLANNEL_SUBNET=10.1.1.1/24\nFLANNEL_SUBNET=10.5.52.1/24"),
            want
        );
        assert_eq!(p(""), None);
        assert_eq!(p("FLANNEL_NETWORK=10.5.0.0/16\n"), None);
        assert_eq!(p("FLANNEL_SUBNET=\n"), None);
        assert_eq!(p("FLANNEL_SUBNET=10.5.52.1\n"), None);
        assert_eq!(p("FLANNEL_SUBNET=fd00::1/64\n"), None);
        assert_eq!(p("FLANNEL_SUBNETX=10.5.52.1/24\n"), None);
        assert_eq!(p("\u{0}\u{ff}garbage"), None);
        let s = Scratch::new("missing");
        assert_eq!(read_previous(&s.0.join("nope")).ipv4, None);
    }

    proptest::proptest! {
        #[test]
        fn render_then_parse(a in proptest::prelude::any::<u32>(), len in 1u8..=30, mtu in 0u32..70000) {
            let subnet = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            let e = SubnetEnv::v4(subnet.supernet().unwrap().trunc(), subnet, mtu, a % 2 == 0);
            proptest::prop_assert_eq!(parse_previous(&e.render()).ipv4, Some(subnet));
        }

        #[test]
        fn render_then_parse_dual(a in proptest::prelude::any::<u128>(), len in 1u8..=126, v4 in proptest::prelude::any::<bool>()) {
            let subnet = Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc();
            let network = subnet.supernet().unwrap().trunc();
            let e = SubnetEnv { ipv4: v4, ipv6: Some(Ipv6Subnets { network, subnet }), ..env() };
            let text = e.render();
            // flannel writes a few addresses dotted (gojson::format_ipv6); Go's and our CIDR
            // parsers read those back as IPv4, as flannel's own reader does.
            if !text.contains("FLANNEL_IPV6_SUBNET=") || text.lines().any(|l| l.starts_with("FLANNEL_IPV6_SUBNET=") && l.contains('.')) {
                proptest::prop_assert_eq!(parse_previous(&text).ipv6, None);
            } else {
                proptest::prop_assert_eq!(parse_previous(&text).ipv6, Some(subnet));
            }
            proptest::prop_assert_eq!(parse_previous(&text).ipv4, v4.then_some(env().subnet));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = parse_previous(&s).ipv4;
        }
    }
}
