//! Go compatibility: flanneld is a Go program, and what it reads and writes follows Go's
//! standard library. [`json`] reproduces `encoding/json`'s decoding and encoding quirks for
//! flannel's JSON; [`flags`] turns Go `flag` package command lines into overlayd's. Pure.

pub mod flags;
pub(crate) mod json;
