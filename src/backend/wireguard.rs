//! flannel's `wireguard` backend as a backend: its device names, what it costs a packet,
//! what our lease says and how a peer's lease is read. Its protocol, devices' layout and
//! data path are `crate::wg`'s (WireGuard seals packets itself: it has no [`super::Encap`]).

use std::net::Ipv4Addr;

use crate::control::lease::{LeaseAttrs, WireguardData};

/// The IPv4 device (and the only one outside `separate` mode), as flanneld names it.
pub const DEVICE: &str = "flannel-wg";
/// The IPv6 device of `separate` mode.
pub const DEVICE_V6: &str = "flannel-wg-v6";

/// What WireGuard over IPv6 adds to a packet (flanneld subtracts it for both families):
/// outer IPv6 40 + UDP 8 + WireGuard 32.
pub const OVERHEAD: u32 = 80;

/// `BackendData` / `BackendV6Data`: `{PublicKey, Port}`.
pub fn lease_data(public_key: [u8; 32], port: u16) -> serde_json::Value {
    WireguardData { public_key, port }.to_value()
}

/// Our lease's attributes as flanneld writes them with IPv4 enabled: `PublicIP`,
/// `BackendType: "wireguard"`, `BackendData` `{PublicKey, Port: ListenPort}`.
pub fn lease_attrs(public_ip: Ipv4Addr, public_key: [u8; 32], port: u16) -> LeaseAttrs {
    LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: Some("wireguard".into()),
        backend_data: Some(lease_data(public_key, port)),
        backend_v6_data: None,
    }
}

/// A wireguard lease whose `BackendData` (`v6` false) or `BackendV6Data` (`v6` true) is
/// readable (its key and port go to `wg`'s key book); one without that half (flanneld
/// writes `BackendData` only with IPv4 enabled) is not a peer of that family.
pub fn peer(attrs: &LeaseAttrs, v6: bool) -> Result<Option<[u8; 6]>, String> {
    let data = match v6 {
        false => &attrs.backend_data,
        true => &attrs.backend_v6_data,
    };
    match (attrs.backend_type.as_deref(), data) {
        (Some("wireguard"), Some(_)) => attrs
            .wireguard_data(v6)
            .map(|_| Some([0; 6]))
            .map_err(|e| e.to_string()),
        _ => Ok(None),
    }
}
