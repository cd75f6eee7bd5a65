//! The `vxlan` backend: RFC 7348, interoperable with the kernel's VXLAN device as flanneld
//! configures it (`flannel.<VNI>`, UDP port 8472, a VtepMAC per node in the lease), and
//! the VXLAN of the L2 networks (the kernel's L2 `vxlan` device, port 4789 by default).
//!
//! Routed: the UDP payload is the VXLAN header and an Ethernet frame from our VtepMAC to
//! the peer's, carrying the IP packet. L2: the VXLAN header and the tenant's own frame.
//! The source port carries the inner flow's hash, as the kernel's VXLAN does, which is why
//! a pool of sockets bound to ephemeral ports sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::{Decapsulated, SocketError, Sockets, SOCKET_BUFFER};
use crate::control::lease::{LeaseAttrs, VxlanData};
use crate::drop::DropReason;
use crate::sys::socket::UnderlaySocket;
use crate::wire::{arp, ether, ip, vxlan};

/// Sockets in the send pool, each on its own ephemeral port: a flow's hash picks one, so
/// the outer source port spreads flows over a NIC's receive queues and ECMP paths.
pub const SEND_SOCKETS: usize = 8;

/// The routed overlay device, as flannel names it.
pub fn device_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// A VTEP MAC that is stable for a (public IP, VNI): a restart keeps it, so peers' static
/// neighbour entries stay right (flanneld picks a random one per start). Locally
/// administered, unicast.
pub fn stable_vtep_mac(public_ip: Ipv4Addr, vni: u32) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in public_ip.octets().into_iter().chain(vni.to_be_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// [`stable_vtep_mac`] for the IPv6 side: the MAC published in `BackendV6Data`, derived
/// from `PublicIPv6` and the VNI. flannel's `flannel-v6.<VNI>` device has a MAC of its own,
/// distinct from `flannel.<VNI>`'s; this one differs from the IPv4 one as well.
pub fn stable_vtep_mac_v6(public_ipv6: Ipv6Addr, vni: u32) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in public_ipv6.octets().into_iter().chain(vni.to_be_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// Writes the VXLAN header and the inner Ethernet header (`peer_mac` ← `local_mac`,
/// `ethertype`) into the first 22 bytes of `pkt`.
pub fn encapsulate(
    pkt: &mut [u8],
    vni: u32,
    local_mac: [u8; 6],
    peer_mac: [u8; 6],
    ethertype: u16,
) {
    vxlan::Repr { vni }.emit(pkt);
    ether::emit(
        &mut pkt[vxlan::HEADER_LEN..],
        peer_mac,
        local_mac,
        ethertype,
    );
}

/// Checks a routed VXLAN payload: our VNI, then an IP frame addressed to `local_mac` whose
/// EtherType matches its IP version, or an ARP frame (a plain kernel VXLAN peer resolving
/// us; it may be broadcast).
pub fn decapsulate(
    payload: &[u8],
    vni: u32,
    local_mac: [u8; 6],
) -> Result<Decapsulated<'_>, DropReason> {
    let v = vxlan::Packet::new_checked(payload)?;
    if vxlan::Repr::parse(&v)?.vni != vni {
        return Err(DropReason::WrongVni);
    }
    let frame_bytes = &payload[vxlan::HEADER_LEN..];
    let frame = ether::Frame::new_checked(frame_bytes)?;
    match frame.ethertype() {
        ether::ETHERTYPE_ARP => {
            if frame_bytes.len() < arp::FRAME_LEN {
                return Err(DropReason::Truncated);
            }
            Ok(Decapsulated::Arp(frame_bytes))
        }
        et @ (ether::ETHERTYPE_IPV4 | ether::ETHERTYPE_IPV6) => {
            if frame.dst_addr().0 != local_mac {
                return Err(DropReason::BadInner);
            }
            let inner = ip::inner_packet(&frame_bytes[ether::HEADER_LEN..])?;
            if inner.ethertype() != et {
                return Err(DropReason::BadInner);
            }
            Ok(Decapsulated::Ip(inner.packet()))
        }
        _ => Err(DropReason::BadInner),
    }
}

/// Writes an L2 network's VXLAN header into `hdr[..8]`.
pub fn emit_l2(vni: u32, hdr: &mut [u8]) {
    vxlan::Repr { vni }.emit(hdr);
}

/// Checks an L2 VXLAN payload: returns its VNI and the tenant frame after the header.
pub fn decapsulate_l2(payload: &[u8]) -> Result<(u32, &[u8]), DropReason> {
    let v = vxlan::Packet::new_checked(payload)?;
    let vni = vxlan::Repr::parse(&v)?.vni;
    Ok((vni, &payload[vxlan::HEADER_LEN..]))
}

/// Our lease's attributes: `BackendType` vxlan and `BackendData` {VNI, VtepMAC}.
pub fn lease_attrs(public_ip: Ipv4Addr, vni: u32, vtep_mac: [u8; 6]) -> LeaseAttrs {
    LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: Some("vxlan".into()),
        backend_data: Some(VxlanData { vni, vtep_mac }.to_value()),
        backend_v6_data: None,
    }
}

/// The VtepMAC of a vxlan peer's lease on our VNI: `Ok(None)` for another backend's lease
/// or another VNI (not ours to carry), `Err` for a vxlan lease whose `BackendData` is bad.
pub fn peer_mac(attrs: &LeaseAttrs, vni: u32) -> Result<Option<[u8; 6]>, String> {
    if attrs.backend_type.as_deref() != Some("vxlan") {
        return Ok(None);
    }
    let d = match attrs.backend_data.as_ref() {
        Some(v) => VxlanData::from_value(v).map_err(|e| e.to_string())?,
        None => return Err("no BackendData".to_string()),
    };
    Ok((d.vni == vni).then_some(d.vtep_mac))
}

/// The IPv6-side VtepMAC of a vxlan peer's lease on our VNI, from its `BackendV6Data`
/// (flannel's `flannel-v6.<VNI>` device): `Ok(None)` for another backend's lease or another
/// VNI, `Err` for a vxlan lease whose `BackendV6Data` is missing or bad (flannel skips it).
pub fn peer_mac_v6(attrs: &LeaseAttrs, vni: u32) -> Result<Option<[u8; 6]>, String> {
    if attrs.backend_type.as_deref() != Some("vxlan") {
        return Ok(None);
    }
    let d = attrs.vxlan_v6_data().map_err(|e| e.to_string())?;
    Ok((d.vni == vni).then_some(d.vtep_mac))
}

/// Where a datagram's inner IP packet starts: after the VXLAN and the inner Ethernet header.
pub const INNER_IP_AT: usize = vxlan::HEADER_LEN + ether::HEADER_LEN;

/// The send pool: [`SEND_SOCKETS`] sockets bound to ephemeral ports on `addr`.
pub fn send_pool(addr: impl Into<IpAddr>) -> Result<Vec<Arc<UnderlaySocket>>, SocketError> {
    let b = SocketAddr::new(addr.into(), 0);
    (0..SEND_SOCKETS)
        .map(|_| {
            UnderlaySocket::udp(b, SOCKET_BUFFER)
                .map(Arc::new)
                .map_err(SocketError::at(b))
        })
        .collect()
}

/// Receive sockets, one per queue, bound to the VXLAN port, and the send pool.
pub fn sockets(
    (addr, port): (IpAddr, u16),
    queues: usize,
    by: super::Steer,
) -> Result<Sockets, SocketError> {
    Ok(Sockets {
        send: send_pool(addr)?,
        recv: super::udp_sockets((addr, port), queues, None, by)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_v6_is_stable_local_unicast() {
        let ip6: Ipv6Addr = "fd00:77::1".parse().unwrap();
        let a = stable_vtep_mac_v6(ip6, 1);
        assert_eq!(a, stable_vtep_mac_v6(ip6, 1));
        assert_ne!(a, stable_vtep_mac_v6("fd00:77::2".parse().unwrap(), 1));
        assert_ne!(a, stable_vtep_mac_v6(ip6, 2));
        assert_ne!(a, stable_vtep_mac(Ipv4Addr::new(192, 168, 77, 1), 1));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered, unicast");
    }

    #[test]
    fn vtep_mac_is_stable_local_unicast() {
        let a = stable_vtep_mac(Ipv4Addr::new(192, 168, 77, 1), 1);
        assert_eq!(a, stable_vtep_mac(Ipv4Addr::new(192, 168, 77, 1), 1));
        assert_ne!(a, stable_vtep_mac(Ipv4Addr::new(192, 168, 77, 2), 1));
        assert_ne!(a, stable_vtep_mac(Ipv4Addr::new(192, 168, 77, 1), 2));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered, unicast");
    }

    #[test]
    fn peer_mac_takes_only_our_vni_and_refuses_bad_data() {
        let ip = Ipv4Addr::new(192, 168, 77, 2);
        let mac = [2, 1, 2, 3, 4, 5];
        assert_eq!(peer_mac(&lease_attrs(ip, 1, mac), 1), Ok(Some(mac)));
        assert_eq!(peer_mac(&lease_attrs(ip, 2, mac), 1), Ok(None));
        assert_eq!(
            peer_mac(&super::super::udp_tunnel::lease_attrs(ip), 1),
            Ok(None)
        );
        let mut bad = lease_attrs(ip, 1, mac);
        bad.backend_data = Some(serde_json::json!({"VNI": 1}));
        assert!(peer_mac(&bad, 1).is_err());
        bad.backend_data = None;
        assert!(peer_mac(&bad, 1).is_err());
    }
}
