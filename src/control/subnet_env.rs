//! subnet.env (`--subnet-file`, default `/run/flannel/subnet.env`): what flannel's CNI plugin
//! reads to configure pods. Rendered byte for byte as flannel writes it, written atomically.
//!
//! The only I/O in the control plane's pure layer: the file itself. The daemon leaves the file
//! in place on exit (as flannel does), so a restart can ask for the same subnet again.

use ipnet::Ipv4Net;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::Path;

/// The contents of subnet.env (IPv4 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the whole overlay.
    pub network: Ipv4Net,
    /// This node's subnet; written as its first host address with the subnet's length.
    pub subnet: Ipv4Net,
    /// `FLANNEL_MTU`: the overlay device's MTU.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether overlayd masquerades (so the CNI plugin should not).
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The file's text, e.g. `FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n`.
    pub fn render(&self) -> String {
        let first = Ipv4Addr::from(u32::from(self.subnet.network()).wrapping_add(1));
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            first,
            self.subnet.prefix_len(),
            self.mtu,
            self.ipmasq
        )
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
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
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

/// The subnet named by `FLANNEL_SUBNET` in an existing subnet file (`10.5.52.1/24` gives
/// `10.5.52.0/24`), to ask for the same subnet after a restart. `None` when the file is
/// missing, unreadable or has no well-formed `FLANNEL_SUBNET`.
pub fn read_previous_subnet(path: &Path) -> Option<Ipv4Net> {
    let text = fs::read_to_string(path).ok()?;
    parse_previous_subnet(&text)
}

/// [`read_previous_subnet`] on the file's text. The last `FLANNEL_SUBNET` line wins; surrounding
/// blanks and one pair of quotes around the value are tolerated (dotenv style).
pub fn parse_previous_subnet(text: &str) -> Option<Ipv4Net> {
    let value = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("export ").map_or(l, str::trim_start);
            let (k, v) = l.split_once('=')?;
            (k.trim() == "FLANNEL_SUBNET").then(|| v.trim())
        })
        .next_back()?;
    let value = ['"', '\'']
        .iter()
        .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(value);
    value.parse::<Ipv4Net>().ok().map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn env() -> SubnetEnv {
        SubnetEnv {
            network: "10.5.0.0/16".parse().unwrap(),
            subnet: "10.5.52.0/24".parse().unwrap(),
            mtu: 1450,
            ipmasq: false,
        }
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
        let e = SubnetEnv {
            network: "10.0.0.0/28".parse().unwrap(),
            subnet: "10.0.0.12/30".parse().unwrap(),
            mtu: 8950,
            ipmasq: true,
        };
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.0.0.0/28\nFLANNEL_SUBNET=10.0.0.13/30\nFLANNEL_MTU=8950\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn writes_atomically_and_reads_back() {
        let s = Scratch::new("write");
        let path = s.0.join("run/flannel/subnet.env");
        env().write_atomic(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), env().render());
        assert_eq!(
            read_previous_subnet(&path),
            Some("10.5.52.0/24".parse().unwrap())
        );
        // Overwrite in place; no temporary file left behind.
        let mut e2 = env();
        e2.subnet = "10.5.9.0/24".parse().unwrap();
        e2.write_atomic(&path).unwrap();
        assert_eq!(
            read_previous_subnet(&path),
            Some("10.5.9.0/24".parse().unwrap())
        );
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("subnet.env")]);
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
        let p = |t: &str| parse_previous_subnet(t);
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
        assert_eq!(read_previous_subnet(&s.0.join("nope")), None);
    }

    proptest::proptest! {
        #[test]
        fn render_then_parse(a in proptest::prelude::any::<u32>(), len in 1u8..=30, mtu in 0u32..70000) {
            let subnet = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            let e = SubnetEnv { network: subnet.supernet().unwrap().trunc(), subnet, mtu, ipmasq: a % 2 == 0 };
            proptest::prop_assert_eq!(parse_previous_subnet(&e.render()), Some(subnet));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = parse_previous_subnet(&s);
        }
    }
}
