//! Hand-built IPv6 packets for tests that must send one exact datagram: an inner
//! IPv6/UDP packet ([`udp6_packet`]) and the Ethernet frame around it ([`udp6_frame`]),
//! checksums right (UDP over IPv6 must carry one).

use std::net::Ipv6Addr;

/// An IPv6/UDP packet `src:sport → dst:dport` carrying `payload`, hop limit 64.
pub fn udp6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("emit IPv6/UDP packet");
    out
}

/// [`udp6_packet`] in an Ethernet frame `src_mac → dst_mac`, EtherType 0x86DD.
pub fn udp6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 48 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend(udp6_packet(src, dst, sport, dport, payload));
    f
}
