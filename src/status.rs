//! `overlayd status`: this node's view of the cluster at a glance — every lease from etcd
//! (subnet, public address, backend, VTEP MAC, time to expiry; a dual-stack lease's IPv6
//! subnet, PublicIPv6 and IPv6 VTEP MAC on a `+` line below it) joined with this node's
//! per-peer counters from its metrics endpoint.
//!
//! Every string read from etcd goes through [`printable`] before it is printed: a key or
//! value holding terminal escapes must not drive the operator's terminal.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::control::config::NetworkConfig;
use crate::control::etcd::{Registry, RemoteLease};

/// Flags of `overlayd status`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "overlayd status",
    about = "Show this node's lease, the peers and their traffic counters"
)]
pub struct StatusArgs {
    #[command(flatten)]
    pub etcd: crate::cli::EtcdArgs,
    /// The local daemon's metrics listener, for the traffic columns.
    #[arg(long, env = "OVERLAYD_METRICS_ADDR", default_value = "127.0.0.1:9108")]
    pub metrics_addr: SocketAddr,
}

/// Per-peer counters scraped from `/metrics`: subnet → (tx packets, tx bytes, rx packets, rx bytes).
pub type PeerTraffic = HashMap<String, [u64; 4]>;

/// A Prometheus sample line: its name, its label text and its value.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let (name, rest) = line.split_once('{')?;
    let (labels, value) = rest.rsplit_once("} ")?;
    Some((name, labels, value.trim().parse().unwrap_or(0.0)))
}

/// Label `k`'s value in a sample's label text.
fn label(labels: &str, k: &str) -> Option<String> {
    labels.split(',').find_map(|kv| {
        kv.strip_prefix(k)
            .and_then(|v| v.strip_prefix("=\""))
            .map(|v| v.trim_end_matches('"').to_string())
    })
}

/// Parses the `overlayd_peer_*` lines of a Prometheus text page.
pub fn parse_peer_metrics(page: &str) -> PeerTraffic {
    let mut out = PeerTraffic::new();
    for (name, labels, value) in page.lines().filter_map(sample) {
        let col = match name {
            "overlayd_peer_packets_total" => 0,
            "overlayd_peer_bytes_total" => 1,
            _ => continue,
        };
        let (Some(peer), Some(dir)) = (label(labels, "peer"), label(labels, "direction")) else {
            continue;
        };
        let off = if dir == "rx" { 2 } else { 0 };
        out.entry(peer).or_default()[col + off] = value as u64;
    }
    out
}

/// A wireguard peer as `/metrics` shows it: seconds since its last handshake (`None`
/// before the first), data bytes received and sent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WgPeerFigures {
    pub handshake_age: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The wireguard peers of a Prometheus text page, by (device, public key, endpoint).
pub type WgPeers = std::collections::BTreeMap<(String, String, String), WgPeerFigures>;

/// Parses the `overlayd_wireguard_peer_*` lines of a Prometheus text page.
pub fn parse_wireguard_peers(page: &str) -> WgPeers {
    use crate::wg::metrics::{PEER_BYTES, PEER_HANDSHAKE};
    let mut out = WgPeers::new();
    for (name, labels, value) in page.lines().filter_map(sample) {
        if name != PEER_BYTES && name != PEER_HANDSHAKE {
            continue;
        }
        let who = ["device", "peer", "endpoint"].map(|k| label(labels, k));
        let [Some(dev), Some(peer), Some(ep)] = who else {
            continue;
        };
        let f = out.entry((dev, peer, ep)).or_default();
        match label(labels, "direction").as_deref() {
            _ if name == PEER_HANDSHAKE => f.handshake_age = Some(value),
            Some("rx") => f.rx_bytes = value as u64,
            _ => f.tx_bytes = value as u64,
        }
    }
    out
}

/// The wireguard peers' table: device, key, endpoint, last handshake, bytes.
fn wireguard_section(out: &mut String, peers: &WgPeers) {
    let _ = writeln!(
        out,
        "wireguard peers:\n{:<14} {:<45} {:<28} {:>16} {:>14} {:>14}",
        "DEVICE", "PUBLIC KEY", "ENDPOINT", "LAST HANDSHAKE", "RX BYTES", "TX BYTES"
    );
    for ((dev, key, ep), f) in peers {
        let hs = f
            .handshake_age
            .map_or("never".to_string(), |a| format!("{}s ago", a as u64));
        let _ = writeln!(
            out,
            "{:<14} {:<45} {:<28} {:>16} {:>14} {:>14}",
            printable(dev),
            printable(key),
            printable(ep),
            hs,
            f.rx_bytes,
            f.tx_bytes
        );
    }
}

/// Which way super-packets leave, from the `overlayd_offload_enabled` gauges.
pub fn transmit_path(page: &str) -> &'static str {
    let on = |k: &str| {
        let key = format!("overlayd_offload_enabled{{offload=\"{k}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .is_some_and(|v| v.trim() == "1")
    };
    match (on("tunnel_gso"), on("tunnel_gso_ipv6")) {
        (true, false) => return "tunnel GSO (the kernel segments whole super-packets)",
        (true, true) => {
            return "tunnel GSO (the kernel segments whole super-packets; IPv4 and IPv6 outer headers)"
        }
        (false, true) => {
            return "tunnel GSO (the kernel segments whole super-packets; IPv6 outer headers)"
        }
        (false, false) => {}
    }
    if on("udp_gso") {
        "UDP GSO (segmented in userspace, sent in GSO runs)"
    } else {
        "plain (one datagram per packet)"
    }
}

/// How many data-plane workers run and how packets are spread over them, from the
/// `overlayd_workers` gauge; `None` when the page has none (no data plane yet).
pub fn workers_line(page: &str) -> Option<String> {
    let (_, labels, n) = page
        .lines()
        .filter_map(sample)
        .find(|(name, _, _)| *name == "overlayd_workers")?;
    let how = match label(labels, "steer")?.as_str() {
        "cpu" => "by CPU, each worker pinned (--steer cpu)",
        _ => "by flow (--steer flow)",
    };
    Some(format!(
        "data plane: {} worker(s), packets steered {how}",
        n as u64
    ))
}

/// How many peers the kernel routes directly (`Backend.DirectRouting`), from the
/// `overlayd_direct_routes` gauge; `None` when the page has none (the option is off).
pub fn direct_line(page: &str) -> Option<String> {
    let n: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("overlayd_direct_routes "))?
        .trim()
        .parse()
        .ok()?;
    Some(format!(
        "direct routing: {} peer subnet(s) on this host's link routed by the kernel, not tunnelled (ip route show proto 111)",
        n as u64
    ))
}

async fn scrape(addr: SocketAddr) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: overlayd\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()
        .flatten()
}

/// `s` with every control character (C0, DEL, C1: ESC, CR, newline, ...) written as an
/// escape (`\x1b`, `\u{9b}`), so that text from etcd prints as what it is.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            c if !c.is_control() => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    out
}

fn human_ttl(secs: i64) -> String {
    match secs {
        s if s < 0 => "reserved".into(),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Renders the status table (the whole output of `overlayd status`).
pub async fn run(args: StatusArgs) -> Result<String, String> {
    let opts = args.etcd.options();
    // Each call below fails over between the endpoints within bounded time; an error is
    // returned only when no member could answer.
    let reg = Registry::connect(&opts).await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    let config = reg.get_config().await.map_err(|e| e.to_string())?;
    let _ = writeln!(
        out,
        "{}",
        config_line(config.as_deref(), &args.etcd.etcd_prefix)
    );
    let (leases, _) = reg.list().await.map_err(|e| e.to_string())?;
    let page = scrape(args.metrics_addr).await;
    let traffic = match &page {
        Some(page) => {
            let _ = writeln!(out, "transmit path: {}", transmit_path(page));
            for line in [workers_line(page), direct_line(page)]
                .into_iter()
                .flatten()
            {
                let _ = writeln!(out, "{line}");
            }
            Some(parse_peer_metrics(page))
        }
        None => {
            let _ = writeln!(
                out,
                "(no metrics at {}: traffic columns empty; start overlayd with --metrics-addr)",
                args.metrics_addr
            );
            None
        }
    };
    let _ = writeln!(
        out,
        "{:<18} {:<16} {:<7} {:<18} {:>9} {:>12} {:>14} {:>12} {:>14}",
        "SUBNET",
        "PUBLIC IP",
        "BACKEND",
        "VTEP MAC",
        "EXPIRES",
        "TX PACKETS",
        "TX BYTES",
        "RX PACKETS",
        "RX BYTES"
    );
    for l in &leases {
        let ttl = if l.lease_id == 0 {
            -1
        } else {
            reg.lease_ttl(l.lease_id).await.unwrap_or(0)
        };
        let t = traffic.as_ref().and_then(|t| t.get(&l.subnet.to_string()));
        lease_rows(&mut out, l, ttl, t);
    }
    let wg = page
        .as_deref()
        .map(parse_wireguard_peers)
        .unwrap_or_default();
    if !wg.is_empty() {
        wireguard_section(&mut out, &wg);
    }
    l2_section(&reg, &mut out).await;
    Ok(out)
}

/// The first line: the network config in etcd (raw, as read), or why there is none.
fn config_line(raw: Option<&[u8]>, prefix: &str) -> String {
    let Some(raw) = raw else {
        return format!("network config: none at {prefix}/config");
    };
    let c = match NetworkConfig::parse(raw) {
        Ok(c) => c,
        Err(e) => return format!("network config: INVALID: {}", printable(&e.to_string())),
    };
    let v4 = if c.enable_ipv4 {
        format!("network {}  SubnetLen {}", c.network, c.subnet_len)
    } else {
        "IPv4 disabled".to_owned()
    };
    let v6 = c
        .ipv6
        .as_ref()
        .map(|v6| {
            format!(
                "  IPv6Network {}  IPv6SubnetLen {}",
                v6.network, v6.subnet_len
            )
        })
        .unwrap_or_default();
    format!(
        "{v4}{v6}  backend {} (VNI/key {}, port {})",
        c.backend.kind, c.backend.vni, c.backend.port
    )
}

/// The `VtepMAC` of a lease's backend data, escaped for the terminal, or "-".
fn vtep_mac(data: Option<&serde_json::Value>) -> String {
    data.and_then(|v| v.get("VtepMAC"))
        .and_then(|v| v.as_str())
        .map_or_else(|| "-".to_string(), printable)
}

/// A lease's row (and its IPv6 row, on a dual-stack lease), with its traffic counters
/// `t` (tx packets, tx bytes, rx packets, rx bytes) when the metrics had them.
fn lease_rows(out: &mut String, l: &RemoteLease, ttl: i64, t: Option<&[u64; 4]>) {
    let col = |i: usize| t.map(|v| v[i].to_string()).unwrap_or_else(|| "-".into());
    let mac = vtep_mac(l.attrs.backend_data.as_ref());
    let mac6 = vtep_mac(l.attrs.backend_v6_data.as_ref());
    let ip6 = l
        .attrs
        .public_ipv6
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    let bt = printable(l.attrs.backend_type.as_deref().unwrap_or("udp"));
    let (subnet, public, mac) = match l.ipv6_subnet {
        // An IPv6-only lease: its IPv6 half in the main columns.
        Some(sn6) if !l.has_ipv4() => (sn6.to_string(), ip6.clone(), mac6.clone()),
        _ => (l.subnet.to_string(), l.attrs.public_ip.to_string(), mac),
    };
    let _ = writeln!(
        out,
        "{:<18} {:<16} {:<7} {:<18} {:>9} {:>12} {:>14} {:>12} {:>14}",
        subnet,
        public,
        bt,
        mac,
        human_ttl(ttl),
        col(0),
        col(1),
        col(2),
        col(3)
    );
    if let (Some(sn6), true) = (l.ipv6_subnet, l.has_ipv4()) {
        let _ = writeln!(
            out,
            "{:<18} {:<16} {:<7} {:<18}",
            format!("+{sn6}"),
            ip6,
            bt,
            mac6
        );
    }
}

/// The L2 networks defined in etcd and their members (omitted when there are none).
async fn l2_section(reg: &Registry, out: &mut String) {
    use crate::l2::config::L2NetworkConfig;
    use crate::l2::control::{members_root, parse_member_key};
    let prefix = reg.prefix().to_string();
    let nets_prefix = format!("{prefix}/l2/networks/");
    let pool = reg.pool();
    let get = |key: String| {
        let pool = pool.clone();
        async move {
            pool.call("list L2", |mut c| {
                let key = key.clone();
                async move {
                    c.get(key, Some(etcd_client::GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await
        }
    };
    let (Ok(nets), Ok(members)) = (
        get(nets_prefix.clone()).await,
        get(members_root(&prefix)).await,
    ) else {
        let _ = writeln!(out, "L2 networks: cannot read them from etcd");
        return;
    };
    if nets.kvs().is_empty() {
        return;
    }
    let mut by_net: HashMap<String, Vec<String>> = HashMap::new();
    for kv in members.kvs() {
        if let Some((name, ip)) = parse_member_key(&prefix, &String::from_utf8_lossy(kv.key())) {
            by_net.entry(name).or_default().push(ip.to_string());
        }
    }
    let _ = writeln!(
        out,
        "\n{:<24} {:<6} {:>9}  MEMBERS",
        "L2 NETWORK", "BACKEND", "VNI"
    );
    for kv in nets.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let name = printable(key.strip_prefix(&nets_prefix).unwrap_or(&key));
        let mut m = by_net.remove(&name).unwrap_or_default();
        m.sort();
        match L2NetworkConfig::parse(kv.value()) {
            Ok(c) => {
                let _ = writeln!(
                    out,
                    "{:<24} {:<6} {:>9}  {}",
                    name,
                    c.backend.as_str(),
                    c.vni,
                    if m.is_empty() {
                        "-".into()
                    } else {
                        m.join(" ")
                    }
                );
            }
            Err(e) => {
                let _ = writeln!(out, "{name:<24} INVALID: {}", printable(&e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_line_says_what_is_in_etcd() {
        assert_eq!(
            config_line(None, "/coreos.com/network"),
            "network config: none at /coreos.com/network/config"
        );
        let dual = br#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"vxlan"}}"#;
        let line = config_line(Some(dual), "/p");
        assert!(
            line.starts_with("network 10.5.0.0/16  SubnetLen 24  IPv6Network fd00:5::/56"),
            "{line}"
        );
        assert!(
            line.ends_with("backend vxlan (VNI/key 1, port 8472)"),
            "{line}"
        );
        let bad = config_line(Some(b"{\"Network\":\"\x1b[31m\"}"), "/p");
        assert!(bad.starts_with("network config: INVALID: "), "{bad}");
        assert!(
            !bad.contains('\x1b'),
            "terminal escapes from etcd are escaped: {bad}"
        );
    }

    #[test]
    fn transmit_path_from_the_gauges() {
        let page = "overlayd_offload_enabled{offload=\"tunnel_gso\"} 1\noverlayd_offload_enabled{offload=\"udp_gso\"} 1\n";
        assert!(transmit_path(page).starts_with("tunnel GSO"));
        let page = "overlayd_offload_enabled{offload=\"tunnel_gso\"} 0\noverlayd_offload_enabled{offload=\"udp_gso\"} 1\n";
        assert!(transmit_path(page).starts_with("UDP GSO"));
        assert!(transmit_path("").starts_with("plain"));
        let page = "overlayd_offload_enabled{offload=\"tunnel_gso\"} 0\noverlayd_offload_enabled{offload=\"tunnel_gso_ipv6\"} 1\n";
        assert!(
            transmit_path(page).ends_with("IPv6 outer headers)"),
            "an IPv6-only node"
        );
    }

    #[test]
    fn workers_line_names_the_steering() {
        let page = "overlayd_workers{steer=\"cpu\"} 2\n";
        assert_eq!(
            workers_line(page).as_deref(),
            Some(
                "data plane: 2 worker(s), packets steered by CPU, each worker pinned (--steer cpu)"
            )
        );
        let page = "overlayd_peers 1\noverlayd_workers{steer=\"flow\"} 1\n";
        assert!(workers_line(page)
            .unwrap()
            .ends_with("by flow (--steer flow)"));
        assert_eq!(workers_line("overlayd_peers 1\n"), None);
    }

    #[test]
    fn direct_line_counts_the_kernel_routed_peers() {
        let page = "overlayd_peers 3\noverlayd_direct_routes 2\n";
        assert!(direct_line(page)
            .unwrap()
            .starts_with("direct routing: 2 peer subnet(s)"));
        assert_eq!(direct_line("overlayd_peers 3\n"), None);
    }

    #[test]
    fn peer_metrics_are_parsed() {
        let page = "# TYPE overlayd_peer_packets_total counter\n\
overlayd_peer_packets_total{peer=\"10.244.2.0/24\",public_ip=\"192.168.77.2\",direction=\"tx\"} 10\n\
overlayd_peer_packets_total{peer=\"10.244.2.0/24\",public_ip=\"192.168.77.2\",direction=\"rx\"} 7\n\
overlayd_peer_bytes_total{peer=\"10.244.2.0/24\",public_ip=\"192.168.77.2\",direction=\"tx\"} 1500\n\
overlayd_peer_bytes_total{peer=\"10.244.2.0/24\",public_ip=\"192.168.77.2\",direction=\"rx\"} 700\n\
overlayd_drops_total{reason=\"no_route\"} 3\n";
        let t = parse_peer_metrics(page);
        assert_eq!(t["10.244.2.0/24"], [10, 1500, 7, 700]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn wireguard_peers_are_parsed_and_shown() {
        let l = "device=\"flannel-wg-v6\",peer=\"AAAA=\",endpoint=\"[fd00:77::2]:51821\"";
        let page = format!(
            "overlayd_wireguard_peer_last_handshake_seconds{{{l}}} 12.5\n\
overlayd_wireguard_peer_bytes_total{{{l},direction=\"tx\"}} 300\n\
overlayd_wireguard_peer_bytes_total{{{l},direction=\"rx\"}} 200\n\
overlayd_wireguard_peer_bytes_total{{device=\"flannel-wg\",peer=\"BBBB=\",endpoint=\"10.0.0.3:51820\",direction=\"rx\"}} 0\n\
overlayd_wireguard_dropped_total{{device=\"flannel-wg\",reason=\"bad_mac\"}} 1\n"
        );
        let p = parse_wireguard_peers(&page);
        assert_eq!(p.len(), 2);
        let k = |d: &str, k: &str, e: &str| (d.to_string(), k.to_string(), e.to_string());
        let v6 = &p[&k("flannel-wg-v6", "AAAA=", "[fd00:77::2]:51821")];
        let want = WgPeerFigures {
            handshake_age: Some(12.5),
            rx_bytes: 200,
            tx_bytes: 300,
        };
        assert_eq!(v6, &want);
        assert_eq!(
            p[&k("flannel-wg", "BBBB=", "10.0.0.3:51820")].handshake_age,
            None
        );
        let mut out = String::new();
        wireguard_section(&mut out, &p);
        assert!(out.contains("12s ago") && out.contains("never"), "{out}");
    }

    #[test]
    fn etcd_text_is_escaped() {
        assert_eq!(printable("10.244.1.0-24"), "10.244.1.0-24");
        assert_eq!(
            printable("a\x1b[2J\x1b]0;pwned\x07b\r\n\u{7f}\u{9b}31m"),
            "a\\x1b[2J\\x1b]0;pwned\\x07b\\x0d\\x0a\\x7f\\u{9b}31m"
        );
        assert_eq!(printable("né ü"), "né ü", "printable non-ASCII stays");
    }

    #[test]
    fn ttl_is_human() {
        assert_eq!(human_ttl(86399), "23h59m");
        assert_eq!(human_ttl(-1), "reserved");
    }
}
