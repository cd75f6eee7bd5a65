//! flannel's `udp` backend: the inner IP packet, unchanged, is the whole UDP payload, sent
//! from and to the same port on every node (8285 by default) on a TUN device `flannel0`.
//! Leases carry only `PublicIP` (no `BackendType`).

use std::net::{IpAddr, Ipv4Addr};

use super::{Decapsulated, SocketError, Sockets};
use crate::control::lease::LeaseAttrs;
use crate::drop::DropReason;
use crate::wire::ip;

/// The TUN device, as flannel names it.
pub const DEVICE: &str = "flannel0";

/// Checks a received payload: it must be one whole inner IP packet.
pub fn decapsulate(payload: &[u8]) -> Result<Decapsulated<'_>, DropReason> {
    Ok(Decapsulated::Ip(ip::inner_packet(payload)?.packet()))
}

/// Our lease's attributes: the public address only, as flannel's udp backend writes.
pub fn lease_attrs(public_ip: Ipv4Addr) -> LeaseAttrs {
    LeaseAttrs::udp(public_ip)
}

/// Whether a lease is a udp node's (flannel writes no `BackendType` for udp).
pub fn is_peer(attrs: &LeaseAttrs) -> bool {
    matches!(attrs.backend_type.as_deref(), None | Some("udp"))
}

/// One socket per queue, all bound to our address and the backend's port
/// (`SO_REUSEPORT`): each both receives and sends, since peers expect datagrams from the
/// port they send to.
pub fn sockets(at: (IpAddr, u16), queues: usize, by: super::Steer) -> Result<Sockets, SocketError> {
    // The payload is the inner IP packet itself.
    let recv = super::udp_sockets(at, queues, Some(0), by)?;
    Ok(Sockets {
        send: recv.clone(),
        recv,
    })
}
