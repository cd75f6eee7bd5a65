//! The two one-shot jobs a node needs before the daemon runs, as subcommands of the same
//! binary, so that the DaemonSet's init containers need nothing but overlayd's own image
//! (a `FROM scratch` image has no shell, `cp` or `etcdctl`):
//!
//! - `overlayd init-network`: puts the network config (flannel's net-conf.json) at
//!   `<prefix>/config` in etcd when no config is there; an existing one is never overwritten;
//! - `overlayd install-cni`: copies the `overlay-cni` plugin into the host's CNI binary
//!   directory and, optionally, the CNI config list into its config directory, each atomically
//!   (temporary file + rename), as kube-flannel's init containers do with `cp`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ipnet::Ipv4Net;

use crate::cli::{BackendArg, EtcdArgs};
use crate::control::config::{BackendKind, NetworkConfig};
use crate::control::etcd::Registry;

/// Flags of `overlayd init-network`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "overlayd init-network",
    bin_name = "overlayd init-network",
    about = "Put the network config into etcd at <prefix>/config unless one is there (for an init container)",
    group = clap::ArgGroup::new("source").required(true).args(["net_conf", "network"])
)]
pub struct InitNetworkArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// flannel's net-conf.json to store (validated first, then stored as written).
    #[arg(long, env = "OVERLAYD_NET_CONF", value_name = "FILE")]
    pub net_conf: Option<PathBuf>,
    /// Or: the config made from this IPv4 CIDR, as the daemon's --network does.
    #[arg(long)]
    pub network: Option<Ipv4Net>,
    /// With --network: SubnetLen (default as flannel: 24, or prefix+2 for narrower networks).
    #[arg(long, requires = "network")]
    pub subnet_len: Option<u8>,
    /// With --network: Backend.Type (default vxlan).
    #[arg(long, value_enum, requires = "network")]
    pub backend: Option<BackendArg>,
    /// How long to keep trying to reach etcd, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// Flags of `overlayd install-cni`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "overlayd install-cni",
    bin_name = "overlayd install-cni",
    about = "Copy the overlay-cni plugin (and a CNI config list) onto the host (for an init container)"
)]
pub struct InstallCniArgs {
    /// The plugin binary to install (default: overlay-cni next to this executable).
    #[arg(long, value_name = "FILE")]
    pub plugin: Option<PathBuf>,
    /// The host's CNI binary directory (mounted into the container).
    #[arg(long, default_value = "/opt/cni/bin", value_name = "DIR")]
    pub cni_bin_dir: PathBuf,
    /// A CNI config list to install too (e.g. the ConfigMap's cni-conf.json).
    #[arg(long, value_name = "FILE", requires = "cni_conf_dir")]
    pub cni_conf: Option<PathBuf>,
    /// The host's CNI config directory.
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The name the config list gets there.
    #[arg(long, default_value = "10-overlayd.conflist")]
    pub cni_conf_name: String,
}

/// Why a setup job failed. Each message names the file, key or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a network config overlayd accepts: {reason}")]
    BadNetConf { path: PathBuf, reason: String },
    #[error("invalid --network/--subnet-len: {0}")]
    BadFlags(String),
    #[error("etcd at {endpoints:?} did not answer within {secs} s: {last}")]
    Etcd {
        endpoints: Vec<String>,
        secs: u64,
        last: String,
    },
    #[error("{path} is not valid JSON: {reason}")]
    BadCniConf { path: PathBuf, reason: String },
    #[error("cannot install {to}: {source}")]
    Install { to: PathBuf, source: std::io::Error },
    #[error("cannot find the overlay-cni plugin next to {exe}; give --plugin")]
    NoPlugin { exe: PathBuf },
}

/// `overlayd init-network`: returns the line to print.
pub async fn init_network(args: InitNetworkArgs) -> Result<String, SetupError> {
    let json = match (&args.net_conf, args.network) {
        (Some(path), _) => {
            let raw = std::fs::read(path).map_err(|source| SetupError::Read {
                path: path.clone(),
                source,
            })?;
            NetworkConfig::parse(&raw).map_err(|e| SetupError::BadNetConf {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            String::from_utf8_lossy(&raw).trim().to_string()
        }
        (None, Some(net)) => {
            let kind = args
                .backend
                .map(BackendKind::from)
                .unwrap_or(BackendKind::Vxlan);
            NetworkConfig::from_cli(net, args.subnet_len, kind)
                .map_err(|e| SetupError::BadFlags(e.to_string()))?
                .to_json()
        }
        (None, None) => unreachable!("clap requires --net-conf or --network"),
    };
    let opts = args.etcd.options();
    let key = format!("{}/config", opts.prefix.trim_end_matches('/'));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = async {
            let reg = Registry::connect(&opts).await?;
            if reg.create_config(&json).await? {
                return Ok(format!("created the network config at {key}: {json}"));
            }
            let existing = reg.get_config().await?.unwrap_or_default();
            let note = match NetworkConfig::parse(&existing) {
                Ok(_) => String::new(),
                Err(e) => format!(" (WARNING: it is invalid: {e}; overlayd will refuse it)"),
            };
            Ok(format!(
                "kept the network config already at {key}: {}{note}",
                String::from_utf8_lossy(&existing)
            ))
        };
        let res: Result<String, String> = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(r) => r.map_err(|e: crate::control::etcd::EtcdError| e.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        match res {
            Ok(line) => return Ok(line),
            Err(e) if tokio::time::Instant::now() + delay >= deadline => {
                return Err(SetupError::Etcd {
                    endpoints: opts.endpoints.clone(),
                    secs: args.timeout,
                    last: e,
                })
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Copies `from` to `dir/name` through a temporary file in `dir` and a rename, so that a
/// runtime never sees half a file; sets `mode`.
fn install_file(from: &Path, dir: &Path, name: &str, mode: u32) -> Result<PathBuf, SetupError> {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let err = |source| SetupError::Install {
        to: to.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let res = std::fs::copy(from, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|_| std::fs::rename(&tmp, &to));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(to)
}

/// `overlayd install-cni`: returns the lines to print.
pub fn install_cni(args: &InstallCniArgs) -> Result<String, SetupError> {
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("overlayd"));
            let p = exe.with_file_name("overlay-cni");
            if !p.exists() {
                return Err(SetupError::NoPlugin { exe });
            }
            p
        }
    };
    if !plugin.exists() {
        return Err(SetupError::Read {
            path: plugin,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    // The config list is checked before anything on the host is replaced.
    if let Some(conf) = &args.cni_conf {
        let raw = std::fs::read(conf).map_err(|source| SetupError::Read {
            path: conf.clone(),
            source,
        })?;
        serde_json::from_slice::<serde_json::Value>(&raw).map_err(|e| SetupError::BadCniConf {
            path: conf.clone(),
            reason: e.to_string(),
        })?;
    }
    let to = install_file(&plugin, &args.cni_bin_dir, "overlay-cni", 0o755)?;
    let mut out = format!("installed {}\n", to.display());
    if let (Some(conf), Some(dir)) = (&args.cni_conf, &args.cni_conf_dir) {
        let to = install_file(conf, dir, &args.cni_conf_name, 0o644)?;
        out.push_str(&format!("installed {}\n", to.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn commands_are_consistent() {
        InitNetworkArgs::command().debug_assert();
        InstallCniArgs::command().debug_assert();
        assert!(
            InitNetworkArgs::try_parse_from(["x"]).is_err(),
            "--net-conf or --network is required"
        );
        assert!(InitNetworkArgs::try_parse_from(["x", "--network", "10.1.0.0/16"]).is_ok());
        assert!(InitNetworkArgs::try_parse_from([
            "x",
            "--net-conf",
            "/f",
            "--network",
            "10.1.0.0/16"
        ])
        .is_err());
    }

    #[test]
    fn install_is_atomic_and_complete() {
        let dir = std::env::temp_dir().join(format!("ovd-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let plugin = dir.join("overlay-cni-src");
        std::fs::write(&plugin, b"\x7fELF plugin").unwrap();
        let conf = dir.join("cni-conf.json");
        std::fs::write(&conf, br#"{"name":"cbr0","plugins":[]}"#).unwrap();
        let args = InstallCniArgs {
            plugin: Some(plugin.clone()),
            cni_bin_dir: dir.join("bin"),
            cni_conf: Some(conf.clone()),
            cni_conf_dir: Some(dir.join("net.d")),
            cni_conf_name: "10-overlayd.conflist".into(),
        };
        let out = install_cni(&args).unwrap();
        assert!(
            out.contains("bin/overlay-cni") && out.contains("10-overlayd.conflist"),
            "{out}"
        );
        assert_eq!(
            std::fs::read(dir.join("bin/overlay-cni")).unwrap(),
            b"\x7fELF plugin"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("bin/overlay-cni"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // Again (an upgrade): replaced, no temporary file left.
        std::fs::write(&plugin, b"\x7fELF v2").unwrap();
        install_cni(&args).unwrap();
        assert_eq!(
            std::fs::read(dir.join("bin/overlay-cni")).unwrap(),
            b"\x7fELF v2"
        );
        let left: Vec<_> = std::fs::read_dir(dir.join("bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // A broken config list is refused before anything is replaced.
        std::fs::write(&conf, b"{not json").unwrap();
        let e = install_cni(&args).unwrap_err().to_string();
        assert!(
            e.contains("cni-conf.json") && e.contains("not valid JSON"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
