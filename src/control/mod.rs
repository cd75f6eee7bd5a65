//! Control plane: the network config, subnet leases and subnet.env, in flannel's exact
//! formats, and the etcd client that keeps them.
//!
//! [`config`], [`lease`], [`subnet`] and [`family`] (what differs between IPv4 and IPv6,
//! so that the others are written once for both) are pure: they parse and render flannel's
//! JSON byte for byte and choose subnets, without touching etcd, clocks or the network.
//! [`subnet_env`] renders flannel's subnet.env and writes it (the CNI plugin's interface).
//! [`etcd`] is the async part on top of them: it talks to etcd (transactions, keepalive,
//! list + watch) and publishes forwarding-table snapshots, through [`pool`], which fails
//! over between the etcd members; [`follow`] is the list → watch → resume loop over a key
//! prefix that it and the L2 membership share.

pub mod config;
pub mod etcd;
pub mod family;
pub mod follow;
pub mod lease;
pub mod pool;
pub mod subnet;
pub mod subnet_env;
