//! System layer: the only module tree where `unsafe` is allowed.
//!
//! Every `unsafe` block here carries a `// SAFETY:` comment. Code above this layer calls safe
//! wrappers only; nothing here knows about packets, leases or backends.

pub mod netns;
