//! Frames captured from the Linux kernel's own VXLAN driver (see `tests/vectors/README.md`)
//! checked against overlayd's wire layer: every VXLAN payload decapsulates, and every inner
//! IP packet re-encapsulates to exactly the bytes the kernel sent. The outer header is IPv4
//! or IPv6 (flanneld's `flannel-v6.1` device on an IPv6 underlay), read through the same
//! checked views either way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use overlayd::backend::{Decapsulated, Encap};
use overlayd::wire::{arp, checksum, ether, flow, ip, ipv4, ipv6, tcp, udp, vxlan};

/// Outer Ethernet + IPv4 (no options) + UDP in front of the VXLAN header.
const OUTER_LEN: usize = 14 + 20 + 8;
/// Outer Ethernet + IPv6 (no extension headers) + UDP in front of the VXLAN header.
const OUTER6_LEN: usize = 14 + 40 + 8;
/// A classic pcap file's packets (microsecond or nanosecond, either byte order), link
/// type Ethernet.
fn read_pcap(name: &str) -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(data.len() >= 24, "pcap header");
    let magic = u32::from_le_bytes(data[..4].try_into().unwrap());
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => panic!("not a classic pcap: magic {m:#x}"),
    };
    let u32_at = |off: usize| {
        let b: [u8; 4] = data[off..off + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "link type Ethernet");
    let mut out = Vec::new();
    let mut off = 24;
    while off < data.len() {
        assert!(off + 16 <= data.len(), "record header");
        let incl = u32_at(off + 8) as usize;
        let orig = u32_at(off + 12) as usize;
        assert_eq!(incl, orig, "capture was not snapped");
        off += 16;
        out.push(data[off..off + incl].to_vec());
        off += incl;
    }
    assert_eq!(off, data.len());
    out
}

/// The underlay IP version of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outer {
    V4,
    V6,
}

impl Outer {
    /// Outer Ethernet + IP + UDP in front of the VXLAN header.
    fn len(self) -> usize {
        match self {
            Outer::V4 => OUTER_LEN,
            Outer::V6 => OUTER6_LEN,
        }
    }

    /// The per-packet underlay overhead overlayd computes for this family.
    fn overhead(self, e: &Encap) -> usize {
        match self {
            Outer::V4 => e.overhead(),
            Outer::V6 => e.overhead_v6(),
        }
    }
}

/// What the outer UDP checksum field of a captured frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UdpCsum {
    /// Zero: no checksum (allowed over IPv4 only).
    Zero,
    /// Correct over the outer IP family's pseudo-header and the whole datagram.
    Full,
    /// Only the folded pseudo-header sum: checksum offload, not finished yet when tcpdump
    /// saw the frame on the sending veth.
    PseudoOnly,
    /// Neither: with offload on, the kernel computes the outer checksum as it will be once
    /// the inner (partial) one is filled in (local checksum offload).
    Other,
}

/// What one captured VXLAN frame holds.
struct Captured<'a> {
    /// The sending host (outer source address).
    src: IpAddr,
    udp_src_port: u16,
    udp_dst_port: u16,
    udp_csum: UdpCsum,
    /// The UDP payload: VXLAN header onwards.
    udp_payload: &'a [u8],
}

/// Whether the transport checksum of `l4` verifies over the pseudo-header of the IP packet
/// `pkt` (whose fixed header has been checked), with the crate's checksum helpers.
fn l4_checksum_ok(pkt: &[u8], version: ip::Version, proto: u8, l4: &[u8]) -> bool {
    let pseudo = ip::pseudo_header_sum(pkt, version, proto, l4.len());
    checksum::fold(checksum::add(pseudo, l4)) == 0xffff
}

/// Checks the outer headers of a captured frame (Ethernet, IP of family `family` with no
/// options or extension headers, UDP whose length agrees with the IP header) through the
/// crate's checked views, and returns its UDP payload and what its checksum holds.
fn outer(frame: &[u8], family: Outer) -> Captured<'_> {
    let eth = ether::Frame::new_checked(frame).unwrap();
    let l3 = &frame[ether::HEADER_LEN..];
    // The IP packet (header and UDP datagram), its version, its source and its header length.
    let (ip_pkt, version, src, ip_hlen) = match family {
        Outer::V4 => {
            assert_eq!(eth.ethertype(), ether::ETHERTYPE_IPV4);
            let ip = ipv4::Packet::new_checked(l3).unwrap();
            assert_eq!(ip.header_len(), ipv4::HEADER_LEN);
            assert_eq!(ip.protocol(), ip::PROTO_UDP);
            assert!(ip.verify_checksum(), "outer IPv4 checksum");
            let n = usize::from(ip.total_len());
            let src = IpAddr::V4(ip.src_addr());
            (&l3[..n], ip::Version::Ipv4, src, ipv4::HEADER_LEN)
        }
        Outer::V6 => {
            assert_eq!(eth.ethertype(), ether::ETHERTYPE_IPV6);
            let ip = ipv6::Packet::new_checked(l3).unwrap();
            assert_eq!(ip.next_header(), ip::PROTO_UDP, "no extension headers");
            let src = IpAddr::V6(ip.src_addr());
            let n = ip.total_len();
            (&l3[..n], ip::Version::Ipv6, src, ipv6::HEADER_LEN)
        }
    };
    assert_eq!(ip_pkt.len(), l3.len(), "no link padding");
    let udp = &ip_pkt[ip_hlen..];
    let dgram = udp::Packet::new_checked(udp).unwrap();
    let udp_len = usize::from(dgram.length());
    assert_eq!(udp_len, udp.len());
    assert_eq!(frame.len(), family.len() + udp_len - udp::HEADER_LEN);
    let pseudo = ip::pseudo_header_sum(ip_pkt, version, ip::PROTO_UDP, udp_len);
    let udp_csum = if dgram.checksum() == 0 {
        UdpCsum::Zero
    } else if l4_checksum_ok(ip_pkt, version, ip::PROTO_UDP, udp) {
        UdpCsum::Full
    } else if dgram.checksum() == checksum::fold(pseudo) {
        UdpCsum::PseudoOnly
    } else {
        UdpCsum::Other
    };
    // RFC 8200 §8.1: a UDP checksum over IPv6 is mandatory (the kernel's vxlan device
    // sends zero only with `udp6zerocsumtx`, which flanneld does not set).
    assert!(
        !(family == Outer::V6 && udp_csum == UdpCsum::Zero),
        "zero UDP checksum over IPv6"
    );
    Captured {
        src,
        udp_src_port: dgram.src_port(),
        udp_dst_port: dgram.dst_port(),
        udp_csum,
        udp_payload: &udp[udp::HEADER_LEN..],
    }
}

#[derive(Default, Debug)]
struct Counts {
    ipv4: usize,
    ipv6: usize,
    arp: usize,
    /// Inner IPv6 packets by next header (extension headers not walked).
    icmpv6: usize,
    tcp6: usize,
    /// Inner IPv6 ICMPv6/TCP/UDP packets whose checksum verifies.
    l4_csum6_ok: usize,
    /// Frames whose outer UDP checksum verifies over the outer pseudo-header.
    udp_csum_full: usize,
}

/// Counts an inner IPv6 packet by next header and checks its transport checksum.
fn count_inner_v6(p: &[u8], n: &mut Counts) {
    let p = ipv6::Packet::new_checked(p).unwrap();
    let l4 = p.payload();
    let proto = p.next_header();
    match proto {
        ip::PROTO_ICMPV6 => n.icmpv6 += 1,
        ip::PROTO_TCP => {
            tcp::Packet::new_checked(l4).unwrap();
            n.tcp6 += 1;
        }
        _ => {}
    }
    if matches!(proto, ip::PROTO_ICMPV6 | ip::PROTO_TCP | ip::PROTO_UDP)
        && l4_checksum_ok(p.packet(), ip::Version::Ipv6, proto, l4)
    {
        n.l4_csum6_ok += 1;
    }
}

/// Decapsulates and re-encapsulates every frame of a capture whose underlay is `family`.
fn check_capture(name: &str, family: Outer, vni: u32, port: u16) -> Counts {
    let mut n = Counts::default();
    for (i, frame) in read_pcap(name).iter().enumerate() {
        let c = outer(frame, family);
        assert_eq!(c.udp_dst_port, port, "frame {i}");
        n.udp_csum_full += usize::from(c.udp_csum == UdpCsum::Full);
        let v = vxlan::Packet::new_checked(c.udp_payload).unwrap();
        assert_eq!(vxlan::Repr::parse(&v), Ok(vxlan::Repr { vni }), "frame {i}");
        let inner_eth = ether::Frame::new_checked(v.payload()).unwrap();
        let (inner_dst, inner_src) = (inner_eth.dst_addr().0, inner_eth.src_addr().0);

        let rx = Encap::Vxlan {
            vni,
            local_mac: inner_dst,
        };
        // A wrong VNI is refused.
        let wrong = Encap::Vxlan {
            vni: vni ^ 1,
            local_mac: inner_dst,
        };
        assert_eq!(
            wrong.decapsulate(c.udp_payload),
            Err(overlayd::drop::DropReason::WrongVni)
        );

        match rx
            .decapsulate(c.udp_payload)
            .unwrap_or_else(|e| panic!("frame {i}: {e:?}"))
        {
            Decapsulated::Arp(f) => {
                assert_eq!(inner_eth.ethertype(), ether::ETHERTYPE_ARP);
                assert_eq!(f, v.payload());
                n.arp += 1;
            }
            Decapsulated::Ip(ip) => {
                assert_eq!(
                    ip,
                    inner_eth.payload(),
                    "frame {i}: kernel VXLAN frames carry no padding"
                );
                match ip::inner_packet(ip).unwrap() {
                    ip::InnerIp::V4(p) => {
                        let p = ipv4::Packet::new_checked(p).unwrap();
                        assert!(p.verify_checksum(), "frame {i}: inner IPv4 checksum");
                        n.ipv4 += 1;
                    }
                    ip::InnerIp::V6(p) => {
                        n.ipv6 += 1;
                        count_inner_v6(p, &mut n);
                    }
                }
                // Re-encapsulate as the sender did: we are the inner source MAC. The outer
                // headers (and the source port the kernel hashed) are not compared: from the
                // VXLAN header on, the bytes must be the kernel's.
                let tx = Encap::Vxlan {
                    vni,
                    local_mac: inner_src,
                };
                let mut buf = vec![0u8; tx.header_len()];
                buf.extend_from_slice(ip);
                tx.encapsulate(&mut buf, inner_dst, 0).unwrap();
                assert_eq!(buf, c.udp_payload, "frame {i}: re-encapsulation differs");
                assert_eq!(
                    frame.len(),
                    ip.len() + family.overhead(&tx) + ether::HEADER_LEN,
                    "frame {i}: overhead"
                );
            }
        }
    }
    n
}

#[test]
fn kernel_vxlan_flannel() {
    let n = check_capture("kernel-vxlan-flannel.pcap", Outer::V4, 1, 8472);
    assert!(n.ipv4 > 10, "{n:?}");
    assert_eq!(n.arp, 0, "static neighbours: no ARP on the wire");
}

#[test]
fn kernel_vxlan_arp_full_vni() {
    let n = check_capture(
        "kernel-vxlan-arp-vni11259375.pcap",
        Outer::V4,
        0xABCDEF,
        4789,
    );
    assert_eq!(n.arp, 2, "{n:?}");
    assert!(n.ipv4 >= 4 && n.ipv6 >= 4, "{n:?}");
}

#[test]
fn kernel_vxlan6_flannel() {
    let n = check_capture("kernel-vxlan6-flannel.pcap", Outer::V6, 1, 8472);
    // flannel-v6 carries IPv6 only: 6 echo requests and 6 replies, and the TCP exchange
    // (handshake, 4 + 2 data segments, ACKs, FINs).
    assert_eq!((n.ipv4, n.arp), (0, 0), "{n:?}");
    assert_eq!(n.icmpv6, 12, "{n:?}");
    assert!(n.tcp6 >= 12, "{n:?}");
    assert_eq!(n.ipv6, n.icmpv6 + n.tcp6, "{n:?}");
    // Captured with checksum offload off: the kernel computed every checksum in software,
    // the outer UDP one over the IPv6 pseudo-header and the inner ICMPv6/TCP ones.
    assert_eq!(n.udp_csum_full, n.ipv6, "{n:?}");
    assert_eq!(n.l4_csum6_ok, n.ipv6, "{n:?}");
}

#[test]
fn kernel_vxlan6_flannel_outer() {
    // The underlay of the capture, read through the checked views: the two hosts'
    // fd00:77::/64 addresses, UDP to 8472 from a hashed source port, VNI 1, and the
    // peer's flannel-v6.1 MAC as inner destination.
    let frames = read_pcap("kernel-vxlan6-flannel.pcap");
    assert!(!frames.is_empty() && frames.len() <= 40);
    let h1: Ipv6Addr = "fd00:77::1".parse().unwrap();
    let h2: Ipv6Addr = "fd00:77::2".parse().unwrap();
    let mac = |n: u8| ether::MacAddr([0x02, 0x42, 0xfd, 0x10, n, 0x00]);
    let mut from_h1 = 0;
    for frame in &frames {
        let c = outer(frame, Outer::V6);
        let ip = ipv6::Packet::new_checked(&frame[ether::HEADER_LEN..]).unwrap();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        assert!(
            (src, dst) == (h1, h2) || (src, dst) == (h2, h1),
            "{src} > {dst}"
        );
        assert_eq!(c.udp_dst_port, 8472);
        assert!((flow::PORT_MIN..=flow::PORT_MAX).contains(&c.udp_src_port));
        let v = vxlan::Packet::new_checked(c.udp_payload).unwrap();
        assert_eq!(v.vni(), 1);
        let eth = ether::Frame::new_checked(v.payload()).unwrap();
        assert_eq!(eth.ethertype(), ether::ETHERTYPE_IPV6);
        let (me, peer) = if src == h1 { (1, 2) } else { (2, 1) };
        assert_eq!((eth.src_addr(), eth.dst_addr()), (mac(me), mac(peer)));
        let inner = ipv6::Packet::new_checked(eth.payload()).unwrap();
        let pod = |n: u16| Ipv6Addr::new(0xfd00, 0x10, 0, n, 0, 0, 0, 0);
        assert_eq!(
            (inner.src_addr(), inner.dst_addr()),
            (pod(me.into()), pod(peer.into()))
        );
        // MTU-sized: the kernel gave flannel-v6.1 1500 - 70 = 1430, overlayd's IPv6
        // overhead for vxlan.
        assert!(
            inner.total_len()
                <= 1500
                    - Encap::Vxlan {
                        vni: 1,
                        local_mac: [0; 6]
                    }
                    .overhead_v6()
        );
        from_h1 += usize::from(src == h1);
    }
    assert!(from_h1 > 0 && from_h1 < frames.len(), "both directions");
}

#[test]
fn flannel_vxlan_sizes() {
    // flannel derives a 1450 inner MTU from a 1500 underlay: exactly the VXLAN overhead.
    let e = Encap::Vxlan {
        vni: 1,
        local_mac: [0; 6],
    };
    assert_eq!(1500 - e.overhead(), 1450);
    let inner: Vec<usize> = read_pcap("kernel-vxlan-flannel.pcap")
        .iter()
        .map(|f| f.len() - OUTER_LEN - e.header_len())
        .collect();
    // The 1372-byte echo payloads: 1372 + 8 (ICMP) + 20 (IP) = 1400-byte inner packets.
    assert_eq!(inner.iter().filter(|&&l| l == 1400).count(), 4);
    // tcpdump on the veth sees the TCP transfer before segmentation: the kernel carries
    // GSO super-packets through VXLAN whole (inner packets far above the MTU). They
    // decapsulate and re-encapsulate like any other (checked in `kernel_vxlan_flannel`).
    assert!(inner.iter().any(|&l| l > 40_000), "{inner:?}");
}

#[test]
fn arp_reply_matches_kernel() {
    let frames = read_pcap("kernel-vxlan-arp-vni11259375.pcap");
    let arps: Vec<&[u8]> = frames
        .iter()
        .map(|f| outer(f, Outer::V4).udp_payload)
        .filter_map(|p| {
            match (Encap::Vxlan {
                vni: 0xABCDEF,
                local_mac: [0; 6],
            })
            .decapsulate(p)
            {
                Ok(Decapsulated::Arp(f)) => Some(f),
                _ => None,
            }
        })
        .collect();
    assert_eq!(arps.len(), 2);
    let (request, reply) = (arps[0], arps[1]);
    let req = arp::Repr::parse(&arp::Packet::new_checked(&request[14..]).unwrap()).unwrap();
    assert_eq!(req.operation, arp::OP_REQUEST);
    assert_eq!(req.target_ip, Ipv4Addr::new(10, 99, 0, 2));
    let rep = arp::Repr::parse(&arp::Packet::new_checked(&reply[14..]).unwrap()).unwrap();
    assert_eq!(rep.operation, arp::OP_REPLY);

    // Answering with the responder's MAC reproduces the kernel's reply byte for byte.
    let mut out = [0u8; 64];
    let target = req.target_ip;
    let n = arp::reply_to(request, rep.sender_mac.0, |ip| ip == target, &mut out).unwrap();
    assert_eq!(&out[..n], reply);
    // Not for an address we do not own, and never to a reply.
    assert_eq!(
        arp::reply_to(request, rep.sender_mac.0, |_| false, &mut out),
        None
    );
    assert_eq!(
        arp::reply_to(reply, rep.sender_mac.0, |_| true, &mut out),
        None
    );
}

#[test]
fn flow_hash_groups_like_the_kernel() {
    // The kernel chose each frame's UDP source port from a hash of the inner flow that is
    // not reproducible (seeded flow-dissector hash, or a random per-socket hash for
    // locally originated TCP, which is why the two directions of the TCP transfer differ).
    // Per sending host, overlayd's hash must group frames the same way: packets it
    // considers one flow got one source port from the kernel, and one kernel port does
    // not cover several of overlayd's flows.
    use std::collections::{BTreeSet, HashMap};
    for (name, family, vni) in [
        ("kernel-vxlan-flannel.pcap", Outer::V4, 1),
        ("kernel-vxlan-arp-vni11259375.pcap", Outer::V4, 0xABCDEF),
        ("kernel-vxlan6-flannel.pcap", Outer::V6, 1),
    ] {
        let mut ours: HashMap<(IpAddr, u32), BTreeSet<u16>> = HashMap::new();
        let mut kernel: HashMap<(IpAddr, u16), BTreeSet<u32>> = HashMap::new();
        for frame in read_pcap(name) {
            let c = outer(&frame, family);
            let (host, sport) = (c.src, c.udp_src_port);
            let v = vxlan::Packet::new_checked(c.udp_payload).unwrap();
            assert_eq!(v.vni(), vni);
            let eth = ether::Frame::new_checked(v.payload()).unwrap();
            if eth.ethertype() == ether::ETHERTYPE_ARP {
                continue;
            }
            let h = flow::hash(eth.payload());
            assert!((flow::PORT_MIN..=flow::PORT_MAX).contains(&flow::src_port(h)));
            ours.entry((host, h)).or_default().insert(sport);
            kernel.entry((host, sport)).or_default().insert(h);
        }
        for (h, ports) in &ours {
            assert_eq!(
                ports.len(),
                1,
                "{name}: our flow {h:x?} got kernel ports {ports:?}"
            );
        }
        for (p, hashes) in &kernel {
            assert_eq!(
                hashes.len(),
                1,
                "{name}: kernel port {p:?} covers our flows {hashes:x?}"
            );
        }
    }
}
