//! Hand-built packets for tests that must send exactly one particular frame: an Ethernet/IPv4/
//! UDP frame ([`udp_frame`]), a VXLAN datagram around it ([`vxlan_datagram`]), and
//! [`send_udp_from`] to send one from a given address inside a namespace.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::Duration;

use super::netns::Netns;

/// Builds a VXLAN datagram payload (RFC 7348: flags 0x08, VNI) around `frame`.
pub fn vxlan_datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&(vni << 8).to_be_bytes());
    d.extend_from_slice(frame);
    d
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    assert_eq!(parts.len(), 6, "bad MAC {s:?}");
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap_or_else(|e| panic!("bad MAC {s:?}: {e}"));
    }
    m
}

/// An Ethernet frame carrying IPv4/UDP `src:sport → dst:dport` with `payload` (checksums
/// right; UDP checksum 0 = none).
pub fn udp_frame(
    dst_mac: &str,
    src_mac: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&parse_mac(dst_mac));
    f.extend_from_slice(&parse_mac(src_mac));
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Sends `payload` `copies` times from `ns` as UDP `src` (bound there, e.g. a host's underlay
/// address with a port of its own) to `dst`.
pub fn send_udp_from(ns: &Netns, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>, copies: u32) {
    ns.in_ns(move || -> io::Result<()> {
        let s = std::net::UdpSocket::bind(src)?;
        for _ in 0..copies {
            s.send_to(&payload, dst)?;
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("send udp {src} -> {dst}: {e}"));
}
