//! Command-line flags, with flannel's names so flannel users feel at home. Every flag can
//! also come from the environment as `OVERLAYD_<FLAG>` or, for flannel compatibility,
//! `FLANNELD_<FLAG>` (the `OVERLAYD_` one wins).
//!
//! The etcd password is the exception: a command line is visible to every user in `ps`, so
//! it is only taken from the environment, the config file, or a file named by
//! `--etcd-password-file` ([`parse`] refuses `--etcd-password` on the command line).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};
use ipnet::Ipv4Net;

/// How to reach etcd: shared by the daemon and `overlayd status`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "etcd")]
pub struct EtcdArgs {
    /// Comma-separated etcd endpoints.
    #[arg(
        long,
        env = "OVERLAYD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// etcd key prefix holding config and subnets.
    #[arg(
        long,
        env = "OVERLAYD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,

    /// Client certificate (PEM) for etcd TLS.
    #[arg(long, env = "OVERLAYD_ETCD_CERTFILE", requires = "etcd_keyfile")]
    pub etcd_certfile: Option<PathBuf>,

    /// Client key (PEM) for etcd TLS.
    #[arg(long, env = "OVERLAYD_ETCD_KEYFILE", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,

    /// CA certificate (PEM) to verify etcd's server certificate.
    #[arg(long, env = "OVERLAYD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,

    /// etcd username (with a password from OVERLAYD_ETCD_PASSWORD or --etcd-password-file).
    #[arg(long, env = "OVERLAYD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    /// etcd password: only from the environment (OVERLAYD_ETCD_PASSWORD or FLANNELD_ETCD_PASSWORD) or the config file; refused on the command line, where `ps` shows it. See --etcd-password-file.
    #[arg(
        long,
        env = "OVERLAYD_ETCD_PASSWORD",
        hide_env_values = true,
        conflicts_with = "etcd_password_file"
    )]
    pub etcd_password: Option<String>,

    /// File holding the etcd password (its whole content, less a final newline).
    #[arg(long, env = "OVERLAYD_ETCD_PASSWORD_FILE", value_name = "PATH")]
    pub etcd_password_file: Option<PathBuf>,
}

/// The two ways to give the etcd password, for error messages.
const PASSWORD_WAYS: &str = "set OVERLAYD_ETCD_PASSWORD (or FLANNELD_ETCD_PASSWORD) in the environment, or put it in a file named by --etcd-password-file";

impl EtcdArgs {
    /// Refuses a password from the command line, reads `--etcd-password-file`, and checks
    /// that a username and a password come together.
    fn resolve_password(&mut self, m: &clap::ArgMatches) -> Result<(), String> {
        if m.value_source("etcd_password") == Some(clap::parser::ValueSource::CommandLine) {
            return Err(format!(
                "--etcd-password on the command line is refused: every user on the host sees it in `ps`; {PASSWORD_WAYS}"
            ));
        }
        if let Some(path) = &self.etcd_password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read the etcd password file {} (--etcd-password-file): {e}",
                    path.display()
                )
            })?;
            let pw = text.strip_suffix('\n').unwrap_or(&text);
            let pw = pw.strip_suffix('\r').unwrap_or(pw);
            if pw.is_empty() {
                return Err(format!("the etcd password file {} (--etcd-password-file) is empty; it must hold the password", path.display()));
            }
            self.etcd_password = Some(pw.to_string());
        }
        match (&self.etcd_username, &self.etcd_password) {
            (Some(_), None) => Err(format!("--etcd-username needs a password: {PASSWORD_WAYS}")),
            (None, Some(_)) => Err("an etcd password was given without --etcd-username (OVERLAYD_ETCD_USERNAME); give both".into()),
            _ => Ok(()),
        }
    }

    /// The client options these flags describe.
    pub fn options(&self) -> crate::control::etcd::EtcdOptions {
        crate::control::etcd::EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            certfile: self.etcd_certfile.clone(),
            keyfile: self.etcd_keyfile.clone(),
            cafile: self.etcd_cafile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The backend, as named in flannel's `Backend.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Udp,
    Vxlan,
    Gre,
    Wireguard,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "overlayd",
    version,
    about = "Per-host overlay network daemon: flannel-compatible subnet leases in etcd, udp/vxlan/gre in userspace",
    long_about = "overlayd takes a subnet lease for this host from etcd (flannel's schema), learns every other \
node's lease, and carries IP packets between hosts through a TUN device, encapsulated in UDP (flannel's udp \
format), VXLAN (RFC 7348) or GRE (RFC 2784/2890), or in WireGuard (flannel's wireguard backend). It writes flannel's subnet.env for the CNI plugin. It runs in \
the foreground; SIGTERM or SIGINT removes its device and routes and keeps its lease for the next start.\n\n\
Every flag can also be set in the environment as OVERLAYD_<FLAG> (e.g. OVERLAYD_ETCD_ENDPOINTS) or FLANNELD_<FLAG>.",
    after_help = "Also: `overlayd status` prints this node's view of the cluster (leases from etcd with the local \
per-peer counters); `overlayd init-network` puts the network config into etcd unless one is there; `overlayd \
install-cni` copies the CNI plugin onto the host (both for init containers). Each has --help. flanneld's Go \
flag syntax (-iface=eth0, --ip-masq=false) is accepted too. Documentation: docs/operations.md."
)]
pub struct Args {
    /// Backend: udp, vxlan, gre or wireguard. Must match Backend.Type of the network config in etcd when that names one.
    #[arg(long, value_enum, env = "OVERLAYD_BACKEND", help_heading = "Network")]
    pub backend: Option<BackendArg>,

    /// Create the network config in etcd with this IPv4 CIDR when it is absent (e.g. 10.244.0.0/16).
    #[arg(long, env = "OVERLAYD_NETWORK", help_heading = "Network")]
    pub network: Option<Ipv4Net>,

    /// SubnetLen for a config created with --network (default as flannel: 24, or prefix+2 for narrower networks).
    #[arg(
        long,
        env = "OVERLAYD_SUBNET_LEN",
        requires = "network",
        help_heading = "Network"
    )]
    pub subnet_len: Option<u8>,

    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Underlay interface: a name (eth0) or one of its IPv4 or IPv6 addresses. Repeatable or comma-separated, as flanneld's: tried in order, the first this host has wins. Default: the interface of the default route.
    #[arg(
        long,
        env = "OVERLAYD_IFACE",
        value_delimiter = ',',
        help_heading = "Host"
    )]
    pub iface: Vec<String>,

    /// flanneld's --iface-can-reach: the underlay is the interface, and its address the source address, the kernel would use to reach this address.
    #[arg(
        long,
        env = "OVERLAYD_IFACE_CAN_REACH",
        conflicts_with = "iface",
        help_heading = "Host"
    )]
    pub iface_can_reach: Option<IpAddr>,

    /// flanneld's --iface-regex (repeatable, tried in order): the first interface IPv4 address, else the first interface name, the pattern matches (loopback left out).
    #[arg(long, value_name = "REGEX", env = "OVERLAYD_IFACE_REGEX", conflicts_with_all = ["iface", "iface_can_reach"], help_heading = "Host")]
    pub iface_regex: Vec<regex::Regex>,

    /// Address published to peers (default: the underlay interface's first IPv4 address).
    #[arg(long, env = "OVERLAYD_PUBLIC_IP", help_heading = "Host")]
    pub public_ip: Option<Ipv4Addr>,

    /// IPv6 address published to peers as the lease's PublicIPv6 when the network config has EnableIPv6 (default: the underlay interface's preferred global IPv6 address, or the one --iface names).
    #[arg(long, env = "OVERLAYD_PUBLIC_IPV6", help_heading = "Host")]
    pub public_ipv6: Option<Ipv6Addr>,

    /// Where to write flannel's subnet.env.
    #[arg(
        long,
        env = "OVERLAYD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env",
        help_heading = "Host"
    )]
    pub subnet_file: PathBuf,

    /// Directory for the instance lock (<device>.lock, holding the pid): a second overlayd for the same device on this host refuses to start.
    #[arg(
        long,
        env = "OVERLAYD_RUN_DIR",
        default_value = crate::lifecycle::DEFAULT_RUN_DIR,
        help_heading = "Host"
    )]
    pub run_dir: PathBuf,

    /// Masquerade traffic from the pod network to outside it, as flanneld does (iptables chain OVERLAYD-POSTRTG, kept in place); written to subnet.env as FLANNEL_IPMASQ=true so that the CNI plugin does not masquerade as well.
    #[arg(long, env = "OVERLAYD_IP_MASQ", num_args = 0..=1, require_equals = true, value_name = "BOOL", default_missing_value = "true", default_value = "false", action = ArgAction::Set, value_parser = parse_bool, help_heading = "Firewall")]
    pub ip_masq: bool,

    /// As flanneld's: a blackhole route for this node's subnet(s), so that traffic to its unused addresses is dropped here instead of routed back out (for setups without a CNI bridge, e.g. Canal). Metric 4000: a bridge's route for the same prefix wins. Kept in place, moved with a re-acquired lease, removed at stop.
    #[arg(long, env = "OVERLAYD_IP_BLACKHOLE_ROUTE", num_args = 0..=1, require_equals = true, value_name = "BOOL", default_missing_value = "true", default_value = "false", action = ArgAction::Set, value_parser = parse_bool, help_heading = "Host")]
    pub ip_blackhole_route: bool,

    /// With --ip-masq: plain MASQUERADE, without --random-fully (flanneld's flag of the same name).
    #[arg(long, env = "OVERLAYD_IP_MASQ_FULLY_RANDOM_DISABLE", num_args = 0..=1, require_equals = true, value_name = "BOOL", default_missing_value = "true", default_value = "false", action = ArgAction::Set, value_parser = parse_bool, help_heading = "Firewall")]
    pub ip_masq_fully_random_disable: bool,

    /// ACCEPT traffic to and from the pod network in the FORWARD chain (chain OVERLAYD-FWD), as flanneld does: Docker sets FORWARD's policy to DROP. On by default; --iptables-forward-rules=false turns it off.
    #[arg(long, env = "OVERLAYD_IPTABLES_FORWARD_RULES", num_args = 0..=1, require_equals = true, value_name = "BOOL", default_missing_value = "true", default_value = "true", action = ArgAction::Set, value_parser = parse_bool, help_heading = "Firewall")]
    pub iptables_forward_rules: bool,

    /// Seconds between checks that the iptables rules are still in place (re-added when missing).
    #[arg(long, env = "OVERLAYD_IPTABLES_RESYNC", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600), help_heading = "Firewall")]
    pub iptables_resync: u64,

    /// Minutes before lease expiry at which it is renewed (keepalives are sent at least this often).
    #[arg(long, env = "OVERLAYD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=1439), help_heading = "etcd")]
    pub subnet_lease_renew_margin: u64,

    /// Data-plane worker queues (TUN queues, each with its own socket and threads). Default: CPU count, at most 4.
    #[arg(long, env = "OVERLAYD_QUEUES", value_parser = clap::value_parser!(u16).range(1..=16), help_heading = "Data plane")]
    pub queues: Option<u16>,

    /// Force the plain path: no TUN offloads (TSO/GRO), no UDP GSO/GRO. For comparison and for kernels that misbehave.
    #[arg(long, env = "OVERLAYD_NO_OFFLOAD", num_args = 0..=1, require_equals = true, value_name = "BOOL", default_missing_value = "true", default_value = "false", action = ArgAction::Set, value_parser = parse_bool, help_heading = "Data plane")]
    pub no_offload: bool,

    /// Whether a data-plane worker keeps polling without blocking after it handled traffic, so that a quick reply needs no thread wakeup: N (1..=10000) = for N microseconds after any traffic (about 200 for a VM; lower latency paid in CPU and throughput while traffic flows); auto = for 250 µs after a turn of a few small packets only (never after bulk batches), within a CPU budget of ~3 % of a core per worker; 0 (the default) blocks at once. An idle daemon never spins.
    #[arg(long, env = "OVERLAYD_BUSY_POLL_US", value_name = "N|auto", default_value_t = crate::datapath::DEFAULT_BUSY_POLL, help_heading = "Data plane")]
    pub busy_poll_us: crate::datapath::BusyPoll,

    /// Hand the kernel whole encapsulated TCP super-packets to segment (UDP-tunnel GSO through the TAP ovgso0; Linux 6.17+; udp and vxlan, L3 and L2): auto = when the kernel and host allow it (probed at start), on = required (refuse to start otherwise), off = always segment in userspace.
    #[arg(long, env = "OVERLAYD_TUNNEL_GSO", value_enum, default_value_t = crate::gso_tap::Mode::Auto, help_heading = "Data plane")]
    pub tunnel_gso: crate::gso_tap::Mode,

    /// How a packet's data-plane worker is chosen: flow (the default) = the TUN's automatic flow steering picks the transmit queue and the kernel's hash (udp: the inner flow) the receive socket, workers unpinned; cpu = one worker per CPU, pinned, and the packet handled by the worker of the CPU it is on (an eBPF program on the TUN, a classic BPF one on the receive sockets; needs CAP_BPF or CAP_SYS_ADMIN), so no wakeup crosses CPUs. The wireguard backend ignores it (one thread per device).
    #[arg(long, env = "OVERLAYD_STEER", value_enum, default_value_t = crate::backend::Steer::Flow, help_heading = "Data plane")]
    pub steer: crate::backend::Steer,

    /// gre over IPv4 (the gre backend and L2 gre networks): write each packet's outer IPv4 header here and hand it to the underlay device through an AF_PACKET socket (the next hop's MAC from the kernel's neighbour table, a peer not resolved yet sent through the raw socket), past the kernel's per-packet route lookup, IP output path and qdisc: measured a tenth to a sixth more throughput for less CPU where the receivers GRO (NIC-like wires), no gain on a veth wire. Those packets bypass the host's netfilter OUTPUT and POSTROUTING chains, its egress qdisc and its IPsec policies: leave it off where those must see gre's packets. Other backends ignore it.
    #[arg(long, env = "OVERLAYD_GRE_LINK_TX", num_args = 0..=1, require_equals = true, value_name = "BOOL", default_missing_value = "true", default_value = "false", action = ArgAction::Set, value_parser = parse_bool, help_heading = "Data plane")]
    pub gre_link_tx: bool,

    /// Attach L2 network NAME (defined at <prefix>/l2/networks/NAME in etcd) through its own TAP, l2v<VNI> or l2g<VNI>; with @BRIDGE the TAP is enslaved to BRIDGE (created if absent). Repeatable or comma-separated.
    #[arg(
        long = "l2",
        value_name = "NAME[@BRIDGE]",
        env = "OVERLAYD_L2",
        value_delimiter = ',',
        help_heading = "Layer 2"
    )]
    pub l2: Vec<crate::l2::config::AccessSpec>,

    /// Map 802.1Q VLAN VID (1-4094) on the trunk TAP `l2trunk` to L2 network NAME: the tag is removed on the way out and restored on the way in; unmapped VLANs are dropped. Repeatable or comma-separated.
    #[arg(
        long = "l2-vlan",
        value_name = "VID=NAME",
        env = "OVERLAYD_L2_VLAN",
        value_delimiter = ',',
        help_heading = "Layer 2"
    )]
    pub l2_vlan: Vec<crate::l2::config::VlanSpec>,

    /// Enslave the trunk TAP `l2trunk` to this bridge (created if absent; VLAN filtering is left to the operator).
    #[arg(
        long,
        value_name = "BRIDGE",
        env = "OVERLAYD_L2_TRUNK_BRIDGE",
        requires = "l2_vlan",
        help_heading = "Layer 2"
    )]
    pub l2_trunk_bridge: Option<String>,

    /// Serve Prometheus metrics (/metrics), /healthz and /readyz on this address, e.g. 127.0.0.1:9108. Off by default.
    #[arg(long, env = "OVERLAYD_METRICS_ADDR", help_heading = "Observability")]
    pub metrics_addr: Option<SocketAddr>,

    /// flannel's name for the health listener's address (used with --healthz-port when --metrics-addr is not given).
    #[arg(
        long,
        env = "OVERLAYD_HEALTHZ_IP",
        default_value = "0.0.0.0",
        help_heading = "Observability"
    )]
    pub healthz_ip: IpAddr,

    /// flannel's health listener port; 0 = off. Serves the same endpoints as --metrics-addr.
    #[arg(
        long,
        env = "OVERLAYD_HEALTHZ_PORT",
        default_value_t = 0,
        help_heading = "Observability"
    )]
    pub healthz_port: u16,

    /// Log format: text (human-readable) or json (one object per line).
    #[arg(
        long,
        value_enum,
        env = "OVERLAYD_LOG_FORMAT",
        default_value = "text",
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,

    /// Optional config file: lines of FLAG=value (e.g. etcd-endpoints=http://10.0.0.5:2379, or OVERLAYD_ETCD_ENDPOINTS=...). Precedence: flags, then OVERLAYD_* and FLANNELD_* environment, then this file, then defaults.
    #[arg(long, env = "OVERLAYD_CONFIG", help_heading = "Host")]
    pub config: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace, or flannel's numeric -v (0 = info, 1-4 = debug, 5+ = trace).
    #[arg(short = 'v', long = "log-level", env = "OVERLAYD_LOG_LEVEL", default_value = "info", value_parser = parse_level, help_heading = "Logging")]
    pub log_level: tracing::Level,
}

impl Args {
    /// Where to serve metrics and health: --metrics-addr, else flannel's --healthz-ip:--healthz-port.
    pub fn telemetry_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
            .or((self.healthz_port != 0)
                .then(|| SocketAddr::new(self.healthz_ip, self.healthz_port)))
    }
}

/// Parses `argv` (after [`crate::go::flags::normalize`]) as `T`, whose etcd flags `etcd`
/// picks, and resolves the etcd password ([`EtcdArgs`]: refused on the command line, read
/// from `--etcd-password-file`). The error prints as clap's do (`Error::exit`).
pub fn parse<T: Parser>(
    argv: &[String],
    etcd: fn(&mut T) -> &mut EtcdArgs,
) -> Result<T, clap::Error> {
    let mut cmd = T::command();
    let m = cmd.try_get_matches_from_mut(argv)?;
    let mut t = T::from_arg_matches(&m)?;
    etcd(&mut t)
        .resolve_password(&m)
        .map_err(|e| cmd.error(clap::error::ErrorKind::ArgumentConflict, e))?;
    Ok(t)
}

/// A boolean flag's value: Go's spellings (1 0 t f true false TRUE ...) as flanneld accepts
/// them, plus yes/no/on/off.
fn parse_bool(s: &str) -> Result<bool, String> {
    crate::go::flags::go_bool(s)
        .or(match s.to_ascii_lowercase().as_str() {
            "yes" | "on" => Some(true),
            "no" | "off" | "" => Some(false),
            _ => None,
        })
        .ok_or_else(|| format!("{s:?} is not a boolean; use true or false"))
}

fn parse_level(s: &str) -> Result<tracing::Level, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(match n {
            0 => tracing::Level::INFO,
            1..=4 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        });
    }
    s.parse::<tracing::Level>().map_err(|_| {
        format!("{s:?} is not a log level; use error, warn, info, debug, trace or 0-10")
    })
}

/// Copies `FLANNELD_<FLAG>` variables to `OVERLAYD_<FLAG>` where the latter is unset, so that
/// either spelling configures overlayd. Call before any thread starts.
pub fn import_flannel_env() {
    let vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("FLANNELD_"))
        .collect();
    for (k, v) in vars {
        let ours = format!("OVERLAYD_{}", &k["FLANNELD_".len()..]);
        if std::env::var_os(&ours).is_none() {
            // Single-threaded at this point (called first thing in main).
            std::env::set_var(ours, v);
        }
    }
}

/// Where `--config`/`OVERLAYD_CONFIG` points, read from the raw arguments (before clap,
/// since the file supplies defaults clap then sees as environment).
fn config_path(argv: &[String]) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("OVERLAYD_CONFIG").map(PathBuf::from)
}

/// Parses a config file's text into `(OVERLAYD_<FLAG>, value)` pairs. Lines are `key=value`
/// where key is a flag name (`etcd-endpoints`), or its environment spelling
/// (`OVERLAYD_ETCD_ENDPOINTS`, `FLANNELD_ETCD_ENDPOINTS`); `#` starts a comment; values may
/// be quoted.
pub fn parse_config_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "line {}: {raw:?} is not key=value (e.g. etcd-endpoints=http://10.0.0.5:2379)",
                n + 1
            ));
        };
        let k = k.trim();
        let k = k
            .strip_prefix("OVERLAYD_")
            .or_else(|| k.strip_prefix("FLANNELD_"))
            .unwrap_or(k);
        let k = k
            .trim_start_matches("--")
            .replace('-', "_")
            .to_ascii_uppercase();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {}: {raw:?} has no valid flag name", n + 1));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        out.push((format!("OVERLAYD_{k}"), v.to_string()));
    }
    Ok(out)
}

/// Loads the config file, if one is named, into the environment beneath what is already
/// set there. Call after [`import_flannel_env`] and before any thread starts.
pub fn load_config_file(argv: &[String]) -> Result<(), String> {
    let Some(path) = config_path(argv) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    for (k, v) in
        parse_config_file(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
    {
        if std::env::var_os(&k).is_none() {
            // Single-threaded at this point (called first thing in main).
            std::env::set_var(k, v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn no_flanneld_only_refusal_shadows_a_flag_of_ours() {
        let ours: Vec<String> = Args::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(String::from))
            .collect();
        for (flag, _) in crate::go::flags::FLANNEL_ONLY {
            assert!(!ours.iter().any(|o| o == flag), "--{flag} is ours now");
        }
        assert!(ours.iter().any(|o| o == "iface-can-reach"));
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flannel_names_parse() {
        let a = Args::try_parse_from([
            "overlayd",
            "--backend",
            "vxlan",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--iface",
            "eth0",
            "--subnet-file",
            "/tmp/x.env",
            "--network",
            "10.244.0.0/16",
            "--subnet-len",
            "24",
            "-v",
            "2",
        ])
        .unwrap();
        assert_eq!(a.backend, Some(BackendArg::Vxlan));
        assert_eq!(
            a.etcd.etcd_endpoints,
            vec!["http://a:2379", "http://b:2379"]
        );
        assert_eq!(a.log_level, tracing::Level::DEBUG);
        assert_eq!(a.etcd.etcd_prefix, "/coreos.com/network");
        assert_eq!(a.public_ipv6, None);
        let a = Args::try_parse_from([
            "overlayd",
            "--public-ip",
            "192.168.1.5",
            "--public-ipv6",
            "fd00:1::5",
            "--iface",
            "fd00:1::5",
        ])
        .unwrap();
        assert_eq!(a.public_ipv6, Some("fd00:1::5".parse().unwrap()));
        assert_eq!(a.iface, ["fd00:1::5"]);
    }

    #[test]
    fn config_file_lines() {
        let got = parse_config_file(
            "# comment\netcd-endpoints=http://a:2379\nOVERLAYD_IFACE=eth1\nexport FLANNELD_PUBLIC_IP=\"10.0.0.1\"\n\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("OVERLAYD_ETCD_ENDPOINTS".into(), "http://a:2379".into()),
                ("OVERLAYD_IFACE".into(), "eth1".into()),
                ("OVERLAYD_PUBLIC_IP".into(), "10.0.0.1".into()),
            ]
        );
        let err = parse_config_file("just words").unwrap_err();
        assert!(err.contains("line 1") && err.contains("key=value"), "{err}");
    }

    /// A valid value for every flag (and the flags it requires), so that each is tried in
    /// every Go spelling. A new flag without an entry here fails the test.
    fn sample(id: &str) -> Option<(&'static str, &'static [&'static str])> {
        Some(match id {
            "backend" => ("gre", &[]),
            "network" => ("10.244.0.0/16", &[]),
            "subnet_len" => ("26", &["--network", "10.244.0.0/16"]),
            "etcd_endpoints" => ("http://10.0.0.5:2379,http://10.0.0.6:2379", &[]),
            "etcd_prefix" => ("/x/network", &[]),
            "etcd_certfile" => ("/c.pem", &["--etcd-keyfile", "/k.pem"]),
            "etcd_keyfile" => ("/k.pem", &["--etcd-certfile", "/c.pem"]),
            "etcd_cafile" => ("/ca.pem", &[]),
            "etcd_username" => ("u", &[]),
            "etcd_password" => ("p", &[]),
            "etcd_password_file" => ("/etc/overlayd/etcd-password", &[]),
            "iface" => ("eth1", &[]),
            "iface_can_reach" => ("192.168.77.250", &[]),
            "iface_regex" => ("^eth[0-9]+$", &[]),
            "public_ip" => ("192.168.77.9", &[]),
            "public_ipv6" => ("fd00:77::9", &[]),
            "run_dir" => ("/tmp/overlayd-run", &[]),
            "tunnel_gso" => ("off", &[]),
            "steer" => ("cpu", &[]),
            "subnet_file" => ("/tmp/s.env", &[]),
            "subnet_lease_renew_margin" => ("30", &[]),
            "iptables_resync" => ("7", &[]),
            "queues" => ("3", &[]),
            "busy_poll_us" => ("200", &[]),
            "l2" => ("a@br0,b", &[]),
            "l2_vlan" => ("10=a,20=b", &[]),
            "l2_trunk_bridge" => ("br9", &["--l2-vlan", "10=a"]),
            "metrics_addr" => ("127.0.0.1:9999", &[]),
            "healthz_ip" => ("127.0.0.2", &[]),
            "healthz_port" => ("8471", &[]),
            "log_format" => ("json", &[]),
            "config" => ("/etc/overlayd.conf", &[]),
            "log_level" => ("3", &[]),
            _ => return None,
        })
    }

    fn parsed(words: &[&str]) -> String {
        let argv: Vec<String> = std::iter::once("overlayd")
            .chain(words.iter().copied())
            .map(String::from)
            .collect();
        let argv = crate::go::flags::normalize(&argv, &Args::command())
            .unwrap_or_else(|e| panic!("{words:?}: {e}"));
        format!(
            "{:?}",
            Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{words:?} -> {argv:?}: {e}"))
        )
    }

    #[test]
    fn every_flag_in_flanneld_go_syntax() {
        let default = parsed(&[]);
        let cmd = Args::command();
        let mut tried = 0;
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            let long = arg.get_long().expect("every flag has a long name");
            if arg.get_num_args().is_some_and(|n| n.min_values() == 0) {
                // A boolean: -flag, --flag, -flag=true and -flag=false (and Go's other spellings).
                let on = parsed(&[&format!("--{long}=true")]);
                let off = parsed(&[&format!("--{long}=false")]);
                assert_ne!(on, off, "--{long}");
                for w in [
                    format!("-{long}"),
                    format!("--{long}"),
                    format!("-{long}=true"),
                    format!("-{long}=T"),
                    format!("--{long}=1"),
                ] {
                    assert_eq!(parsed(&[&w]), on, "{w}");
                }
                for w in [
                    format!("-{long}=false"),
                    format!("-{long}=F"),
                    format!("--{long}=0"),
                ] {
                    assert_eq!(parsed(&[&w]), off, "{w}");
                }
                assert!(
                    on == default || off == default,
                    "--{long}: one of them is the default"
                );
            } else {
                let (value, with) =
                    sample(id).unwrap_or_else(|| panic!("no sample value for --{long}: add one"));
                let want = parsed(&[with, &[&format!("--{long}"), value][..]].concat());
                assert_ne!(want, default, "--{long} {value} changes something");
                for words in [
                    vec![format!("-{long}={value}")],
                    vec![format!("--{long}={value}")],
                    vec![format!("-{long}"), value.to_string()],
                ] {
                    let w: Vec<&str> = with
                        .iter()
                        .copied()
                        .chain(words.iter().map(String::as_str))
                        .collect();
                    assert_eq!(parsed(&w), want, "{w:?}");
                }
            }
            tried += 1;
        }
        assert!(tried >= 28, "every flag tried: {tried}");
        // flanneld's klog verbosity, and a whole flanneld command line.
        assert_eq!(parsed(&["-v=2"]), parsed(&["--log-level", "debug"]));
        let a = Args::try_parse_from(
            crate::go::flags::normalize(
                &[
                    "overlayd",
                    "-etcd-endpoints=http://10.0.0.5:2379",
                    "-etcd-prefix=/coreos.com/network",
                    "-iface=bond0",
                    "-iface=eth0",
                    "--ip-masq=true",
                    "-subnet-file=/run/flannel/subnet.env",
                    "-v=1",
                    "-iptables-forward-rules=false",
                ]
                .map(String::from),
                &Args::command(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(a.etcd.etcd_endpoints, ["http://10.0.0.5:2379"]);
        assert_eq!(a.iface, ["bond0", "eth0"], "repeated, in order");
        assert!(a.ip_masq && !a.iptables_forward_rules);
        assert_eq!(a.log_level, tracing::Level::DEBUG);
    }

    fn parse_words(words: &[&str]) -> Result<Args, String> {
        let argv: Vec<String> = std::iter::once("overlayd")
            .chain(words.iter().copied())
            .map(String::from)
            .collect();
        parse(&argv, |a: &mut Args| &mut a.etcd).map_err(|e| e.to_string())
    }

    #[test]
    fn the_etcd_password_never_comes_from_the_command_line() {
        let err = parse_words(&["--etcd-username", "u", "--etcd-password", "s3cret"]).unwrap_err();
        assert!(
            err.contains("--etcd-password on the command line is refused")
                && err.contains("OVERLAYD_ETCD_PASSWORD")
                && err.contains("--etcd-password-file"),
            "{err}"
        );
        assert!(
            !err.contains("s3cret"),
            "the refusal does not echo the secret: {err}"
        );
        let dir = std::env::temp_dir().join(format!("overlayd-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let f = file.to_str().unwrap();
        let a = parse_words(&["--etcd-username", "u", "--etcd-password-file", f]).unwrap();
        assert_eq!(a.etcd.options().password.as_deref(), Some("s3cret"));
        let err = parse_words(&["--etcd-password-file", f]).unwrap_err();
        assert!(err.contains("without --etcd-username"), "{err}");
        let err = parse_words(&["--etcd-username", "u"]).unwrap_err();
        assert!(
            err.contains("needs a password") && err.contains("--etcd-password-file"),
            "{err}"
        );
        std::fs::write(&file, "\n").unwrap();
        let err = parse_words(&["--etcd-username", "u", "--etcd-password-file", f]).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let absent = dir.join("absent");
        let err = parse_words(&[
            "--etcd-username",
            "u",
            "--etcd-password-file",
            absent.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(err.contains("cannot read the etcd password file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(parse_words(&[]).is_ok_and(|a| a.etcd.options().password.is_none()));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Args::try_parse_from(["overlayd", "--backend", "ipip"]).is_err());
        assert!(Args::try_parse_from(["overlayd", "--network", "10.244.0.0/33"]).is_err());
        assert!(
            Args::try_parse_from(["overlayd", "--subnet-len", "24"]).is_err(),
            "--subnet-len needs --network"
        );
        assert!(Args::try_parse_from(["overlayd", "-v", "loud"]).is_err());
        assert!(Args::try_parse_from(["overlayd", "--public-ipv6", "10.0.0.1"]).is_err());
    }
}
