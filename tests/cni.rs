//! End-to-end tests of the `overlay-cni` plugin: it is run exactly as a container runtime runs
//! a CNI plugin (`CNI_*` environment, config on stdin, inside the host's network namespace),
//! against overlayd's real subnet.env, delegating to the reference `bridge` and `host-local`
//! plugins from Debian's containernetworking-plugins (`scripts/install-deps.sh`).
//!
//! "Containers" are network namespaces made and removed by the test.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);
/// Longest a single plugin invocation may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

fn plugin_bin() -> &'static str {
    env!("CARGO_BIN_EXE_overlay-cni")
}

fn cni_path() -> String {
    let dir = Path::new(plugin_bin())
        .parent()
        .expect("overlay-cni has a directory");
    format!("{CNI_BIN_DIR}:{}", dir.display())
}

/// One plugin invocation as a runtime makes it: `ip netns exec <host> env CNI_...=... overlay-cni`
/// with `config` on stdin. `container` is `(CNI_CONTAINERID, netns)`.
fn cni(
    host: &Netns,
    command: &str,
    container: Option<(&str, &Netns)>,
    config: &str,
    cni_args: Option<&str>,
) -> Output {
    let mut cmd = host.command("env");
    cmd.arg(format!("CNI_COMMAND={command}"));
    if let Some((id, ns)) = container {
        cmd.arg(format!("CNI_CONTAINERID={id}"))
            .arg(format!("CNI_NETNS=/run/netns/{}", ns.name()))
            .arg("CNI_IFNAME=eth0");
    }
    if let Some(a) = cni_args {
        cmd.arg(format!("CNI_ARGS={a}"));
    }
    cmd.arg(format!("CNI_PATH={}", cni_path()))
        .arg(plugin_bin());
    run_with_input(
        &mut cmd,
        config,
        PLUGIN_TIMEOUT,
        &format!("overlay-cni {command}"),
    )
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// The JSON on stdout of a successful invocation.
fn ok_json(what: &str, out: &Output) -> Value {
    assert!(out.status.success(), "{what} failed: {}", show(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {}", show(out)))
}

/// Asserts a spec-shaped error with `code`.
fn assert_cni_error(what: &str, out: &Output, code: u64) {
    assert!(!out.status.success(), "{what} must fail: {}", show(out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: error is not JSON ({e}): {}", show(out)));
    assert_eq!(v["code"], code, "{what}: {v}");
    assert!(v["cniVersion"].is_string(), "{what}: {v}");
    assert!(
        v["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(v["details"].is_string(), "{what}: {v}");
}

/// The network config a runtime would hand overlay-cni on host `dir`'s node.
fn net_conf(subnet_file: &Path, dir: &Path) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "overlay-cni",
        "subnetFile": subnet_file,
        "dataDir": dir.join("data"),
        // host-local keeps its store here instead of /var/lib/cni/networks.
        "ipam": { "dataDir": dir.join("ipam") },
    })
    .to_string()
}

/// The config with the ADD result as `prevResult` (what CHECK and DEL get from a runtime).
fn with_prev(conf: &str, result: &Value) -> String {
    let mut v: Value = serde_json::from_str(conf).expect("conf is JSON");
    v["prevResult"] = result.clone();
    v.to_string()
}

/// The IPv4 address (with its prefix) the ADD result gives the container.
fn result_addr(result: &Value) -> Ipv4Net {
    let ip = result["ips"]
        .as_array()
        .and_then(|ips| ips.first())
        .and_then(|ip| ip["address"].as_str())
        .unwrap_or_else(|| panic!("no ips[0].address in {result}"));
    ip.parse()
        .unwrap_or_else(|e| panic!("bad address {ip:?} in result: {e}"))
}

/// A container: its namespace, id and ADD result.
struct Container {
    ns: Netns,
    id: String,
    result: Value,
    addr: Ipv4Net,
}

impl Container {
    fn ip(&self) -> Ipv4Addr {
        self.addr.addr()
    }
}

/// A node: its host namespace, overlayd, subnet and the plugin's config.
struct Node<'a> {
    host: &'a Host,
    subnet: Ipv4Net,
    conf: String,
    dir: PathBuf,
}

impl Node<'_> {
    fn add(&self, id: &str) -> Container {
        let ns = Netns::new(id);
        let out = cni(self.host, "ADD", Some((id, &ns)), &self.conf, None);
        let result = ok_json(&format!("ADD {id}"), &out);
        let addr = result_addr(&result);
        Container {
            ns,
            id: id.to_owned(),
            result,
            addr,
        }
    }

    fn ipam_store(&self) -> PathBuf {
        self.dir.join("ipam").join("cbr0")
    }

    /// The delegate config the plugin saved for container `id`.
    fn saved_config(&self, id: &str) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.dir.join("data").join(id)).expect("saved config"),
        )
        .expect("saved config is JSON")
    }

    /// CHECK of each container, with its ADD result as prevResult, as a runtime sends it.
    fn check_all(&self, containers: &[Container]) {
        for c in containers {
            let prev = with_prev(&self.conf, &c.result);
            let out = cni(self.host, "CHECK", Some((&c.id, &c.ns)), &prev, None);
            assert!(out.status.success(), "CHECK {}: {}", c.id, show(&out));
        }
    }

    /// DEL of each container (with prevResult): succeeds and removes its eth0.
    fn del_all(&self, containers: &[Container]) {
        for c in containers {
            let prev = with_prev(&self.conf, &c.result);
            let out = cni(self.host, "DEL", Some((&c.id, &c.ns)), &prev, None);
            assert!(out.status.success(), "DEL {}: {}", c.id, show(&out));
            assert!(!c.ns.has_link("eth0"), "{}: eth0 removed", c.id);
        }
    }

    /// host-local's store holds no address of either family any more.
    fn assert_no_address_held(&self) {
        let held: Vec<_> = std::fs::read_dir(self.ipam_store())
            .expect("ipam store")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        assert!(held.is_empty(), "addresses still allocated: {held:?}");
    }
}

#[test]
fn netns_cni_two_hosts_vxlan() {
    let test = "netns_cni_two_hosts_vxlan";
    if skip_unless_root(test) || skip_without_cni_plugins(test) {
        return;
    }
    // h1 as flannel's default (FLANNEL_IPMASQ=false: the bridge plugin masquerades),
    // h2 with --ip-masq (FLANNEL_IPMASQ=true: it does not).
    let mut cluster = Cluster::builder()
        .hosts(2)
        .backend("vxlan")
        .extra(1, &["--ip-masq"])
        .ready(READY)
        .start();
    let tmp = TempDir::new("cni");
    let nodes = cni_nodes(&cluster, &tmp);
    assert_ne!(nodes[0].subnet, nodes[1].subnet);

    // Two containers per host, each with an address of its host's FLANNEL_SUBNET.
    let mut containers: Vec<Vec<Container>> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            (1..=2)
                .map(|j| node.add(&format!("c{}{j}", i + 1)))
                .collect()
        })
        .collect();
    assert_containers_configured(&nodes, &containers);
    assert_eq!(
        nodes[0].host.sh("sysctl -n net.ipv4.ip_forward").trim(),
        "1"
    );
    assert_containers_reach_each_other(&containers);
    // CHECK, with the ADD result as prevResult, as a runtime sends it.
    for (node, cs) in nodes.iter().zip(&containers) {
        node.check_all(cs);
    }
    del_and_re_add(&nodes[0], cluster.daemons[0].subnet_file(), &mut containers);
    assert_bad_configs_refused(&nodes[0]);
    let out = cni(nodes[0].host, "VERSION", None, "", None);
    assert_eq!(
        ok_json("VERSION", &out),
        json!({"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
    );
    // Tear everything down: every interface, saved config and address goes.
    for (node, cs) in nodes.iter().zip(&containers) {
        node.del_all(cs);
        let left: Vec<_> = std::fs::read_dir(node.dir.join("data"))
            .expect("data dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "saved configs left: {left:?}");
        node.assert_no_address_held();
    }
    assert!(cluster.daemons.iter_mut().all(|d| d.is_running()));
}

/// The two nodes of `cluster` as the plugin sees them, each host forwarding (the bridge
/// plugin's gateway forwards between cni0 and the overlay).
fn cni_nodes<'a>(cluster: &'a Cluster, tmp: &TempDir) -> Vec<Node<'a>> {
    (0..cluster.daemons.len())
        .map(|i| {
            let host = cluster.topo.host(i);
            host.sysctl("net.ipv4.ip_forward", "1");
            let dir = tmp.path().join(format!("h{}", i + 1));
            Node {
                host,
                subnet: subnet_of(&cluster.subnets[i]),
                conf: net_conf(cluster.daemons[i].subnet_file(), &dir),
                dir,
            }
        })
        .collect()
}

/// Each container has an address of its node's subnet on eth0, and the delegate config saved
/// is what flannel's plugin saves; each host has its bridge.
fn assert_containers_configured(nodes: &[Node], containers: &[Vec<Container>]) {
    for (node, cs) in nodes.iter().zip(containers) {
        for c in cs {
            assert!(
                node.subnet.contains(&c.ip()) && c.addr.prefix_len() == node.subnet.prefix_len(),
                "{}: {} not in {}",
                c.id,
                c.addr,
                node.subnet
            );
            assert_ne!(c.ip(), node.subnet.network(), "{}: the TUN's address", c.id);
            let shown = c.ns.ip("-4 addr show dev eth0");
            assert!(
                shown.contains(&c.addr.to_string()),
                "{}: eth0 has {}: {shown}",
                c.id,
                c.addr
            );
            // The saved delegate config is what flannel's plugin saves.
            let saved = node.saved_config(&c.id);
            assert_eq!(saved["type"], "bridge");
            assert_eq!(saved["bridge"], Value::Null, "default bridge name");
            assert_eq!(
                saved["ipam"]["ranges"][0][0]["subnet"],
                node.subnet.to_string()
            );
        }
        assert!(node.host.has_link("cni0"), "bridge cni0 on the host");
    }
}

/// Pings across hosts both ways and on one host, full-size packets, and TCP both ways.
fn assert_containers_reach_each_other(containers: &[Vec<Container>]) {
    let (c11, c12) = (&containers[0][0], &containers[0][1]);
    let (c21, c22) = (&containers[1][0], &containers[1][1]);
    // Across hosts both ways, and on one host.
    for (a, b) in [(c11, c21), (c21, c11), (c12, c22), (c22, c12), (c11, c12)] {
        assert!(
            ping_until(&a.ns, b.ip(), Duration::from_secs(15)),
            "{} ({}) cannot ping {} ({})",
            a.id,
            a.ip(),
            b.id,
            b.ip()
        );
    }
    // Full-size packets through the overlay (the container MTU is FLANNEL_MTU).
    let big = c11.ns.output(&[
        "ping",
        "-q",
        "-n",
        "-c",
        "20",
        "-i",
        "0.01",
        "-W",
        "2",
        "-s",
        "1400",
        &c21.ip().to_string(),
    ]);
    assert!(big.status.success(), "ping -s 1400: {}", show(&big));
    let (sent, got) = tcp_transfer(&c11.ns, &c22.ns, c22.ip(), 0, 5_000_000);
    assert_eq!(sent, got, "5 MB c11 -> c22 across the overlay");
    let (sent, got) = tcp_transfer(&c21.ns, &c12.ns, c12.ip(), 0, 2_000_000);
    assert_eq!(sent, got, "2 MB c21 -> c12 across the overlay");
}

/// DEL of c12 with subnet.env gone (the saved config is enough; an ADD meanwhile is told to
/// try later), DEL again, the freed address taken again by c13, an allocated one refused.
fn del_and_re_add(node: &Node, env_file: &Path, containers: &mut [Vec<Container>]) {
    let (c11_ip, c21_ip) = (containers[0][0].ip(), containers[1][0].ip());
    let c12 = containers[0].pop().expect("c12");
    let store_file = node.ipam_store().join(c12.ip().to_string());
    assert!(
        store_file.exists(),
        "host-local holds {}",
        store_file.display()
    );
    let moved = env_file.with_extension("moved");
    std::fs::rename(env_file, &moved).expect("move subnet.env away");
    let prev = with_prev(&node.conf, &c12.result);
    let out = cni(node.host, "DEL", Some((&c12.id, &c12.ns)), &prev, None);
    // An ADD meanwhile is told to try again later.
    let early = Netns::new("c19");
    let add_early = cni(node.host, "ADD", Some(("c19", &early)), &node.conf, None);
    std::fs::rename(&moved, env_file).expect("restore subnet.env");
    assert!(out.status.success(), "DEL c12: {}", show(&out));
    assert_cni_error("ADD without subnet.env", &add_early, 11);
    drop(early);
    assert!(!c12.ns.has_link("eth0"), "DEL removes the container's eth0");
    assert!(!store_file.exists(), "DEL frees {}", c12.ip());
    assert!(
        !node.dir.join("data/c12").exists(),
        "DEL removes the saved config"
    );
    // DEL again is a no-op success, as the spec wants.
    let again = cni(node.host, "DEL", Some((&c12.id, &c12.ns)), &node.conf, None);
    assert!(again.status.success(), "second DEL: {}", show(&again));
    let c13 = re_add_freed_address(node, &c12, c11_ip);
    containers[0].push(c13);
    assert!(
        ping_until(&containers[0][1].ns, c21_ip, Duration::from_secs(15)),
        "c13 reaches c21"
    );
}

/// The freed address of `freed` can be taken again (host-local refuses one still allocated,
/// `taken`); a runtime cleans up the failed ADD with DEL. Returns the new container c13.
fn re_add_freed_address(node: &Node, freed: &Container, taken: Ipv4Addr) -> Container {
    let ns = Netns::new("c13");
    let out = cni(
        node.host,
        "ADD",
        Some(("c13", &ns)),
        &node.conf,
        Some(&format!("IgnoreUnknown=1;IP={}", freed.ip())),
    );
    let result = ok_json("ADD c13 reusing c12's address", &out);
    assert_eq!(result_addr(&result), freed.addr);
    let other = Netns::new("c14");
    let out = cni(
        node.host,
        "ADD",
        Some(("c14", &other)),
        &node.conf,
        Some(&format!("IgnoreUnknown=1;IP={taken}")),
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&taken.to_string()),
        "an allocated address is not given twice: {}",
        show(&out)
    );
    // A runtime cleans up a failed ADD with DEL.
    let out = cni(node.host, "DEL", Some(("c14", &other)), &node.conf, None);
    assert!(out.status.success(), "DEL after failed ADD: {}", show(&out));
    Container {
        addr: result_addr(&result),
        ns,
        id: "c13".into(),
        result,
    }
}

/// A broken config gets a spec-shaped error and changes nothing.
fn assert_bad_configs_refused(node: &Node) {
    let ns = Netns::new("c15");
    let broken =
        r#"{"cniVersion":"1.0.0","name":"cbr0","type":"overlay-cni","delegate":{"name":"x"}}"#;
    assert_cni_error(
        "ADD with delegate.name",
        &cni(node.host, "ADD", Some(("c15", &ns)), broken, None),
        7,
    );
    assert_cni_error(
        "ADD with a config that is not JSON",
        &cni(
            node.host,
            "ADD",
            Some(("c15", &ns)),
            "{\"cniVersion\":",
            None,
        ),
        6,
    );
    assert!(!ns.has_link("eth0"));
}

/// Dual stack as flannel's CNI plugin does it: overlayd with flannel's dual-stack config
/// writes FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET, and overlay-cni hands host-local one range
/// per family and a route to each overlay network, so a container gets an IPv4 and an IPv6
/// address from this node's subnets, the reference bridge plugin gives it both gateways, and
/// DEL frees both addresses.
#[test]
fn netns_cni_dual_stack() {
    let test = "netns_cni_dual_stack";
    if skip_unless_root(test) || skip_without_cni_plugins(test) {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    put_dual_stack_config(&etcd, ETCD_PREFIX, "vxlan");
    let host = topo.host(0);
    add_underlay_ipv6(host, 0);
    let mut d = Overlayd::spawn(host, overlayd_args("vxlan", &etcd));
    let subnet = subnet_of(&d.wait_ready(READY));
    let subnet6 = ipv6_subnet_in(d.subnet_file()).expect("FLANNEL_IPV6_SUBNET");
    let tmp = TempDir::new("cni6");
    let node = Node {
        host,
        subnet,
        conf: net_conf(d.subnet_file(), &tmp.path().join("h1")),
        dir: tmp.path().join("h1"),
    };

    let containers: Vec<Container> = ["d1", "d2"].iter().map(|id| node.add(id)).collect();
    let addrs6: Vec<Ipv6Addr> = containers
        .iter()
        .map(|c| assert_dual_stack_container(&node, c, subnet6))
        .collect();
    assert_ne!(addrs6[0], addrs6[1]);
    // Both families work between the two containers on the node's bridge.
    let (c1, c2) = (&containers[0], &containers[1]);
    assert!(ping_until(&c1.ns, c2.ip(), Duration::from_secs(15)));
    assert!(
        ping_until(&c1.ns, addrs6[1], Duration::from_secs(15)),
        "{} cannot ping6 {}",
        c1.id,
        addrs6[1]
    );
    assert!(ping_until(&c2.ns, addrs6[0], Duration::from_secs(15)));
    // CHECK passes on the dual-stack result; DEL frees both addresses of each container.
    node.check_all(&containers);
    node.del_all(&containers);
    node.assert_no_address_held();
    assert!(d.is_running());
}

/// A dual-stack container: one address per family, each from this node's subnet of that
/// family, with its gateway; both on eth0, routes to both overlay networks; the delegate
/// config has flannel's ranges (v4 then v6) and routes. Returns its IPv6 address.
fn assert_dual_stack_container(node: &Node, c: &Container, subnet6: Ipv6Net) -> Ipv6Addr {
    let (subnet, network6): (Ipv4Net, Ipv6Net) = (node.subnet, OVERLAY_NETWORK6.parse().unwrap());
    let gw6 = Ipv6Addr::from(u128::from(subnet6.network()) + 1);
    // One address per family, each from this node's subnet of that family, with its gateway.
    let ips = c.result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{}: {}", c.id, c.result);
    assert!(
        subnet.contains(&c.ip()),
        "{}: {} not in {subnet}",
        c.id,
        c.addr
    );
    let v6 = ips
        .iter()
        .find_map(|ip| ip["address"].as_str()?.parse::<Ipv6Net>().ok())
        .unwrap_or_else(|| panic!("{}: no IPv6 address in {}", c.id, c.result));
    assert!(
        subnet6.contains(&v6.addr()) && v6.prefix_len() == subnet6.prefix_len(),
        "{}: {v6} not in {subnet6}",
        c.id
    );
    assert_ne!(v6.addr(), gw6, "{}: the gateway's address", c.id);
    assert!(
        ips.iter().any(|ip| ip["gateway"] == gw6.to_string()),
        "{}: IPv6 gateway {gw6}: {}",
        c.id,
        c.result
    );
    // The container has both, and routes to both overlay networks.
    let shown = c.ns.ip("-6 addr show dev eth0 scope global");
    assert!(shown.contains(&v6.to_string()), "{}: {shown}", c.id);
    let routes6 = c.ns.ip("-6 route show");
    assert!(
        routes6.contains(&format!("{network6} via {gw6}")),
        "{}: no route to {network6}: {routes6}",
        c.id
    );
    let routes4 = c.ns.ip("-4 route show");
    assert!(routes4.contains(OVERLAY_NETWORK), "{}: {routes4}", c.id);
    // The delegate config: flannel's ranges (v4 then v6) and routes.
    let saved = node.saved_config(&c.id);
    assert_eq!(
        saved["ipam"]["ranges"],
        json!([[{"subnet": subnet.to_string()}], [{"subnet": subnet6.to_string()}]])
    );
    assert_eq!(
        saved["ipam"]["routes"],
        json!([{"dst": OVERLAY_NETWORK}, {"dst": network6.to_string()}])
    );
    v6.addr()
}

/// The plugin's answers that need no overlayd: VERSION, and spec-shaped errors for a bad
/// environment, a bad config and a missing subnet.env.
#[test]
fn netns_cni_version_and_errors() {
    let test = "netns_cni_version_and_errors";
    if skip_unless_root(test) || skip_without_cni_plugins(test) {
        return;
    }
    let host = Netns::new("cnih");
    let ctr = Netns::new("cnic");
    let tmp = TempDir::new("cni");
    let conf = net_conf(&tmp.path().join("subnet.env"), tmp.path());
    let out = cni(&host, "VERSION", None, &conf, None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
    );
    assert_cni_error(
        "ADD before overlayd wrote subnet.env",
        &cni(&host, "ADD", Some(("x1", &ctr)), &conf, None),
        11,
    );
    assert_cni_error(
        "unknown command",
        &cni(&host, "FROB", Some(("x1", &ctr)), &conf, None),
        4,
    );
    assert_cni_error(
        "ADD without a container",
        &cni(&host, "ADD", None, &conf, None),
        4,
    );
    assert_cni_error(
        "ADD with an unsupported cniVersion",
        &cni(
            &host,
            "ADD",
            Some(("x1", &ctr)),
            &conf.replace("1.0.0", "0.2.0"),
            None,
        ),
        1,
    );
    std::fs::write(tmp.path().join("subnet.env"), "FLANNEL_MTU=1450\n").expect("write");
    assert_cni_error(
        "ADD with an incomplete subnet.env",
        &cni(&host, "ADD", Some(("x1", &ctr)), &conf, None),
        100,
    );
    // DEL of something never added succeeds.
    let out = cni(&host, "DEL", Some(("x1", &ctr)), &conf, None);
    assert!(out.status.success(), "DEL of nothing: {}", show(&out));
    assert!(!ctr.has_link("eth0"));
}
