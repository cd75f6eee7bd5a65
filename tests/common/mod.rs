//! End-to-end test harness: hosts are network namespaces on a bridge, plus etcd, overlayd and
//! probes. Each test binary includes it as `mod common; use common::*;`; this file only names
//! the parts and re-exports them, so a test sees one flat set of helpers.
//!
//! - `skip.rs`: [`skip`], the one way a test that cannot run here says so (banner, plus a
//!   `SKIP <test>: <reason>` line in `$OVERLAYD_SKIP_LOG`, which scripts/test.sh lists), and
//!   [`skip_unless`] / [`skip_unless_root`] on top of it.
//! - `process.rs`: unique `ovt-<pid>-<seq>-<role>` names, [`run_cmd`], [`run_with_input`]
//!   (stdin fed, bounded), [`signal`], bounded waits on child processes, log [`tail`]s,
//!   [`TempDir`], a process's threads' CPU time and wakeups ([`thread_load`]).
//! - `netns.rs`: [`Netns`] (a namespace guard: commands, `ip`, sysctls, threads inside it),
//!   [`list_netns`] / [`delete_netns`] / [`cleanup_stale`], link queries ([`wait_link`],
//!   [`link_mtu`], [`link_master`]).
//! - `topology.rs`: [`Topology`], the switch namespace with bridge `br0` and [`Host`]s `h1..hN`
//!   on it (layout drawn there), and the underlay constants.
//! - `cluster.rs`: [`Cluster`], a scenario's usual start in one line
//!   (`Cluster::builder().hosts(3).backend("vxlan").extra(1, &[..]).start()`): topology, etcd
//!   and a ready overlayd per host.
//! - `etcd.rs`: [`Etcd`] (one member in a namespace), [`etcdctl`], flannel's [`Lease`] with its
//!   key and value, the L2 network and member keys ([`Etcd::put_l2_network`], ...).
//! - `daemon.rs`: [`Overlayd`], the daemon under test (arguments, readiness through
//!   subnet.env, stop/kill/restart, log), [`overlayd_args`] / [`overlayd_l2_args`], metrics
//!   ([`Overlayd::metric`], [`scrape_metrics`], [`metric_value`]).
//! - `etcd_cluster.rs`: [`EtcdCluster`], a real three-member etcd cluster (a namespace per
//!   member, optionally with TLS and authentication: [`Security`], [`make_cluster_certs`]),
//!   its faults (kill, restart, partition, peer isolation, heal), and [`PingStream`] /
//!   [`PingCount`] (a ping left running through a fault, its losses counted).
//! - `kernel.rs`: kernel reference peers: [`KernelVxlanNode`] (a flanneld vxlan node),
//!   [`KernelL2Vxlan`] / [`KernelL2Gretap`] (L2 VTEPs on a bridge), kernel feature probes.
//! - `l2.rs`: L2 mode: constants, [`add_bridge`] in a host, [`Container`] (a namespace on
//!   that bridge by a veth: fixed MAC/IP, MTU 1450, movable to another host).
//! - `traffic.rs`: [`ping`] and its variants, [`tcp_transfer`] of [`Payload`] bytes.
//! - `alloc.rs`: [`Counting`], a global allocator that counts, for the no-allocation tests.
//! - `capture.rs`: [`Capture`], a bounded tcpdump (one line per frame).
//! - `frames.rs`: hand-built packets: [`udp_frame`], [`vxlan_datagram`], [`send_udp_from`].
//! - `frames6.rs`: the same for IPv6: [`udp6_packet`], [`udp6_frame`].
//! - `ipv6.rs`: dual-stack helpers: hosts' underlay IPv6 ([`host_ip6`],
//!   [`add_underlay_ipv6`]), flannel's dual-stack config ([`put_dual_stack_config`]), the
//!   IPv6 lines of subnet.env ([`subnet6_of`]), and [`wait_until`].
//! - `ipv6_underlay.rs`: IPv6-only underlays ([`ipv6_only_underlay`], [`ipv6_only_config`],
//!   [`wait_ready6`]) and [`KernelVxlanV6`], flanneld's `flannel-v6.<VNI>` kernel device.
//! - `cni.rs`: containers as a runtime makes them: [`cni_conf`], [`cni_add`] running the
//!   `overlay-cni` plugin into a [`Pod`] namespace, [`skip_without_cni_plugins`].
//!
//! Rules the harness keeps, so tests can run in parallel and never harm the machine:
//! - the root namespace is never changed: every `ip` command runs with `-n <ns>` or inside
//!   `ip netns exec`, and veth pairs are made from inside the switch namespace;
//! - namespace names carry the test process's pid and a sequence number; [`cleanup_stale`]
//!   removes `ovt-` namespaces whose process is gone (`scripts/cleanup-netns.sh` removes all);
//! - every guard ([`Netns`], [`Etcd`], [`Overlayd`], [`TempDir`], [`Capture`]) cleans up on
//!   drop, also while a test panics: processes are killed (every pid in a namespace, via
//!   `ip netns pids`) before the namespace is deleted;
//! - every probe is bounded in count and time.
//!
//! Tests that need root call [`skip_unless_root`] first; any other reason not to run (a kernel
//! feature, a tool missing) goes through [`skip`] too, never a bare `return`. A typical end-to-end test:
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! #[test]
//! fn udp_two_hosts() {
//!     if skip_unless_root("udp_two_hosts") { return; }
//!     let mut topo = Topology::new(2);
//!     let etcd = topo.start_etcd();                      // ns "etcd" at 192.168.77.250
//!     let (h1, h2) = (topo.host(0), topo.host(1));       // 192.168.77.1, .2
//!     let mut d1 = Overlayd::spawn(h1, overlayd_args("udp", &etcd));
//!     let mut d2 = Overlayd::spawn(h2, overlayd_args("udp", &etcd));
//!     let s1 = d1.wait_ready(Duration::from_secs(20));   // "10.244.X.1/24"
//!     let s2 = d2.wait_ready(Duration::from_secs(20));
//!     assert!(ping_until(h1, overlay_ip_of(&s2), Duration::from_secs(10)));
//!     let (sent, got) = tcp_transfer(h1, h2, overlay_ip_of(&s2), 0, 10_000_000);
//!     assert_eq!(sent, got);
//!     assert!(d1.terminate(Duration::from_secs(5)).is_some_and(|s| s.success()));
//! }   // drops: overlayd (log tail printed if panicking), etcd, namespaces
//! ```
//!
//! New helpers go into a new file here, declared below and re-exported the same way. The
//! modules are private so that their names (`etcd`, `l2`, ...) do not reach the tests' scope.
// Every test binary includes this module and uses only part of it.
#![allow(dead_code)]

mod alloc;
mod capture;
mod cluster;
mod cni;
mod daemon;
mod etcd;
mod etcd_cluster;
mod frames;
mod frames6;
mod ipv6;
mod ipv6_underlay;
mod kernel;
mod l2;
mod netns;
mod process;
mod skip;
mod topology;
mod traffic;

// One flat namespace for the tests. Not every test binary uses every part.
#[allow(unused_imports)]
pub use {
    alloc::*, capture::*, cluster::*, cni::*, daemon::*, etcd::*, etcd_cluster::*, frames::*,
    frames6::*, ipv6::*, ipv6_underlay::*, kernel::*, l2::*, netns::*, process::*, skip::*,
    topology::*, traffic::*,
};
