//! `overlay-cni`: the CNI plugin that turns overlayd's subnet.env into a pod network, as
//! flannel's CNI plugin (flannel-io/cni-plugin) does.
//!
//! It is a meta-plugin: it reads its own network config from stdin and the node's subnet.env,
//! builds a config for a delegate plugin (the reference `bridge` plugin with `host-local` IPAM
//! unless told otherwise) and runs that plugin from `CNI_PATH` with the same `CNI_*`
//! environment. ADD saves the delegate config under `dataDir/<CNI_CONTAINERID>` so that DEL
//! uses the very same config (bridge name, IPAM ranges) even when subnet.env is gone.
//!
//! Layers: [`CniEnv::from_vars`], [`PluginConf::parse`], [`parse_subnet_env`] and
//! [`delegate_config`] are pure (bytes or strings in, values or a [`CniError`] out) and unit
//! tested below; [`run`] is the I/O around them (files, the delegate process). Every failure
//! becomes a [`CniError`] printed in the CNI spec's error shape.

use crate::control::subnet_env;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Map, Value};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The CNI version this plugin answers VERSION with.
pub const CNI_VERSION: &str = "1.0.0";
/// The spec versions this plugin accepts in `cniVersion`.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// flannel's default subnet file.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// flannel's default directory for saved delegate configs.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// Spec error code: incompatible CNI version.
pub const ERR_INCOMPATIBLE_VERSION: u32 = 1;
/// Spec error code: invalid necessary environment variables.
pub const ERR_INVALID_ENV: u32 = 4;
/// Spec error code: failure to decode content (the network config is not JSON).
pub const ERR_DECODING: u32 = 6;
/// Spec error code: invalid network config.
pub const ERR_INVALID_CONFIG: u32 = 7;
/// Spec error code: try again later (subnet.env is not there yet).
pub const ERR_TRY_AGAIN_LATER: u32 = 11;
/// Spec error code (STATUS): the plugin is not available.
pub const ERR_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific: subnet.env exists but is malformed or incomplete.
pub const ERR_BAD_SUBNET_ENV: u32 = 100;
/// Plugin-specific: the delegate plugin is not in `CNI_PATH` or cannot be run.
pub const ERR_DELEGATE_NOT_FOUND: u32 = 101;
/// Plugin-specific: reading or writing the data directory failed.
pub const ERR_DATA_DIR: u32 = 102;
/// Plugin-specific: the delegate failed without a spec-shaped error of its own.
pub const ERR_DELEGATE_FAILED: u32 = 103;

/// A CNI error: printed on stdout as `{"cniVersion","code","msg","details"}`, non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec's code (1..=99 well-known, 100+ plugin-specific).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details (the underlying error, a path, the delegate's output).
    pub details: String,
}

impl CniError {
    /// An error with `code`, `msg` and `details`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's JSON object, reported under `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl CniCommand {
    /// The value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            CniCommand::Add,
            CniCommand::Del,
            CniCommand::Check,
            CniCommand::Version,
            CniCommand::Status,
            CniCommand::Gc,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// The `CNI_*` environment of one invocation, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: CniCommand,
    /// `CNI_CONTAINERID`; validated to be a safe file name (it names the saved config).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_PATH`, split on `:`, empty entries dropped.
    pub path: Vec<PathBuf>,
}

fn valid_container_id(id: &str) -> bool {
    // libcni's rule: ^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_ifname(name: &str) -> bool {
    // libcni's rule: non-empty, shorter than IFNAMSIZ, not . or .., no / : or whitespace.
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl CniEnv {
    /// Reads and validates the environment through `var` (e.g. `|k| std::env::var(k).ok()`).
    /// VERSION needs only `CNI_COMMAND`; STATUS and GC also `CNI_PATH`; DEL may lack
    /// `CNI_NETNS`. Failures are [`ERR_INVALID_ENV`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let get = |k: &str| var(k).unwrap_or_default();
        let raw = get("CNI_COMMAND");
        let command = CniCommand::parse(&raw).ok_or_else(|| {
            CniError::new(
                ERR_INVALID_ENV,
                if raw.is_empty() {
                    "CNI_COMMAND is not set".to_owned()
                } else {
                    format!("unknown CNI_COMMAND {raw:?}")
                },
                "expected ADD, DEL, CHECK, VERSION, STATUS or GC",
            )
        })?;
        let env = CniEnv {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            path: get("CNI_PATH")
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        let missing = |k: &str| {
            CniError::new(
                ERR_INVALID_ENV,
                format!("required env variable {k} missing"),
                format!("CNI_COMMAND={}", command.as_str()),
            )
        };
        let attachment = matches!(
            command,
            CniCommand::Add | CniCommand::Del | CniCommand::Check
        );
        if attachment {
            if env.container_id.is_empty() {
                return Err(missing("CNI_CONTAINERID"));
            }
            if !valid_container_id(&env.container_id) {
                return Err(CniError::new(
                    ERR_INVALID_ENV,
                    "invalid characters in CNI_CONTAINERID",
                    format!(
                        "{:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
                        env.container_id
                    ),
                ));
            }
            if env.netns.is_empty() && command != CniCommand::Del {
                return Err(missing("CNI_NETNS"));
            }
            if env.ifname.is_empty() {
                return Err(missing("CNI_IFNAME"));
            }
            if !valid_ifname(&env.ifname) {
                return Err(CniError::new(
                    ERR_INVALID_ENV,
                    "invalid CNI_IFNAME",
                    format!("{:?}", env.ifname),
                ));
            }
        }
        if command != CniCommand::Version && env.path.is_empty() {
            return Err(missing("CNI_PATH"));
        }
        Ok(env)
    }
}

/// overlay-cni's own network config (flannel's NetConf), with flannel's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// `name`: the network's name, given to the delegate.
    pub name: String,
    /// `subnetFile` (default [`DEFAULT_SUBNET_FILE`]).
    pub subnet_file: PathBuf,
    /// `dataDir` (default [`DEFAULT_DATA_DIR`]).
    pub data_dir: PathBuf,
    /// `delegate`: overrides for the delegate config (never `name` or `ipam`).
    pub delegate: Map<String, Value>,
    /// `ipam`: an IPAM section to complete (its `type` and `routes` are kept).
    pub ipam: Option<Map<String, Value>>,
    /// `runtimeConfig`, handed to the delegate.
    pub runtime_config: Option<Value>,
    /// `prevResult` (CHECK, DEL from a 1.x runtime), handed to the delegate.
    pub prev_result: Option<Value>,
}

/// The `cniVersion` of a config, if it has a string one (for reporting errors in it).
pub fn config_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    Some(v.get("cniVersion")?.as_str()?.to_owned())
}

impl PluginConf {
    /// Parses the network config. Not JSON or not an object: [`ERR_DECODING`]; a missing or
    /// mistyped field, or a delegate with `name`/`ipam` or a non-string `type`:
    /// [`ERR_INVALID_CONFIG`]; an unsupported `cniVersion`: [`ERR_INCOMPATIBLE_VERSION`].
    pub fn parse(stdin: &[u8]) -> Result<PluginConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ERR_DECODING,
                "failed to decode the network config",
                e.to_string(),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                ERR_DECODING,
                "failed to decode the network config",
                "the network config is not a JSON object",
            ));
        };
        let invalid = |msg: String| CniError::new(ERR_INVALID_CONFIG, msg, "");
        let string = |key: &str| -> Result<Option<String>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(invalid(format!("{key:?} must be a string, not {other}"))),
            }
        };
        let object = |key: &str| -> Result<Option<Map<String, Value>>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(m)) => Ok(Some(m.clone())),
                Some(other) => Err(invalid(format!("{key:?} must be an object, not {other}"))),
            }
        };
        let cni_version = string("cniVersion")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("\"cniVersion\" is required".to_owned()))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                ERR_INCOMPATIBLE_VERSION,
                format!("incompatible CNI versions: config is {cni_version:?}"),
                format!("plugin supports {SUPPORTED_VERSIONS:?}"),
            ));
        }
        let name = string("name")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("\"name\" is required".to_owned()))?;
        let delegate = object("delegate")?.unwrap_or_default();
        if delegate.get("type").is_some_and(|t| !t.is_string()) {
            return Err(invalid(
                "'delegate' dictionary, if present, must have (string) 'type' field".to_owned(),
            ));
        }
        if delegate.contains_key("name") {
            return Err(invalid(
                "'delegate' dictionary must not have 'name' field, it'll be set by overlay-cni"
                    .to_owned(),
            ));
        }
        if delegate.contains_key("ipam") {
            return Err(invalid(
                "'delegate' dictionary must not have 'ipam' field, it'll be set by overlay-cni"
                    .to_owned(),
            ));
        }
        if let Some(t) = delegate.get("type").and_then(Value::as_str) {
            if t.is_empty() || t.contains('/') || t == "." || t == ".." {
                return Err(invalid(format!("invalid delegate type {t:?}")));
            }
        }
        let ipam = object("ipam")?;
        if let Some(routes) = ipam.as_ref().and_then(|i| i.get("routes")) {
            let ok = routes.as_array().is_some_and(|a| {
                a.iter()
                    .all(|r| r.get("dst").and_then(Value::as_str).is_some())
            });
            if !ok {
                return Err(invalid(format!(
                    "failed to read IPAM routes: {routes} is not a list of {{\"dst\": ...}}"
                )));
            }
        }
        Ok(PluginConf {
            cni_version,
            name,
            subnet_file: string("subnetFile")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.to_owned())
                .into(),
            data_dir: string("dataDir")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned())
                .into(),
            delegate,
            ipam,
            runtime_config: obj.get("runtimeConfig").cloned(),
            prev_result: obj.get("prevResult").cloned(),
        })
    }
}

/// What the CNI plugin needs from subnet.env (flannel's subnetEnv). Subnets are truncated to
/// their network (`FLANNEL_SUBNET=10.244.5.1/24` gives `10.244.5.0/24`), as Go's ParseCIDR does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelEnv {
    pub network: Option<Ipv4Net>,
    pub subnet: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: u32,
    pub ipmasq: bool,
}

/// Parses subnet.env in the grammar overlayd reads it with ([`subnet_env::vars`]: `KEY=value`
/// lines, `export` and quotes tolerated), unknown keys ignored, `FLANNEL_IPMASQ` true only for
/// `true`. A bad value or a missing key (a network and a subnet
/// of either family, `FLANNEL_MTU`, `FLANNEL_IPMASQ`) is [`ERR_BAD_SUBNET_ENV`].
pub fn parse_subnet_env(text: &str) -> Result<FlannelEnv, CniError> {
    let bad = |msg: String| CniError::new(ERR_BAD_SUBNET_ENV, "invalid subnet.env", msg);
    let (mut network, mut subnet, mut network6, mut subnet6) = (None, None, None, None);
    let (mut mtu, mut ipmasq) = (None, None);
    for (key, value) in subnet_env::vars(text) {
        let cidr = |v: &str| -> Result<IpNet, CniError> {
            v.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|e| bad(format!("{key}={v}: {e}")))
        };
        let v4 = |v: &str| match cidr(v)? {
            IpNet::V4(n) => Ok(n),
            IpNet::V6(_) => Err(bad(format!("{key}={v}: not an IPv4 network"))),
        };
        let v6 = |v: &str| match cidr(v)? {
            IpNet::V6(n) => Ok(n),
            IpNet::V4(_) => Err(bad(format!("{key}={v}: not an IPv6 network"))),
        };
        match key {
            "FLANNEL_NETWORK" => network = Some(v4(value)?),
            "FLANNEL_SUBNET" => subnet = Some(v4(value)?),
            "FLANNEL_IPV6_NETWORK" => network6 = Some(v6(value)?),
            "FLANNEL_IPV6_SUBNET" => subnet6 = Some(v6(value)?),
            "FLANNEL_MTU" => {
                mtu = Some(
                    value
                        .parse::<u32>()
                        .map_err(|e| bad(format!("FLANNEL_MTU={value}: {e}")))?,
                )
            }
            "FLANNEL_IPMASQ" => ipmasq = Some(value == "true"),
            _ => {}
        }
    }
    let mut missing = Vec::new();
    if network.is_none() && network6.is_none() {
        missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
    }
    if subnet.is_none() && subnet6.is_none() {
        missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
    }
    if mtu.is_none() {
        missing.push("FLANNEL_MTU");
    }
    if ipmasq.is_none() {
        missing.push("FLANNEL_IPMASQ");
    }
    match (mtu, ipmasq) {
        (Some(mtu), Some(ipmasq)) if missing.is_empty() => Ok(FlannelEnv {
            network,
            subnet,
            ipv6_network: network6,
            ipv6_subnet: subnet6,
            mtu,
            ipmasq,
        }),
        _ => Err(bad(format!("missing {}", missing.join(", ")))),
    }
}

/// The delegate's config (flannel's doCmdAdd): the `delegate` overrides, then `name`,
/// `type` (default `bridge`), `ipMasq` (default: not `FLANNEL_IPMASQ`), `mtu` (default
/// `FLANNEL_MTU`), `isGateway` (bridge only, default true), `cniVersion`, `runtimeConfig`,
/// and `ipam`: the config's `ipam` (type default `host-local`) with `ranges` set to the node's
/// subnet(s) and `routes` = the config's routes followed by the overlay network(s). Keys are
/// sorted in the output, as Go's encoder sorts them.
pub fn delegate_config(conf: &PluginConf, env: &FlannelEnv) -> Value {
    let mut d = conf.delegate.clone();
    d.insert("name".into(), Value::String(conf.name.clone()));
    d.entry("type").or_insert_with(|| "bridge".into());
    d.entry("ipMasq").or_insert(Value::Bool(!env.ipmasq));
    d.entry("mtu").or_insert(Value::from(env.mtu));
    if d.get("type").and_then(Value::as_str) == Some("bridge") {
        d.entry("isGateway").or_insert(Value::Bool(true));
    }
    d.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    let mut ipam = conf.ipam.clone().unwrap_or_default();
    ipam.entry("type").or_insert_with(|| "host-local".into());
    let mut ranges = Vec::new();
    if let Some(sn) = env.subnet {
        ranges.push(json!([{ "subnet": sn.to_string() }]));
    }
    if let Some(sn) = env.ipv6_subnet {
        ranges.push(json!([{ "subnet": sn.to_string() }]));
    }
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes: Vec<Value> = ipam
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(nw) = env.network {
        routes.push(json!({ "dst": nw.to_string() }));
    }
    if let Some(nw) = env.ipv6_network {
        routes.push(json!({ "dst": nw.to_string() }));
    }
    ipam.insert("routes".into(), Value::Array(routes));
    d.insert("ipam".into(), Value::Object(ipam));
    Value::Object(d)
}

/// The VERSION answer.
pub fn version_json() -> Value {
    json!({ "cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS })
}

/// The first executable regular file named `name` in `path`.
pub fn find_plugin(name: &str, path: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.iter()
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// What the plugin prints on stdout and the exit code it ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub code: i32,
}

impl Outcome {
    fn ok(stdout: Vec<u8>) -> Self {
        Outcome { stdout, code: 0 }
    }

    fn error(e: &CniError, cni_version: &str) -> Self {
        Outcome {
            stdout: e.to_json(cni_version).to_string().into_bytes(),
            code: 1,
        }
    }
}

/// Runs the delegate `plugin` for `command` with `config` on stdin and the rest of the
/// environment inherited (stderr too). A delegate failure with a spec-shaped error on stdout
/// is passed through; any other failure becomes [`ERR_DELEGATE_FAILED`].
fn exec_delegate(
    env: &CniEnv,
    command: CniCommand,
    config: &Value,
) -> Result<Result<Vec<u8>, Outcome>, CniError> {
    let Some(kind) = config.get("type").and_then(Value::as_str) else {
        return Err(CniError::new(
            ERR_INVALID_CONFIG,
            "delegate config has no string \"type\"",
            config.to_string(),
        ));
    };
    let plugin = find_plugin(kind, &env.path).ok_or_else(|| {
        CniError::new(
            ERR_DELEGATE_NOT_FOUND,
            format!("failed to find plugin {kind:?} in CNI_PATH"),
            format!("CNI_PATH={:?}", env.path),
        )
    })?;
    let not_run = |e: io::Error| {
        CniError::new(
            ERR_DELEGATE_NOT_FOUND,
            format!("cannot run delegate plugin {}", plugin.display()),
            e.to_string(),
        )
    };
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(not_run)?;
    let input = config.to_string();
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its config reports its own error below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(not_run)?;
    if out.status.success() {
        return Ok(Ok(out.stdout));
    }
    let spec_shaped = serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .is_some_and(|v| v.get("code").is_some_and(Value::is_u64));
    if spec_shaped {
        return Ok(Err(Outcome {
            stdout: out.stdout,
            code: out.status.code().filter(|c| *c != 0).unwrap_or(1),
        }));
    }
    Err(CniError::new(
        ERR_DELEGATE_FAILED,
        format!("delegate plugin {kind} failed ({})", out.status),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

fn data_error(what: &str, path: &Path, e: io::Error) -> CniError {
    CniError::new(
        ERR_DATA_DIR,
        format!("failed to {what} {}", path.display()),
        e.to_string(),
    )
}

fn read_flannel_env(path: &Path) -> Result<FlannelEnv, CniError> {
    match fs::read_to_string(path) {
        Ok(text) => parse_subnet_env(&text).map_err(|mut e| {
            e.details = format!("{}: {}", path.display(), e.details);
            e
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CniError::new(
            ERR_TRY_AGAIN_LATER,
            format!("{} does not exist yet", path.display()),
            "overlayd writes it once it holds a subnet lease; is overlayd running?",
        )),
        Err(e) => Err(CniError::new(
            ERR_BAD_SUBNET_ENV,
            format!("cannot read {}", path.display()),
            e.to_string(),
        )),
    }
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a rename. The
/// temporary file is created anew, never through a link planted at its name.
fn save_config(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| data_error("create", dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("conf"),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let result = crate::sys::owned::open(
        &tmp,
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600),
    )
    .map_err(io::Error::other)
    .and_then(|mut f| f.write_all(bytes))
    .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(data_error("write", path, e));
    }
    Ok(())
}

/// A saved config (`None`: there is none): opened only as a regular file of ours that no one
/// else may write, never through a symbolic link.
fn read_saved(path: &Path) -> Result<Option<Vec<u8>>, CniError> {
    use crate::sys::owned::{open, OwnedError};
    use std::io::Read;
    match open(path, fs::OpenOptions::new().read(true)) {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)
                .map_err(|e| data_error("read", path, e))?;
            Ok(Some(bytes))
        }
        Err(OwnedError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(
            ERR_DATA_DIR,
            format!("refusing the saved config {}", path.display()),
            e.to_string(),
        )),
    }
}

fn with_prev_result(mut config: Value, conf: &PluginConf) -> Value {
    if let (Some(obj), Some(prev)) = (config.as_object_mut(), &conf.prev_result) {
        obj.insert("prevResult".into(), prev.clone());
    }
    config
}

/// Gives every route without `gw` in a result the gateway of the result's first address of the
/// same family: the route the delegate installed goes through that gateway anyway (a route
/// without `gw` means "the default gateway"). Reference plugins before v1.3.0 (Debian's among
/// them) fail CHECK on gateway-less routes (containernetworking/plugins#886), and flannel's
/// routes have no `gw`; this makes CHECK pass on them without changing what ADD configures.
pub fn fill_route_gateways(result: &mut Value) {
    let gateways: Vec<std::net::IpAddr> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("gateway")?.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let Some(routes) = result.get_mut("routes").and_then(Value::as_array_mut) else {
        return;
    };
    for route in routes {
        let Some(obj) = route.as_object_mut() else {
            continue;
        };
        if obj.get("gw").is_some_and(|g| !g.is_null()) {
            continue;
        }
        let Some(Ok(dst)) = obj
            .get("dst")
            .and_then(Value::as_str)
            .map(str::parse::<IpNet>)
        else {
            continue;
        };
        let gw = gateways.iter().find(|g| match dst {
            IpNet::V4(_) => g.is_ipv4(),
            IpNet::V6(_) => g.is_ipv6(),
        });
        if let Some(gw) = gw {
            obj.insert("gw".into(), Value::String(gw.to_string()));
        }
    }
}

fn finish(r: Result<Result<Vec<u8>, Outcome>, CniError>, v: &str) -> Outcome {
    match r {
        Ok(Ok(stdout)) => Outcome::ok(stdout),
        Ok(Err(outcome)) => outcome,
        Err(e) => Outcome::error(&e, v),
    }
}

/// One invocation: the environment through `var`, the network config in `stdin`.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let reported = config_version(stdin)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CNI_VERSION.to_owned());
    let env = match CniEnv::from_vars(var) {
        Ok(env) => env,
        Err(e) => return Outcome::error(&e, &reported),
    };
    if env.command == CniCommand::Version {
        return Outcome::ok(version_json().to_string().into_bytes());
    }
    let conf = match PluginConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return Outcome::error(&e, &reported),
    };
    let v = conf.cni_version.clone();
    let saved = conf.data_dir.join(&env.container_id);
    match env.command {
        CniCommand::Version => unreachable!("answered above"),
        CniCommand::Add => finish(
            (|| {
                let fenv = read_flannel_env(&conf.subnet_file)?;
                let config = delegate_config(&conf, &fenv);
                save_config(&conf.data_dir, &saved, config.to_string().as_bytes())?;
                exec_delegate(&env, CniCommand::Add, &config)
            })(),
            &v,
        ),
        CniCommand::Del => finish(
            (|| {
                // Per spec: nothing to delete is success.
                let Some(bytes) = read_saved(&saved)? else {
                    return Ok(Ok(Vec::new()));
                };
                let Ok(config) = serde_json::from_slice::<Value>(&bytes) else {
                    // As flannel: the interface stays until reboot, DEL does not fail.
                    eprintln!(
                        "overlay-cni: cannot parse saved config {}; ignoring",
                        saved.display()
                    );
                    let _ = fs::remove_file(&saved);
                    return Ok(Ok(Vec::new()));
                };
                let config = with_prev_result(config, &conf);
                let r = exec_delegate(&env, CniCommand::Del, &config)?;
                if r.is_ok() {
                    fs::remove_file(&saved)
                        .or_else(|e| match e.kind() {
                            io::ErrorKind::NotFound => Ok(()),
                            _ => Err(e),
                        })
                        .map_err(|e| data_error("remove", &saved, e))?;
                }
                Ok(r)
            })(),
            &v,
        ),
        CniCommand::Check => finish(
            (|| {
                if matches!(v.as_str(), "0.3.0" | "0.3.1") {
                    return Err(CniError::new(
                        ERR_INCOMPATIBLE_VERSION,
                        "config version does not allow CHECK",
                        format!("cniVersion {v}"),
                    ));
                }
                let config = match read_saved(&saved)? {
                    Some(b) => serde_json::from_slice::<Value>(&b).map_err(|e| {
                        CniError::new(
                            ERR_DATA_DIR,
                            format!("cannot parse saved config {}", saved.display()),
                            e.to_string(),
                        )
                    })?,
                    None => delegate_config(&conf, &read_flannel_env(&conf.subnet_file)?),
                };
                let mut config = with_prev_result(config, &conf);
                if let Some(prev) = config.get_mut("prevResult") {
                    fill_route_gateways(prev);
                }
                exec_delegate(&env, CniCommand::Check, &config)
            })(),
            &v,
        ),
        CniCommand::Status => match read_flannel_env(&conf.subnet_file) {
            Ok(_) => Outcome::ok(Vec::new()),
            Err(e) => Outcome::error(&CniError::new(ERR_NOT_AVAILABLE, e.msg, e.details), &v),
        },
        // Saved configs are removed by DEL; there is nothing else of ours to collect.
        CniCommand::Gc => Outcome::ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    fn conf(json: &str) -> PluginConf {
        PluginConf::parse(json.as_bytes()).unwrap()
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni:/opt/cni/bin"),
    ];

    #[test]
    fn delegate_config_exact_json() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"cbr0","type":"overlay-cni"}"#);
        let d = delegate_config(&c, &parse_subnet_env(ENV).unwrap());
        assert_eq!(
            d.to_string(),
            r#"{"cniVersion":"1.0.0","ipMasq":true,"ipam":{"ranges":[[{"subnet":"10.244.7.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
    }

    #[test]
    fn delegate_config_overrides_and_ipam() {
        let c = conf(
            r#"{"cniVersion":"0.4.0","name":"n","type":"overlay-cni",
                "delegate":{"bridge":"cni0","mtu":1400,"ipMasq":false,"isGateway":false,"hairpinMode":true},
                "ipam":{"routes":[{"dst":"192.168.0.0/16"}]},
                "runtimeConfig":{"portMappings":[]}}"#,
        );
        let env = parse_subnet_env(&ENV.replace("IPMASQ=false", "IPMASQ=true")).unwrap();
        assert_eq!(
            delegate_config(&c, &env).to_string(),
            r#"{"bridge":"cni0","cniVersion":"0.4.0","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.7.0/24"}]],"routes":[{"dst":"192.168.0.0/16"},{"dst":"10.244.0.0/16"}],"type":"host-local"},"isGateway":false,"mtu":1400,"name":"n","runtimeConfig":{"portMappings":[]},"type":"bridge"}"#
        );
        // A non-bridge delegate gets no isGateway; ipMasq follows FLANNEL_IPMASQ=true.
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","delegate":{"type":"ipvlan","master":"eth0"}}"#,
        );
        assert_eq!(
            delegate_config(&c, &env).to_string(),
            r#"{"cniVersion":"1.0.0","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.7.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"master":"eth0","mtu":1450,"name":"n","type":"ipvlan"}"#
        );
    }

    #[test]
    fn plugin_conf_defaults() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"cbr0","type":"overlay-cni"}"#);
        assert_eq!(c.subnet_file, Path::new(DEFAULT_SUBNET_FILE));
        assert_eq!(c.data_dir, Path::new(DEFAULT_DATA_DIR));
        assert!(c.delegate.is_empty() && c.ipam.is_none() && c.prev_result.is_none());
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"x","subnetFile":"/tmp/s.env","dataDir":"/tmp/d","prevResult":{"ips":[]}}"#,
        );
        assert_eq!(c.subnet_file, Path::new("/tmp/s.env"));
        assert_eq!(c.data_dir, Path::new("/tmp/d"));
        assert_eq!(c.prev_result, Some(json!({"ips":[]})));
    }

    #[test]
    fn subnet_env_parsing() {
        let e = parse_subnet_env(ENV).unwrap();
        assert_eq!(
            e,
            FlannelEnv {
                network: Some("10.244.0.0/16".parse().unwrap()),
                subnet: Some("10.244.7.0/24".parse().unwrap()),
                ipv6_network: None,
                ipv6_subnet: None,
                mtu: 1450,
                ipmasq: false,
            }
        );
        // What overlayd itself writes parses the same way.
        let written = crate::control::subnet_env::SubnetEnv::v4(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.7.0/24".parse().unwrap(),
            1450,
            false,
        )
        .render();
        assert_eq!(parse_subnet_env(&written).unwrap(), e);
        // IPMASQ is true only for "true"; unknown keys and junk lines are ignored.
        let e2 = parse_subnet_env(&format!(
            "# comment\nFOO=bar\n{}",
            ENV.replace("IPMASQ=false", "IPMASQ=true")
        ))
        .unwrap();
        assert!(e2.ipmasq);
        assert!(
            !parse_subnet_env(&ENV.replace("IPMASQ=false", "IPMASQ=yes"))
                .unwrap()
                .ipmasq
        );
        // The same grammar as overlayd's own reader: `export` and quotes are tolerated.
        let shell = "export FLANNEL_NETWORK=\"10.244.0.0/16\"\n  FLANNEL_SUBNET = '10.244.7.1/24'\nexport FLANNEL_MTU=1450\nFLANNEL_IPMASQ=\"false\"\n";
        assert_eq!(parse_subnet_env(shell).unwrap(), e);
        assert_eq!(
            crate::control::subnet_env::parse_previous(shell).ipv4,
            e.subnet
        );
        // IPv6 only is enough.
        let v6 = parse_subnet_env(
            "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:5::1/64\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(v6.ipv6_subnet, Some("fd00:0:0:5::/64".parse().unwrap()));
        assert_eq!(v6.network, None);
    }

    #[test]
    fn subnet_env_errors() {
        let err = |t: &str| parse_subnet_env(t).unwrap_err();
        let e = err("FLANNEL_NETWORK=10.244.0.0/16\n");
        assert_eq!(e.code, ERR_BAD_SUBNET_ENV);
        assert_eq!(
            e.details,
            "missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
        );
        assert_eq!(err("").code, ERR_BAD_SUBNET_ENV);
        assert_eq!(err(&ENV.replace("1450", "x")).code, ERR_BAD_SUBNET_ENV);
        assert_eq!(
            err(&ENV.replace("10.244.7.1/24", "10.244.7.1")).code,
            ERR_BAD_SUBNET_ENV
        );
        assert_eq!(
            err(&ENV.replace("10.244.7.1/24", "fd00::1/64")).code,
            ERR_BAD_SUBNET_ENV
        );
    }

    #[test]
    fn env_validation() {
        let e = CniEnv::from_vars(vars(&ADD)).unwrap();
        assert_eq!(e.command, CniCommand::Add);
        assert_eq!(
            e.path,
            vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
        );
        let without = |k: &str| {
            let v: Vec<_> = ADD.iter().copied().filter(|(n, _)| *n != k).collect();
            CniEnv::from_vars(vars(&v))
        };
        for k in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_PATH",
        ] {
            assert_eq!(without(k).unwrap_err().code, ERR_INVALID_ENV, "{k}");
        }
        let with = |k: &str, val: &str| {
            let v: Vec<_> = ADD
                .iter()
                .map(|&(n, x)| (n, if n == k { val } else { x }))
                .collect();
            CniEnv::from_vars(vars(&v))
        };
        assert_eq!(
            with("CNI_COMMAND", "FROB").unwrap_err().code,
            ERR_INVALID_ENV
        );
        for bad in ["../etc", "a/b", "-x", ".", "a b"] {
            assert_eq!(
                with("CNI_CONTAINERID", bad).unwrap_err().code,
                ERR_INVALID_ENV,
                "{bad}"
            );
        }
        for bad in ["a/b", "toolongtoolongtoo", "..", "e:0"] {
            assert_eq!(
                with("CNI_IFNAME", bad).unwrap_err().code,
                ERR_INVALID_ENV,
                "{bad}"
            );
        }
        // DEL may lack a netns; VERSION needs nothing else.
        assert!(CniEnv::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ]))
        .is_ok());
        assert!(CniEnv::from_vars(vars(&[("CNI_COMMAND", "VERSION")])).is_ok());
    }

    #[test]
    fn config_errors() {
        let code = |s: &str| PluginConf::parse(s.as_bytes()).unwrap_err().code;
        assert_eq!(code("{not json"), ERR_DECODING);
        assert_eq!(code("[1,2]"), ERR_DECODING);
        assert_eq!(code(r#"{"name":"n"}"#), ERR_INVALID_CONFIG);
        assert_eq!(code(r#"{"cniVersion":"1.0.0"}"#), ERR_INVALID_CONFIG);
        assert_eq!(
            code(r#"{"cniVersion":"9.9.9","name":"n"}"#),
            ERR_INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","subnetFile":5}"#),
            ERR_INVALID_CONFIG
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","delegate":"bridge"}"#),
            ERR_INVALID_CONFIG
        );
        for d in [
            r#"{"type":1}"#,
            r#"{"name":"x"}"#,
            r#"{"ipam":{}}"#,
            r#"{"type":"../bin/sh"}"#,
        ] {
            assert_eq!(
                code(&format!(
                    r#"{{"cniVersion":"1.0.0","name":"n","delegate":{d}}}"#
                )),
                ERR_INVALID_CONFIG,
                "{d}"
            );
        }
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"routes":"x"}}"#),
            ERR_INVALID_CONFIG
        );
    }

    #[test]
    fn error_shapes() {
        let e = CniError::new(ERR_TRY_AGAIN_LATER, "not yet", "overlayd?");
        assert_eq!(
            e.to_json("0.4.0").to_string(),
            r#"{"cniVersion":"0.4.0","code":11,"details":"overlayd?","msg":"not yet"}"#
        );
        // Through run(): each failure is one JSON object on stdout with a non-zero exit.
        let shape = |o: &Outcome, code: u64, version: &str| {
            assert_ne!(o.code, 0);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["code"], code, "{v}");
            assert_eq!(v["cniVersion"], version, "{v}");
            assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            assert!(v["details"].is_string(), "{v}");
        };
        let ok_conf = br#"{"cniVersion":"0.4.0","name":"n","subnetFile":"/nonexistent/overlay-cni/subnet.env","dataDir":"/nonexistent/overlay-cni"}"#;
        shape(&run(vars(&[]), ok_conf), 4, "0.4.0");
        shape(&run(vars(&ADD), b"{"), 6, "1.0.0");
        shape(&run(vars(&ADD), br#"{"cniVersion":"1.0.0"}"#), 7, "1.0.0");
        shape(&run(vars(&ADD), ok_conf), 11, "0.4.0");
        let mut del = ADD;
        del[0].1 = "DEL";
        // DEL with nothing saved succeeds with no output.
        assert_eq!(run(vars(&del), ok_conf), Outcome::ok(Vec::new()));
        let status = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")];
        shape(&run(vars(&status), ok_conf), 50, "0.4.0");
        // Plugin-specific: a malformed subnet.env and a missing delegate.
        let dir = std::env::temp_dir().join(format!("overlay-cni-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let env_file = dir.join("subnet.env");
        fs::write(&env_file, "FLANNEL_MTU=1450\n").unwrap();
        let c = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","subnetFile":"{}","dataDir":"{}"}}"#,
            env_file.display(),
            dir.join("data").display()
        );
        shape(&run(vars(&ADD), c.as_bytes()), 100, "1.0.0");
        fs::write(&env_file, ENV).unwrap();
        let mut add = ADD;
        add[4].1 = "/nonexistent/cni/bin";
        shape(&run(vars(&add), c.as_bytes()), 101, "1.0.0");
        // The delegate config was saved before the delegate ran (flannel does the same).
        let saved: Value = serde_json::from_slice(&fs::read(dir.join("data/c1")).unwrap()).unwrap();
        assert_eq!(saved["ipam"]["ranges"][0][0]["subnet"], "10.244.7.0/24");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Saved state is read only from a regular file of ours: a symbolic link planted in the
    /// data dir, or a file of another user's, is refused (DEL fails, the target untouched).
    #[test]
    fn saved_state_links_and_strangers_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("overlay-cni-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("precious");
        fs::write(&target, "{}").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("c1")).unwrap();
        let c = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","subnetFile":"/nonexistent","dataDir":"{}"}}"#,
            dir.display()
        );
        let mut del = ADD;
        del[0].1 = "DEL";
        let out = run(vars(&del), c.as_bytes());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["code"], ERR_DATA_DIR, "{v}");
        assert!(
            v["details"].as_str().unwrap().contains("symbolic link"),
            "{v}"
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "{}");
        // Ours, then group-writable, then someone else's.
        let ours = dir.join("c2");
        save_config(&dir, &ours, b"{}").unwrap();
        assert_eq!(read_saved(&ours).unwrap().as_deref(), Some(&b"{}"[..]));
        fs::set_permissions(&ours, fs::Permissions::from_mode(0o620)).unwrap();
        assert!(read_saved(&ours)
            .unwrap_err()
            .details
            .contains("group- or world-writable"));
        fs::set_permissions(&ours, fs::Permissions::from_mode(0o600)).unwrap();
        if crate::sys::lock::effective_uid() == 0 {
            std::os::unix::fs::chown(&ours, Some(65534), None).unwrap();
            let e = read_saved(&ours).unwrap_err();
            assert!(
                e.details.contains("not a regular file owned by us"),
                "{e:?}"
            );
        } else {
            println!("skipped the foreign-owner case: not root");
        }
        // A link planted at the temporary name is not written through.
        let tmp = dir.join(format!(".c3.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        save_config(&dir, &dir.join("c3"), b"{\"x\":1}").unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "{}");
        assert_eq!(
            read_saved(&dir.join("c3")).unwrap().as_deref(),
            Some(&b"{\"x\":1}"[..])
        );
        assert_eq!(read_saved(&dir.join("absent")).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn route_gateways_filled_for_check() {
        let mut r = json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "10.244.7.2/24", "gateway": "10.244.7.1", "interface": 2}],
            "routes": [
                {"dst": "10.244.0.0/16"},
                {"dst": "192.168.0.0/16", "gw": "10.244.7.254"},
                {"dst": "fd00::/48"},
                {"dst": "bogus"}
            ]
        });
        fill_route_gateways(&mut r);
        assert_eq!(
            r["routes"],
            json!([
                {"dst": "10.244.0.0/16", "gw": "10.244.7.1"},
                {"dst": "192.168.0.0/16", "gw": "10.244.7.254"},
                {"dst": "fd00::/48"},
                {"dst": "bogus"}
            ])
        );
        // No routes or no ips: nothing to do, no panic.
        let mut empty = json!({"cniVersion": "1.0.0"});
        fill_route_gateways(&mut empty);
        assert_eq!(empty, json!({"cniVersion": "1.0.0"}));
    }

    #[test]
    fn version_output() {
        let o = run(vars(&[("CNI_COMMAND", "VERSION")]), b"");
        assert_eq!(o.code, 0);
        assert_eq!(
            String::from_utf8(o.stdout).unwrap(),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
    }
}
