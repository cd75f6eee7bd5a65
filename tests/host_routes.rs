//! The overlay route is installed only where it is overlayd's to install (issue 22): a route
//! for the Network through another device is refused and left alone, never replaced.

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
