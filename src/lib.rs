//! overlayd: a per-host overlay network daemon, flannel-compatible, in userspace.
//!
//! Layers, bottom up (see `docs/architecture.md`):
//! - [`wire`]: header views (pure);
//! - [`drop`]: the drop-reason vocabulary;
//! - [`encap`]: the udp/vxlan/gre backends, inner packet ↔ underlay payload (pure);

#![deny(unsafe_op_in_unsafe_fn)]

pub mod drop;
pub mod encap;
pub mod wire;
