//! IPv6 and dual-stack helpers: underlay IPv6 addresses for test hosts, flannel's dual-stack
//! network config, and reading the IPv6 lines of subnet.env.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv6Net;

use super::{read_subnet_env, Etcd, Host, Netns};

/// The IPv6 underlay: host `i` (0-based) gets `fd00:77::(i+1)/64` on `eth0` beside its IPv4
/// address, so `h1` is `fd00:77::1`.
pub fn host_ip6(i: usize) -> Ipv6Addr {
    assert!(i < 200, "too many hosts");
    Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, i as u16 + 1)
}

/// Gives host `i` its IPv6 underlay address ([`host_ip6`]) on `eth0`, without duplicate
/// address detection so that it is usable at once.
pub fn add_underlay_ipv6(host: &Host, i: usize) -> Ipv6Addr {
    let a = host_ip6(i);
    host.ip(&format!("-6 addr add {a}/64 dev eth0 nodad"));
    a
}

/// Adds `cidr` to `dev` in `ns` without duplicate address detection.
pub fn add_ipv6_addr(ns: &Netns, dev: &str, cidr: &str) {
    ns.ip(&format!("-6 addr add {cidr} dev {dev} nodad"));
}

/// The IPv6 overlay the dual-stack tests use.
pub const OVERLAY_NETWORK6: &str = "fd00:10::/56";

/// flannel's dual-stack net-conf (as in flannel's Documentation/configuration.md):
/// `{"Network":...,"EnableIPv6":true,"IPv6Network":...,"Backend":{"Type":...}}`.
pub fn dual_stack_config(network: &str, network6: &str, backend: &str) -> String {
    serde_json::json!({
        "Network": network,
        "SubnetLen": 24,
        "EnableIPv6": true,
        "IPv6Network": network6,
        "Backend": { "Type": backend },
    })
    .to_string()
}

/// Puts [`dual_stack_config`] at `<prefix>/config`.
pub fn put_dual_stack_config(etcd: &Etcd, prefix: &str, backend: &str) {
    etcd.put(
        &format!("{prefix}/config"),
        &dual_stack_config(super::OVERLAY_NETWORK, OVERLAY_NETWORK6, backend),
    );
}

/// `FLANNEL_IPV6_SUBNET` (`fd00:10:0:5::1/64`) → the subnet `fd00:10:0:5::/64`.
pub fn subnet6_of(flannel_ipv6_subnet: &str) -> Ipv6Net {
    flannel_ipv6_subnet
        .parse::<Ipv6Net>()
        .unwrap_or_else(|e| panic!("bad FLANNEL_IPV6_SUBNET {flannel_ipv6_subnet:?}: {e}"))
        .trunc()
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The IPv6 subnet in a subnet file, if it has one.
pub fn ipv6_subnet_in(path: &std::path::Path) -> Option<Ipv6Net> {
    read_subnet_env(path)?
        .get("FLANNEL_IPV6_SUBNET")
        .map(|s| subnet6_of(s))
}
