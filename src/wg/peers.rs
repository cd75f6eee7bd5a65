//! Which peers a wireguard device has: each current lease's key, AllowedIPs and endpoint,
//! from the forwarding table and the key book (pure: values in, `PeerSpec`s out).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use ipnet::{IpNet, Ipv4Net};

use super::engine::PeerSpec;
use crate::control::lease::WireguardData;
use crate::fib::Fib;

/// Each lease's wireguard data by subnet, as the lease decoder last read it. The forwarding
/// table says which subnets are current peers; this says their keys and ports.
pub type KeyBook = Arc<Mutex<std::collections::HashMap<Ipv4Net, WireguardData>>>;

/// The peers of forwarding table `fib`: each current lease's key, its subnet as AllowedIPs,
/// its PublicIP and port (the lease's, else `port`) as endpoint.
pub fn peer_specs(fib: &Fib, keys: &KeyBook, port: u16) -> Vec<PeerSpec> {
    let Ok(keys) = keys.lock() else {
        return Vec::new();
    };
    fib.peers()
        .iter()
        .filter_map(|p| {
            let d = keys.get(&p.subnet)?;
            let port = if d.port == 0 { port } else { d.port };
            Some(PeerSpec {
                public_key: d.public_key,
                endpoint: SocketAddr::new(IpAddr::V4(p.public_ip), port),
                allowed: vec![IpNet::V4(p.subnet)],
            })
        })
        .collect()
}
