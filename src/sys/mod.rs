//! The system layer: the only place with `unsafe`. TUN/TAP ioctls, socket options and
//! control messages, namespaces. Everything above it is safe Rust.

pub mod socket;
pub mod tun;
