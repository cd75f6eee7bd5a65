//! Containers made the way a container runtime makes them: a network namespace per container,
//! plugged in by the `overlay-cni` plugin (run with the `CNI_*` environment and the config on
//! stdin, inside the host's namespace), which delegates to the reference `bridge` and
//! `host-local` plugins of Debian's containernetworking-plugins (in /usr/lib/cni).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::{run_with_input, skip_unless, Netns};

/// Where Debian installs the reference plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// True (after [`skip`]) when the reference plugins are missing.
pub fn skip_without_cni_plugins(test: &str) -> bool {
    let missing: Vec<&str> = ["bridge", "host-local"]
        .into_iter()
        .filter(|p| !Path::new(CNI_BIN_DIR).join(p).exists())
        .collect();
    let reason = format!(
        "{CNI_BIN_DIR}/{{{}}} missing: run scripts/install-deps.sh (Debian's containernetworking-plugins)",
        missing.join(",")
    );
    skip_unless(missing.is_empty(), test, &reason)
}

/// A node's network config for overlay-cni: subnet.env from `subnet_file`, state under
/// `dir`, the bridge as the containers' default gateway (as the DaemonSet's conflist has it).
pub fn cni_conf(subnet_file: &Path, dir: &Path) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "overlay-cni",
        "subnetFile": subnet_file,
        "dataDir": dir.join("data"),
        "delegate": { "isDefaultGateway": true },
        "ipam": { "dataDir": dir.join("ipam") },
    })
    .to_string()
}

/// A container: its namespace and the address the plugin gave it.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

/// `CNI_COMMAND=ADD` for a new container `id` on `host`; panics with the plugin's output on
/// failure (bounded: 60 s).
pub fn cni_add(host: &Netns, id: &str, conf: &str) -> Pod {
    let ns = Netns::new(id);
    let plugin = env!("CARGO_BIN_EXE_overlay-cni");
    let plugin_dir = Path::new(plugin).parent().expect("plugin dir");
    let out = run_with_input(
        host.command("env")
            .arg("CNI_COMMAND=ADD")
            .arg(format!("CNI_CONTAINERID={id}"))
            .arg(format!("CNI_NETNS=/run/netns/{}", ns.name()))
            .arg("CNI_IFNAME=eth0")
            .arg(format!("CNI_PATH={CNI_BIN_DIR}:{}", plugin_dir.display()))
            .arg(plugin),
        conf,
        Duration::from_secs(60),
        &format!("overlay-cni ADD {id}"),
    );
    assert!(
        out.status.success(),
        "ADD {id}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("ADD result is JSON");
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in the ADD result {result}"));
    Pod { ns, ip }
}
