//! overlayd: a per-host overlay network daemon, flannel-compatible, in userspace.
//!
//! Layers, bottom up (see `docs/architecture.md`):
//! - [`wire`]: header views (pure);
//! - [`drop`]: the drop-reason vocabulary;
//! - [`control`]: network config, leases, subnet choice, subnet.env (pure, flannel formats);

#![deny(unsafe_op_in_unsafe_fn)]

pub mod control;
pub mod drop;
pub mod wire;
