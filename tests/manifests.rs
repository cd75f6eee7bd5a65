//! The deployment manifests under `deploy/`: every YAML file parses, and the Kubernetes
//! objects carry what overlayd needs (host network, NET_ADMIN + NET_RAW and nothing more,
//! /dev/net/tun, /run/flannel, its settings from the ConfigMap), and the embedded net-conf.json
//! and cni-conf.json are configs overlayd and overlay-cni accept.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use clap::Parser;
use overlayd::control::config::NetworkConfig;
use serde::Deserialize;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every document of every YAML file under deploy/, as JSON values, with their file.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("read yaml");
        for de in serde_norway::Deserializer::from_str(&text) {
            let v = serde_norway::Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", file.display()));
            if v.is_null() {
                continue;
            }
            let json = serde_json::to_value(&v)
                .unwrap_or_else(|e| panic!("{}: not JSON-like: {e}", file.display()));
            docs.push((file.clone(), json));
        }
    }
    docs
}

fn the(kind: &str) -> Value {
    let found: Vec<Value> = documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} under deploy/");
    found.into_iter().next().expect("one")
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_owned()
        })
        .collect()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {list}"))
}

#[test]
fn every_yaml_file_parses() {
    let docs = documents();
    let kinds: BTreeSet<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    assert!(
        kinds.contains("DaemonSet") && kinds.contains("ConfigMap"),
        "{kinds:?}"
    );
    for (file, d) in &docs {
        assert!(
            d["apiVersion"].is_string(),
            "{}: apiVersion",
            file.display()
        );
        assert!(d["kind"].is_string(), "{}: kind", file.display());
        assert!(
            d["metadata"]["name"].is_string(),
            "{}: metadata.name",
            file.display()
        );
    }
}

#[test]
fn daemonset_runs_overlayd_on_the_host_network_with_two_capabilities() {
    let ds = the("DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    // Runs on tainted (NotReady, control-plane) nodes too.
    let tolerations = spec["tolerations"].as_array().expect("tolerations");
    for effect in ["NoSchedule", "NoExecute"] {
        assert!(
            tolerations.iter().any(|t| t["operator"] == "Exists"
                && t["effect"] == effect
                && t.get("key").is_none()),
            "tolerates every {effect} taint"
        );
    }

    let c = named(&spec["containers"], "overlayd");
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "not privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        BTreeSet::from(["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
        "capabilities: exactly NET_ADMIN and NET_RAW"
    );
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_owned()])
    );
    // No other container or init container asks for anything.
    for list in [&spec["containers"], &spec["initContainers"]] {
        for other in list.as_array().expect("containers") {
            if other["name"] != "overlayd" {
                assert!(
                    other["securityContext"].is_null(),
                    "{}: no securityContext",
                    other["name"]
                );
            }
        }
    }

    // Mounts: /run/flannel and /dev/net/tun from the host.
    let volumes = &spec["volumes"];
    let mount_of = |path: &str| -> Value {
        let m = c["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("overlayd mounts {path}"));
        named(volumes, m["name"].as_str().expect("mount name")).clone()
    };
    let run = mount_of("/run/flannel");
    assert_eq!(run["hostPath"]["path"], "/run/flannel");
    // The instance lock's directory is the host's, so a second overlayd on the node refuses.
    let lock = mount_of(overlayd::lifecycle::DEFAULT_RUN_DIR);
    assert_eq!(
        lock["hostPath"]["path"],
        overlayd::lifecycle::DEFAULT_RUN_DIR
    );
    let tun = mount_of("/dev/net/tun");
    assert_eq!(tun["hostPath"]["path"], "/dev/net/tun");
    assert_eq!(tun["hostPath"]["type"], "CharDevice");

    // Settings from the ConfigMap, by keys it has.
    let cm = the("ConfigMap");
    let cm_name = cm["metadata"]["name"].as_str().expect("ConfigMap name");
    let env = c["env"].as_array().expect("env");
    for var in [
        "OVERLAYD_ETCD_ENDPOINTS",
        "OVERLAYD_ETCD_PREFIX",
        "OVERLAYD_BACKEND",
    ] {
        let e = named(&c["env"], var);
        let r = &e["valueFrom"]["configMapKeyRef"];
        assert_eq!(r["name"], cm_name, "{var} from the ConfigMap");
        let key = r["key"].as_str().expect("key");
        assert!(cm["data"][key].is_string(), "ConfigMap has {key}");
    }
    assert!(env.iter().all(|e| e["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("OVERLAYD_"))));
    let endpoints = cm["data"]["OVERLAYD_ETCD_ENDPOINTS"]
        .as_str()
        .expect("endpoints");
    assert!(
        endpoints
            .split(',')
            .all(|e| e.starts_with("http://") || e.starts_with("https://")),
        "{endpoints}"
    );

    // The CNI plugin and its config are installed on the host, by overlayd itself (the image
    // has no shell), and the network config goes to etcd the same way.
    let install = named(&spec["initContainers"], "install-cni");
    assert_eq!(install["command"][0], "/usr/local/bin/overlayd");
    assert_eq!(install["command"][1], "install-cni");
    let init = named(&spec["initContainers"], "init-network");
    assert_eq!(init["command"][1], "init-network");
    for ic in spec["initContainers"].as_array().expect("init containers") {
        assert_eq!(
            ic["image"], c["image"],
            "{}: overlayd's own image",
            ic["name"]
        );
        let argv: Vec<String> = ic["command"]
            .as_array()
            .expect("command")
            .iter()
            .map(|w| w.as_str().expect("word").to_string())
            .collect();
        // The words parse as the subcommand's flags.
        let parsed = match argv[1].as_str() {
            "install-cni" => {
                overlayd::setup::InstallCniArgs::try_parse_from(&argv[1..]).map(|_| ())
            }
            "init-network" => {
                overlayd::setup::InitNetworkArgs::try_parse_from(&argv[1..]).map(|_| ())
            }
            other => panic!("unexpected init container command {other}"),
        };
        parsed.unwrap_or_else(|e| panic!("{}: {e}", ic["name"]));
    }
    // Metrics: a declared port on the node's address, probed there, scraped by Prometheus.
    let port = named(&c["ports"], "metrics");
    assert_eq!(port["containerPort"], 9108);
    assert_eq!(
        named(&c["env"], "OVERLAYD_METRICS_ADDR")["value"],
        "$(OVERLAYD_PUBLIC_IP):9108"
    );
    let names: Vec<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).expect("env var");
    assert!(
        pos("OVERLAYD_PUBLIC_IP") < pos("OVERLAYD_METRICS_ADDR"),
        "$(OVERLAYD_PUBLIC_IP) is only expanded when defined earlier"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
        assert!(
            c[probe]["httpGet"]["host"].is_null(),
            "{probe}: the pod's (node's) IP"
        );
    }
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9108");
    assert_eq!(
        named(volumes, "cni-plugin")["hostPath"]["path"],
        "/opt/cni/bin"
    );
    assert_eq!(named(volumes, "cni")["hostPath"]["path"], "/etc/cni/net.d");
    assert_eq!(named(volumes, "overlayd-cfg")["configMap"]["name"], cm_name);
}

#[test]
fn configmap_net_conf_is_a_valid_network_config() {
    let cm = the("ConfigMap");
    let net_conf = cm["data"]["net-conf.json"].as_str().expect("net-conf.json");
    let cfg = NetworkConfig::parse(net_conf.as_bytes())
        .unwrap_or_else(|e| panic!("net-conf.json rejected: {e}\n{net_conf}"));
    assert_eq!(cfg.network, "10.244.0.0/16".parse().unwrap());
    // The backend there is the one the daemon is started with.
    let backend = cm["data"]["OVERLAYD_BACKEND"].as_str().expect("backend");
    assert_eq!(cfg.backend.kind.as_str(), backend);
}

#[test]
fn configmap_cni_conf_is_accepted_by_overlay_cni() {
    let cm = the("ConfigMap");
    let text = cm["data"]["cni-conf.json"].as_str().expect("cni-conf.json");
    let list: Value = serde_json::from_str(text).expect("cni-conf.json is JSON");
    let plugins = list["plugins"].as_array().expect("a conflist");
    assert_eq!(plugins[0]["type"], "overlay-cni");
    // What a runtime hands the plugin: the entry plus the list's name and cniVersion.
    let mut conf = plugins[0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let parsed = overlayd::cni::PluginConf::parse(conf.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("overlay-cni rejects its config: {e}"));
    assert_eq!(parsed.subnet_file, Path::new("/run/flannel/subnet.env"));
    assert!(overlayd::cni::SUPPORTED_VERSIONS.contains(&parsed.cni_version.as_str()));
}
