//! overlayd: a per-host overlay network daemon, flannel-compatible, in userspace.
//!
//! Layers, bottom up (see `docs/architecture.md`):
//! - [`wire`]: zero-copy header views (pure);
//! - [`encap`]: the udp/vxlan/gre encapsulations (pure);
//! - [`offload`]: TSO segmentation and GRO coalescing (pure);
//! - [`fib`]: the forwarding-table snapshot (pure);
//! - [`mod@drop`]: the drop-reason vocabulary;
//! - [`control`]: config, leases and subnet choice (pure) and the etcd client loop (async);
//! - [`sys`]: TUN ioctls and socket options, the only `unsafe` code;
//! - [`host`]: device address, MTU and routes through rtnetlink;
//! - [`masq`]: flanneld's masquerade and FORWARD rules through iptables (rules pure, tested);
//! - [`dataplane`]: the worker threads;
//! - [`l2`]: layer-2 overlays (TAP, MAC learning, VLAN↔VNI), beside the routed mode;
//! - [`telemetry`]: metrics, health and readiness endpoints;
//! - [`systemd`]: readiness and watchdog notification (`sd-notify`);
//! - [`daemon`], [`cli`], [`goflags`], [`status`]: glue (flags, flanneld's Go flag syntax) and
//!   the `overlayd status` command; [`setup`]: `overlayd init-network` and `install-cni`
//!   for init containers.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod cli;
pub mod cni;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod drop;
pub mod encap;
pub mod fib;
pub mod goflags;
pub mod host;
pub mod l2;
pub mod masq;
pub mod offload;
pub mod setup;
pub mod status;
pub mod sys;
pub mod systemd;
pub mod telemetry;
pub mod wire;
