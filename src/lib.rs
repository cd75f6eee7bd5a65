//! overlayd: a per-host overlay network daemon, flannel-compatible, in userspace.
//!
//! Layers, bottom up (see `docs/architecture.md`):
//! - [`wire`]: zero-copy header views (pure);
//! - [`backend`]: one module per backend (udp, vxlan, gre): wire format, device name,
//!   lease data, sockets; its [`backend::Encap`] is the data path's per-packet view;
//! - [`offload`]: TSO segmentation and GRO coalescing (pure);
//! - [`fib`]: the IPv4 and IPv6 forwarding-table snapshots, one table type for both (pure);
//! - [`mod@drop`]: the drop-reason vocabulary; [`counters`]: the atomics everyone bumps and telemetry reads;
//! - [`control`]: config, leases and subnet choice (pure) and the etcd client loop (async);
//! - [`sys`]: TUN ioctls and socket options, the only `unsafe` code;
//! - [`host`]: device address, MTU and routes through rtnetlink;
//! - [`direct`]: flannel's `DirectRouting`, kernel routes to peers on a shared link;
//! - [`link_hops`]: `--gre-link-tx`'s next hops toward the gre peers, for both planes;
//! - [`gso_tap`]: the TAP through which whole UDP-tunnel super-packets go to the kernel;
//! - [`masq`]: flanneld's masquerade and FORWARD rules through iptables (rules pure, tested);
//! - [`datapath`]: the data path both data planes share (workers, send paths, receive
//!   splitting and delivery); [`l3`]: the routed data plane on it;
//! - [`l2`]: layer-2 overlays (TAP, MAC learning, VLAN↔VNI), beside the routed mode;
//! - [`wg`]: flannel's wireguard backend: the WireGuard engine over boringtun (pure), the
//!   key file, its data path thread and start-up;
//! - [`telemetry`]: metrics, health and readiness endpoints;
//! - [`systemd`]: readiness and watchdog notification (`sd-notify`);
//! - [`daemon`], [`cli`], [`go`], [`status`]: glue (flags, flanneld's Go flag syntax) and
//!   the `overlayd status` command; [`setup`]: `overlayd init-network` and `install-cni`
//!   for init containers;
//! - [`lifecycle`]: stopping on a signal in any phase, one daemon per host and device.

// `unsafe` is refused everywhere but in `sys`, which allows it and requires a `// SAFETY:`
// comment on every block (see src/sys/mod.rs).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod cli;
pub mod cni;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod datapath;
pub mod direct;
pub mod drop;
pub mod fib;
pub mod go;
pub mod gso_tap;
pub mod host;
pub mod l2;
pub mod l3;
pub mod lifecycle;
pub mod link_hops;
pub mod masq;
pub mod offload;
pub mod peers;
pub mod setup;
pub mod status;
pub mod sys;
pub mod systemd;
pub mod telemetry;
pub mod wg;
pub mod wire;
