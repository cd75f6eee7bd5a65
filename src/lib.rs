//! overlayd: a per-host overlay network daemon, flannel-compatible, in userspace.
//!
//! Layers, bottom up (see `docs/architecture.md`):
//! - [`wire`]: header views (pure);
//! - [`drop`]: the drop-reason vocabulary;
//! - [`sys`]: the only place with `unsafe` (syscall wrappers: network namespaces, ...);

#![deny(unsafe_op_in_unsafe_fn)]

pub mod drop;
pub mod sys;
pub mod wire;
