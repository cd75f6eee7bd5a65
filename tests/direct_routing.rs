//! flannel's `DirectRouting` (`Backend.DirectRouting`): a peer on a link of this host is
//! reached by a kernel route (`<subnet> via <its PublicIP>`, protocol 111), not through the
//! tunnel; a peer behind a router still goes through the tunnel. The routes follow the
//! leases, come back when deleted, go at stop, and a restart removes what a crash left.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;

const READY: Duration = Duration::from_secs(30);
const CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","DirectRouting":true}}"#;
/// h3's PublicIP: off the hosts' link, reached through h3's link address (a routed peer).
const ROUTED_IP: &str = "10.99.0.3";

/// The direct routes in `ns`, one `ip route` line each.
fn direct_routes(ns: &Netns) -> Vec<String> {
    ns.ip("route show proto 111")
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn has_direct(ns: &Netns, subnet: &str, via: Ipv4Addr) -> bool {
    direct_routes(ns)
        .iter()
        .any(|l| l.starts_with(&format!("{subnet} via {via} dev eth0")))
}

/// Pings `to` from `from`'s overlay address `src`, so that the reply too is routed to an
/// overlay subnet (as between containers).
fn ping_from(ns: &Netns, src: impl Into<IpAddr>, to: impl Into<IpAddr>) -> bool {
    let (src, to) = (src.into(), to.into());
    ns.try_run(&[
        "ping",
        "-q",
        "-n",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        &src.to_string(),
        &to.to_string(),
    ])
    .is_ok()
}

/// h1's packets sent through the tunnel to the peer owning `subnet`.
fn tunnel_tx(d: &Overlayd, subnet: &str) -> f64 {
    d.metric(
        "overlayd_peer_packets_total",
        &[&format!("peer=\"{subnet}\""), "direction=\"tx\""],
    )
}

/// A vxlan daemon with metrics, on the underlay interface (or address) `iface`.
fn daemon(ns: &Netns, etcd: &Etcd, iface: &str) -> Overlayd {
    let mut args = overlayd_args("vxlan", etcd);
    let i = args.iter().position(|a| a == "--iface").expect("--iface");
    args[i + 1] = iface.to_owned();
    args.extend(["--metrics-addr", "127.0.0.1:9108"].map(String::from));
    Overlayd::spawn(ns, args)
}

#[test]
fn netns_direct_routing_for_peers_on_the_link() {
    if skip_unless_root("netns_direct_routing_for_peers_on_the_link") {
        return;
    }
    let mut topo = Topology::new(3);
    let etcd = topo.start_etcd();
    etcd.put(&format!("{ETCD_PREFIX}/config"), CONFIG);
    let (h1, h2, h3) = (topo.host(0), topo.host(1), topo.host(2));
    // h3 publishes an address that h1 and h2 reach through a gateway (h3's link address).
    h3.ip(&format!("addr add {ROUTED_IP}/32 dev eth0"));
    for h in [h1, h2] {
        h.ip(&format!("route add {ROUTED_IP}/32 via {}", host_ip(2)));
    }
    let mut d1 = daemon(h1, &etcd, "eth0");
    let mut d2 = daemon(h2, &etcd, "eth0");
    let mut d3 = daemon(h3, &etcd, ROUTED_IP);
    let (s1, s2, s3) = (
        d1.wait_ready(READY),
        d2.wait_ready(READY),
        d3.wait_ready(READY),
    );
    let (n1, n2, n3) = (subnet_of(&s1), subnet_of(&s2), subnet_of(&s3));
    let (a1, a2, a3) = (overlay_ip_of(&s1), overlay_ip_of(&s2), overlay_ip_of(&s3));

    // h2 is on h1's link: a direct route; h3 is behind a gateway: the tunnel.
    assert!(
        wait_until(Duration::from_secs(10), || has_direct(
            h1,
            &n2.to_string(),
            host_ip(1)
        )),
        "h1: a direct route to h2's subnet: {:?}",
        direct_routes(h1)
    );
    assert_eq!(direct_routes(h1).len(), 1, "{:?}", direct_routes(h1));
    assert!(wait_until(Duration::from_secs(10), || has_direct(
        h2,
        &n1.to_string(),
        host_ip(0)
    )));
    // h3 sees h1 and h2 on its link (flannel's test is the route to the peer).
    assert!(wait_until(Duration::from_secs(10), || direct_routes(h3)
        .len()
        == 2));
    // The gauge is set once the sync that added the route ends.
    let gauge = |d: &Overlayd, n: f64| {
        wait_until(Duration::from_secs(5), || {
            d.metric("overlayd_direct_routes", &[]) == n
        })
    };
    assert!(gauge(&d1, 1.0), "one direct route counted");
    let status = h1.run(&[
        env!("CARGO_BIN_EXE_overlayd"),
        "status",
        "--etcd-endpoints",
        &etcd.endpoint(),
    ]);
    assert!(
        status.contains("direct routing: 1 peer subnet(s)"),
        "overlayd status names the direct routes:\n{status}"
    );

    // Between h1 and h2 nothing goes through the tunnel, both ways; to h3 everything does.
    let (tx2, tx3) = (
        tunnel_tx(&d1, &n2.to_string()),
        tunnel_tx(&d1, &n3.to_string()),
    );
    assert!(ping_from(h1, a1, a2), "h1 -> h2, overlay addresses");
    let (sent, received) = tcp_transfer(h1, h2, a2, 0, 4_000_000);
    assert_eq!(sent, received, "4 MB byte-identical over the direct route");
    assert!(ping_from(h1, a1, a3), "h1 -> h3 through the tunnel");
    assert_eq!(
        tunnel_tx(&d1, &n2.to_string()),
        tx2,
        "nothing to h2 tunnelled"
    );
    assert!(
        tunnel_tx(&d1, &n3.to_string()) >= tx3 + 3.0,
        "h3's pings tunnelled"
    );

    // Deleted by hand: back at the next check.
    h1.ip(&format!("route del {n2} via {} proto 111", host_ip(1)));
    assert!(
        wait_until(Duration::from_secs(6), || has_direct(
            h1,
            &n2.to_string(),
            host_ip(1)
        )),
        "the deleted direct route comes back"
    );

    // h2 leaves (stopped, its lease deleted): its route goes; h2's own went at its stop.
    assert!(d2
        .terminate(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    assert!(direct_routes(h2).is_empty(), "h2's stop removed its routes");
    etcd.del(&lease_key(ETCD_PREFIX, n2));
    assert!(
        wait_until(Duration::from_secs(10), || direct_routes(h1).is_empty()),
        "h2's lease gone: its route too: {:?}",
        direct_routes(h1)
    );

    // A crash leaves routes; the next start removes those in the network, and only those.
    d1.kill();
    let stale = "10.244.250.0/24";
    let foreign = "10.50.0.0/24";
    for r in [stale, foreign] {
        h1.ip(&format!("route add {r} via {} proto 111", host_ip(3)));
    }
    d1.restart();
    d1.wait_ready(READY);
    assert!(
        wait_until(Duration::from_secs(5), || !direct_routes(h1)
            .iter()
            .any(|l| l.starts_with(stale))),
        "the stale route in the network is removed: {:?}",
        direct_routes(h1)
    );
    assert!(
        direct_routes(h1).iter().any(|l| l.starts_with(foreign)),
        "a route outside the network is not ours: {:?}",
        direct_routes(h1)
    );
    assert!(gauge(&d1, 0.0), "nor counted");
    assert!(ping_from(h1, a1, a3), "h1 -> h3 after the restart");
}

/// Dual stack: each peer's IPv6 subnet gets its own direct route through its PublicIPv6;
/// IPv6 between the two nodes then never enters the tunnel either.
#[test]
fn netns_direct_routing_dual_stack() {
    if skip_unless_root("netns_direct_routing_dual_stack") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let mut config: serde_json::Value = serde_json::from_str(&dual_stack_config(
        OVERLAY_NETWORK,
        OVERLAY_NETWORK6,
        "vxlan",
    ))
    .unwrap();
    config["Backend"]["DirectRouting"] = true.into();
    etcd.put(&format!("{ETCD_PREFIX}/config"), &config.to_string());
    let (h1, h2) = (topo.host(0), topo.host(1));
    for (i, h) in [h1, h2].into_iter().enumerate() {
        add_underlay_ipv6(h, i);
    }
    let mut d1 = daemon(h1, &etcd, "eth0");
    let mut d2 = daemon(h2, &etcd, "eth0");
    d1.wait_ready(READY);
    let n2 = subnet_of(&d2.wait_ready(READY));
    let sn6 = |d: &Overlayd| ipv6_subnet_in(d.subnet_file()).expect("an IPv6 subnet");
    let (v6_1, v6_2) = (sn6(&d1), sn6(&d2));
    let routes6 = |ns: &Netns| ns.ip("-6 route show proto 111");
    assert!(
        wait_until(Duration::from_secs(10), || routes6(h1)
            .contains(&format!("{v6_2} via {} dev eth0", host_ip6(1)))),
        "h1: h2's IPv6 subnet via its PublicIPv6: {}",
        routes6(h1)
    );
    assert!(has_direct(h1, &n2.to_string(), host_ip(1)));
    assert!(
        wait_until(Duration::from_secs(5), || d1
            .metric("overlayd_direct_routes", &[])
            == 2.0),
        "both families' routes counted"
    );
    let tx6 = |d: &Overlayd| {
        d.metric(
            "overlayd_peer_packets_total",
            &[&format!("peer=\"{v6_2}\""), "direction=\"tx\""],
        )
    };
    let before = tx6(&d1);
    // Retried: the first packets wait on neighbour discovery of h2's fresh underlay address,
    // whose first solicitation the switch may drop (seen: ~1 s, once over 1.4 s).
    assert!(
        wait_until(Duration::from_secs(5), || ping_from(
            h1,
            v6_1.network(),
            v6_2.network()
        )),
        "IPv6 between overlay addresses"
    );
    let (sent, received) = tcp_transfer(h1, h2, v6_2.network(), 0, 2_000_000);
    assert_eq!(sent, received, "2 MB over IPv6, byte-identical");
    assert_eq!(tx6(&d1), before, "no IPv6 packet to h2 tunnelled");
    assert!(d1
        .terminate(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    assert!(
        direct_routes(h1).is_empty() && routes6(h1).trim().is_empty(),
        "both families' routes removed at stop"
    );
}
