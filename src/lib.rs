//! overlayd: a per-host overlay network daemon, flannel-compatible, in userspace.
//!
//! Layers, bottom up (see `docs/architecture.md`):
//! - [`wire`]: header views (pure);
//! - [`drop`]: the drop-reason vocabulary;
//! - [`offload`]: TSO segmentation and GRO coalescing for the TUN (pure);

#![deny(unsafe_op_in_unsafe_fn)]

pub mod drop;
pub mod offload;
pub mod wire;
