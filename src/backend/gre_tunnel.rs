//! The `gre` backend (overlayd's own; flannel has none): RFC 2784/2890 over IP protocol
//! 47, the key = the network's VNI, optional checksum and sequence numbers: the header
//! Linux's `ip link add type gre key N` writes. L2 networks use GRE protocol 0x6558
//! (Transparent Ethernet Bridging) with the NVGRE key (VSID << 8), as Linux's `gretap`.
//!
//! A raw IPv4 socket carries it, which has no GSO or GRO: gre pays the kernel's
//! per-packet path, and only one socket receives (every raw socket sees every GRE packet).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::{Decapsulated, SocketError, Sockets, SOCKET_BUFFER};
use crate::control::lease::LeaseAttrs;
use crate::drop::DropReason;
use crate::sys::socket::UnderlaySocket;
use crate::wire::{ether, gre, ip};

/// The routed overlay device.
pub fn device_name(key: u32) -> String {
    format!("ovgre.{key}")
}

/// Writes the GRE header (protocol `ethertype`, `key`, `seq` when sequencing) into `pkt`,
/// and with `checksum` the checksum over the whole packet, last.
pub fn encapsulate(
    pkt: &mut [u8],
    key: Option<u32>,
    checksum: bool,
    seq: Option<u32>,
    ethertype: u16,
) {
    gre::Repr {
        protocol: ethertype,
        checksum,
        key,
        seq,
    }
    .emit(pkt);
    if checksum {
        gre::fill_checksum(pkt);
    }
}

/// Checks a routed GRE payload (from the GRE header on): the header, our key (its presence
/// must match too), and an inner IP packet whose version matches the protocol field.
pub fn decapsulate(payload: &[u8], key: Option<u32>) -> Result<Decapsulated<'_>, DropReason> {
    let g = gre::Packet::new_checked(payload)?;
    let r = gre::Repr::parse(&g)?;
    if r.key != key {
        return Err(DropReason::WrongVni);
    }
    let inner = ip::inner_packet(&payload[g.header_len()..])?;
    if inner.ethertype() != r.protocol {
        return Err(DropReason::BadInner);
    }
    Ok(Decapsulated::Ip(inner.packet()))
}

/// Writes an L2 network's GRE header into `hdr[..8]`: protocol 0x6558, key = VSID in the
/// top 24 bits and FlowID 0 (as a Linux gretap with key VNI << 8).
pub fn emit_l2(vsid: u32, hdr: &mut [u8]) {
    gre::Repr {
        protocol: ether::ETHERTYPE_TEB,
        checksum: false,
        key: Some(vsid << 8),
        seq: None,
    }
    .emit(hdr);
}

/// Checks an L2 GRE payload: its VSID and the tenant frame after the header; `Ok(None)`
/// for GRE that is not Ethernet (the routed gre backend's, seen by the same raw socket).
pub fn decapsulate_l2(payload: &[u8]) -> Result<Option<(u32, &[u8])>, DropReason> {
    let g = gre::Packet::new_checked(payload)?;
    if g.protocol() != ether::ETHERTYPE_TEB {
        return Ok(None);
    }
    let key = gre::Repr::parse(&g)?.key.ok_or(DropReason::WrongVni)?;
    Ok(Some((key >> 8, &payload[g.header_len()..])))
}

/// Our lease's attributes: `BackendType` gre and `BackendData` {VNI}.
pub fn lease_attrs(public_ip: Ipv4Addr, key: u32) -> LeaseAttrs {
    LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: Some("gre".into()),
        backend_data: Some(serde_json::json!({ "VNI": key })),
        backend_v6_data: None,
    }
}

/// Whether a lease is a gre node's.
pub fn is_peer(attrs: &LeaseAttrs) -> bool {
    attrs.backend_type.as_deref() == Some("gre")
}

/// The raw GRE socket bound to `addr` (IPv4, or IPv6 as RFC 7676).
pub fn raw_socket(addr: impl Into<IpAddr>) -> Result<Arc<UnderlaySocket>, SocketError> {
    let addr: IpAddr = addr.into();
    UnderlaySocket::raw_gre(addr, SOCKET_BUFFER)
        .map(Arc::new)
        .map_err(|source| SocketError {
            addr: format!("{addr} (raw GRE; needs CAP_NET_RAW)"),
            source,
        })
}

/// The one raw socket, sending and receiving.
pub fn sockets(addr: IpAddr) -> Result<Sockets, SocketError> {
    let s = raw_socket(addr)?;
    Ok(Sockets {
        send: vec![s.clone()],
        recv: vec![s],
    })
}
