//! The overlay route is installed only where it is overlayd's to install (issue 22): a route
//! for the Network through another device is refused and left alone, never replaced. And
//! `--ip-blackhole-route`'s route for the node's own subnet.

mod common;

use std::time::Duration;

use common::*;

const READY: Duration = Duration::from_secs(30);

/// One host and etcd for test `name`; `None` (skipped) without root.
fn one_host(name: &str) -> Option<(Topology, Etcd)> {
    if skip_unless_root(name) {
        return None;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    Some((topo, etcd))
}

/// A route for the Network via a gateway on eth0 is in place: overlayd exits non-zero naming
/// the route and eth0, and the route is untouched.
#[test]
fn a_route_through_another_device_is_refused_and_kept() {
    let Some((topo, etcd)) = one_host("a_route_through_another_device_is_refused_and_kept") else {
        return;
    };
    let h1 = topo.host(0);
    h1.ip(&format!(
        "route add {OVERLAY_NETWORK} via 192.168.77.254 dev eth0"
    ));
    let before = h1.ip(&format!("route show {OVERLAY_NETWORK}"));
    let mut d = Overlayd::spawn(h1, overlayd_args("vxlan", &etcd));
    let status = d.wait_exit(READY);
    let log = d.log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "overlayd must exit non-zero: {status:?}\n{log}"
    );
    let refusal = format!("a route for {OVERLAY_NETWORK} already goes through eth0");
    assert!(log.contains(&refusal), "{refusal:?} not in the log:\n{log}");
    assert!(log.contains("ip route del"), "the way out is named:\n{log}");
    let after = h1.ip(&format!("route show {OVERLAY_NETWORK}"));
    assert_eq!(after, before, "the foreign route is untouched");
    assert!(after.contains("via 192.168.77.254 dev eth0"), "{after}");
}

/// Without such a route overlayd starts and routes the Network through its own device.
#[test]
fn without_a_foreign_route_the_network_goes_through_the_device() {
    let Some((topo, etcd)) =
        one_host("without_a_foreign_route_the_network_goes_through_the_device")
    else {
        return;
    };
    let h1 = topo.host(0);
    let mut d = Overlayd::spawn(h1, overlayd_args("vxlan", &etcd));
    d.wait_ready(READY);
    let route = h1.ip(&format!("route show {OVERLAY_NETWORK}"));
    assert!(route.contains("dev flannel.1"), "route: {route:?}");
    assert!(
        d.terminate(Duration::from_secs(5))
            .is_some_and(|s| s.success()),
        "clean exit on SIGTERM"
    );
}

/// flanneld's `-ip-blackhole-route`: a blackhole route for the node's subnet (protocol 111,
/// metric 4000), so that its unused addresses are dropped on the node; a CNI bridge's route
/// for the same prefix still wins; deleted, it comes back; at stop it goes.
#[test]
fn netns_ip_blackhole_route() {
    let Some((topo, etcd)) = one_host("netns_ip_blackhole_route") else {
        return;
    };
    let h1 = topo.host(0);
    let mut args = overlayd_args("vxlan", &etcd);
    args.push("-ip-blackhole-route".into());
    let mut d = Overlayd::spawn(h1, args);
    let subnet = subnet_of(&d.wait_ready(READY));
    let unused = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 77);
    let shown = || h1.ip("route show type blackhole proto 111");
    assert!(
        wait_until(Duration::from_secs(5), || shown()
            .contains(&format!("blackhole {subnet} metric 4000"))),
        "the blackhole route: {}",
        shown()
    );
    let get = |ns: &Netns| {
        ns.try_ip(&format!("route get {unused}"))
            .unwrap_or_else(|e| e)
    };
    // The kernel answers a lookup that ends in a blackhole route with EINVAL.
    assert!(get(h1).contains("Invalid argument"), "{}", get(h1));

    // A CNI bridge holding the subnet: its route (metric 0) wins.
    h1.ip("link add cni0 type bridge");
    h1.ip(&format!(
        "addr add {}/{} dev cni0",
        std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1),
        subnet.prefix_len()
    ));
    h1.ip("link set cni0 up");
    assert!(get(h1).contains("dev cni0"), "{}", get(h1));
    h1.ip("link del cni0");

    h1.ip(&format!("route del blackhole {subnet} metric 4000"));
    assert!(
        wait_until(Duration::from_secs(5), || shown()
            .contains(&subnet.to_string())),
        "the deleted blackhole route comes back"
    );
    assert!(d
        .terminate(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    assert_eq!(shown().trim(), "", "removed at stop");
}
