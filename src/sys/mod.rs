//! The system layer: the only place with `unsafe`. TUN/TAP ioctls, socket options and
//! control messages, network namespaces, file locks. Everything above it is safe Rust; every `unsafe`
//! block here carries a `// SAFETY:` line, which clippy checks
//! (`undocumented_unsafe_blocks`); the crate root denies `unsafe` everywhere else.

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cpu;
pub mod lock;
pub mod msg;
pub mod netns;
pub mod owned;
pub mod packet;
pub mod socket;
pub mod steer;
pub mod tun;
