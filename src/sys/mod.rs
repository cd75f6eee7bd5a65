//! The system layer: the only place with `unsafe`. TUN/TAP ioctls, socket options and
//! control messages, network namespaces, file locks. Everything above it is safe Rust; every `unsafe`
//! block here carries a `// SAFETY:` line.

pub mod lock;
pub mod netns;
pub mod socket;
pub mod tun;
