//! Checks shared by the fuzz targets: each one asserts a property of overlayd's parsers
//! beyond "does not panic" (round trips, output well-formedness), so that libFuzzer
//! reports logic bugs as crashes too.

use overlayd::backend::{Decapsulated, Encap};
use overlayd::wire::{arp, ether, gre, ip, ipv4};
use std::cell::Cell;
use std::net::Ipv4Addr;

/// flannel's vxlan parameters in `tests/vectors/kernel-vxlan-flannel.pcap` (host .1).
pub const FLANNEL_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x00];
/// The ARP-replying VTEP of `tests/vectors/kernel-vxlan-arp-vni11259375.pcap`.
pub const ARP_PCAP_MAC: [u8; 6] = [0xe2, 0xf8, 0xfa, 0xcc, 0xed, 0x94];

/// Whether `inner` lies inside `outer` (a decapsulated packet must be a sub-slice).
fn within(inner: &[u8], outer: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end <= o.end
}

/// Decapsulates `payload` with `e` and checks what comes out. On `Ip(inner)`: `inner` is a
/// sub-slice of `payload`, passes `ip::inner_packet` unchanged, and re-encapsulating it
/// (with `seq`, addressed to our own MAC) gives a payload that decapsulates to the same
/// bytes. Returns the re-encapsulated payload for backend-specific checks.
pub fn check_decap(e: Encap, payload: &[u8], seq: u32) -> Option<Vec<u8>> {
    match e.decapsulate(payload) {
        Ok(Decapsulated::Ip(inner)) => {
            assert!(within(inner, payload), "inner packet outside the payload");
            let ip = ip::inner_packet(inner).expect("decapsulated packet is valid IP");
            assert_eq!(ip.packet(), inner, "decapsulated packet was not trimmed");
            // The receiver only accepts vxlan frames addressed to its local MAC.
            let peer_mac = match e {
                Encap::Vxlan { local_mac, .. } => local_mac,
                _ => [0; 6],
            };
            let mut buf = vec![0u8; e.header_len()];
            buf.extend_from_slice(inner);
            e.encapsulate(&mut buf, peer_mac, seq)
                .expect("a decapsulated inner packet re-encapsulates");
            assert_eq!(buf.len(), e.header_len() + inner.len());
            assert_eq!(
                e.decapsulate(&buf),
                Ok(Decapsulated::Ip(inner)),
                "re-encapsulation does not decapsulate to the same inner packet"
            );
            Some(buf)
        }
        Ok(Decapsulated::Arp(frame)) => {
            assert!(
                matches!(e, Encap::Vxlan { .. }),
                "ARP from a non-vxlan backend"
            );
            assert!(within(frame, payload));
            assert!(frame.len() >= arp::FRAME_LEN);
            let f = ether::Frame::new_checked(frame).expect("ARP frame has an Ethernet header");
            assert_eq!(f.ethertype(), ether::ETHERTYPE_ARP);
            check_arp(frame);
            None
        }
        Err(_) => None,
    }
}

/// GRE decapsulation with the backend the header itself describes (so the key check
/// passes and the deeper paths are reached) and with two fixed ones. With the derived
/// backend, the re-encapsulated header must parse to the same [`gre::Repr`].
pub fn check_gre(payload: &[u8]) {
    for e in [
        Encap::Gre {
            key: Some(1),
            checksum: false,
            sequence: false,
        },
        Encap::Gre {
            key: None,
            checksum: true,
            sequence: true,
        },
    ] {
        check_decap(e, payload, 7);
    }
    let Ok(p) = gre::Packet::new_checked(payload) else {
        return;
    };
    let e = Encap::Gre {
        key: p.key(),
        checksum: p.checksum_present(),
        sequence: p.seq_present(),
    };
    let seq = p.seq().unwrap_or(0);
    if let Some(again) = check_decap(e, payload, seq) {
        let orig = gre::Repr::parse(&p).expect("decapsulated, so the header is valid");
        let new = gre::Repr::parse(&gre::Packet::new_checked(&again[..]).expect("own header"))
            .expect("own header parses");
        assert_eq!(orig, new, "re-encapsulated GRE header differs");
    }
}

/// vxlan decapsulation with flannel's parameters, the ARP capture's, and the VNI and MAC
/// the payload itself carries (so those checks pass and the inner paths are reached).
pub fn check_vxlan(payload: &[u8]) {
    check_decap(
        Encap::Vxlan {
            vni: 1,
            local_mac: FLANNEL_MAC,
        },
        payload,
        0,
    );
    check_decap(
        Encap::Vxlan {
            vni: 0xabcdef,
            local_mac: ARP_PCAP_MAC,
        },
        payload,
        0,
    );
    if payload.len() >= 14 {
        let vni = u32::from_be_bytes([0, payload[4], payload[5], payload[6]]);
        let mut local_mac = [0u8; 6];
        local_mac.copy_from_slice(&payload[8..14]);
        if let Some(again) = check_decap(Encap::Vxlan { vni, local_mac }, payload, 0) {
            // Our own header: I flag, the VNI, dst = src = local MAC here.
            assert_eq!(again[0], 0x08);
            assert_eq!(&again[4..7], &payload[4..7]);
            assert_eq!(&again[8..14], &local_mac);
            assert_eq!(&again[14..20], &local_mac);
        }
    }
}

/// ARP responder: answers only Ethernet/IPv4 requests, with a well-formed reply that
/// mirrors the request; never answers when `answer` says no, when `out` is short, or a
/// reply it produced itself.
pub fn check_arp(frame: &[u8]) {
    const OUR: [u8; 6] = FLANNEL_MAC;
    let mut out = [0u8; 64];
    let asked = Cell::new(None::<Ipv4Addr>);
    let r = arp::reply_to(
        frame,
        OUR,
        |ip| {
            asked.set(Some(ip));
            true
        },
        &mut out,
    );
    assert_eq!(
        arp::reply_to(frame, OUR, |_| false, &mut [0u8; 64]),
        None,
        "answered although told not to"
    );
    assert_eq!(
        arp::reply_to(frame, OUR, |_| true, &mut [0u8; arp::FRAME_LEN - 1]),
        None,
        "answered into a short buffer"
    );
    let Some(n) = r else { return };
    assert_eq!(n, arp::FRAME_LEN);
    let req_f = ether::Frame::new_checked(frame).expect("answered, so a frame");
    assert_eq!(req_f.ethertype(), ether::ETHERTYPE_ARP);
    let req = arp::Repr::parse(&arp::Packet::new_checked(req_f.payload()).expect("ARP"))
        .expect("answered, so Ethernet/IPv4 ARP");
    assert_eq!(req.operation, arp::OP_REQUEST);
    assert!(req.sender_mac.is_unicast());
    assert_eq!(asked.get(), Some(req.target_ip));

    let rep_f = ether::Frame::new_checked(&out[..n]).expect("reply frame");
    assert_eq!(rep_f.dst_addr(), req.sender_mac);
    assert_eq!(rep_f.src_addr().0, OUR);
    assert_eq!(rep_f.ethertype(), ether::ETHERTYPE_ARP);
    let rep = arp::Repr::parse(&arp::Packet::new_checked(rep_f.payload()).expect("ARP"))
        .expect("reply parses");
    assert_eq!(
        rep,
        arp::Repr {
            operation: arp::OP_REPLY,
            sender_mac: ether::MacAddr(OUR),
            sender_ip: req.target_ip,
            target_mac: req.sender_mac,
            target_ip: req.sender_ip,
        }
    );
    assert_eq!(
        arp::reply_to(&out[..n], OUR, |_| true, &mut [0u8; 64]),
        None,
        "answered our own reply"
    );
}

/// outer IPv4 → GRE split, then GRE decapsulation of what it gives.
pub fn check_outer_ipv4(buf: &[u8]) {
    let Ok((src, gre_bytes)) = ipv4::outer_payload(buf) else {
        return;
    };
    let p = ipv4::Packet::new_checked(buf).expect("outer_payload accepted it");
    assert_eq!(p.protocol(), ip::PROTO_GRE);
    assert_eq!(src, p.src_addr());
    assert_eq!(Ipv4Addr::from([buf[12], buf[13], buf[14], buf[15]]), src);
    let hl = usize::from(buf[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    assert!(within(gre_bytes, buf));
    assert_eq!(
        gre_bytes.len(),
        total - hl,
        "GRE part is total length − header"
    );
    assert_eq!(gre_bytes.as_ptr(), buf[hl..].as_ptr());
    check_gre(gre_bytes);
}

/// The L2 receive path's checks on arbitrary datagrams (first byte: 0 = vxlan over UDP,
/// 1 = gretap over a raw socket, with the outer IPv4 header): never panics; what it accepts
/// comes from a member, names an attached network and carries a whole Ethernet header with
/// a unicast source; learning from it and the checksum/padding fix-up never panic and
/// only ever shorten the frame.
pub fn check_l2(data: &[u8]) {
    use overlayd::l2::config::{L2Backend, L2NetworkConfig};
    use overlayd::l2::switch::{self as l2sw, Members, Network, Shared};
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let member = Ipv4Addr::new(10, 0, 0, 2);
    let cfg = |vni, backend| L2NetworkConfig {
        vni,
        backend,
        port: 4789,
        arp_suppression: true,
        ageing_secs: 300,
    };
    // Built once: its learning tables are large, and learning across inputs is fine.
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    let sh = SHARED.get_or_init(|| {
        let sh = Shared::new(vec![
            Network::new("a".into(), cfg(1, L2Backend::Vxlan), 1450),
            Network::new("b".into(), cfg(0xff_ffff, L2Backend::Vxlan), 1450),
            Network::new("g".into(), cfg(1, L2Backend::Gre), 1458),
        ]);
        for i in 0..3 {
            sh.set_members(i, Members::new(vec![member]));
        }
        sh
    });
    let (backend, raw) = if sel & 1 == 0 {
        (L2Backend::Vxlan, false)
    } else {
        (L2Backend::Gre, true)
    };
    let Ok(Some(inb)) = l2sw::classify(sh, backend, rest, member, raw) else {
        return;
    };
    assert!((inb.net as usize) < 3);
    assert_eq!(sh.nets[inb.net as usize].cfg.backend, backend);
    assert_eq!(inb.sender, member);
    assert!(inb.frame.len() >= ether::HEADER_LEN);
    assert_eq!(inb.frame[6] & 1, 0, "accepted a multicast source MAC");
    l2sw::learn(sh, &inb, sh.now());
    let (trimmed, _) = l2sw::trim_and_check(inb.frame, 1450);
    assert!(trimmed.len() <= inb.frame.len());
    assert_eq!(&inb.frame[..trimmed.len()], trimmed);
}

/// The routed receive path after decapsulation, on arbitrary inner packets (first byte:
/// which underlay address sent it — bit 0 the peer's IPv6 one, bit 1 an unknown node; next
/// two: a GRO segment size): [`overlayd::l3::accept`] against fixed IPv4 and IPv6 tables
/// (local 10.244.1.0/24 and fd00:10:0:1::/64; one peer holding 10.244.2.0/24 and
/// fd00:10:0:2::/64), then the partial-checksum recognition the delivery runs. What is
/// accepted came from the node holding its source's subnet and goes to ours; a checksum
/// taken as partial finishes into one that verifies; a segment size fits the MTU.
pub fn check_rx(data: &[u8]) {
    use overlayd::fib::{Fib, Fib6, Peer, Peer6};
    use overlayd::offload::{finish_checksum, partial_checksum_hdr, tcp_mss_for_mtu};
    use overlayd::wire::{checksum, virtio};
    use std::net::{IpAddr, Ipv6Addr};
    let Some((head, inner)) = data.split_first_chunk::<3>() else {
        return;
    };
    let peer4 = Ipv4Addr::new(192, 168, 77, 2);
    let peer6: Ipv6Addr = "fd00:77::2".parse().expect("address");
    static TABLES: std::sync::OnceLock<(Fib, Fib6)> = std::sync::OnceLock::new();
    let (fib, fib6) = TABLES.get_or_init(|| {
        let (fib, _) = Fib::new(
            "10.244.0.0/16".parse().expect("net"),
            24,
            Some("10.244.1.0/24".parse().expect("net")),
            [Peer::new("10.244.2.0/24".parse().expect("net"), peer4, [2; 6])],
        );
        let (fib6, _) = Fib6::new(
            "fd00:10::/56".parse().expect("net"),
            64,
            Some("fd00:10:0:1::/64".parse().expect("net")),
            [Peer6::new(
                "fd00:10:0:2::/64".parse().expect("net"),
                peer4,
                Some(peer6),
                IpAddr::V6(peer6),
                [2; 6],
            )],
        );
        (fib, fib6)
    });
    let from = match head[0] & 3 {
        0 => IpAddr::V4(peer4),
        1 => IpAddr::V6(peer6),
        2 => IpAddr::V4(Ipv4Addr::new(192, 168, 77, 9)),
        _ => IpAddr::V6("fd00:77::9".parse().expect("address")),
    };
    let gso = usize::from(u16::from_be_bytes([head[1], head[2]]));
    let Ok(Decapsulated::Ip(inner)) = Encap::Udp.decapsulate(inner) else {
        return;
    };
    if overlayd::l3::accept(fib, fib6, from, inner).is_ok() {
        assert!(head[0] & 2 == 0, "accepted from an unknown node");
        match (ip::src_addr(inner), ip::dst_addr(inner)) {
            (Some(IpAddr::V4(s)), Some(IpAddr::V4(d))) => {
                assert_eq!(from, IpAddr::V4(peer4), "IPv4 from the peer's IPv4 address");
                assert_eq!(s.octets()[..3], [10, 244, 2]);
                assert_eq!(d.octets()[..3], [10, 244, 1]);
            }
            (Some(IpAddr::V6(s)), Some(IpAddr::V6(d))) => {
                assert_eq!(s.segments()[..4], [0xfd00, 0x10, 0, 2]);
                assert_eq!(d.segments()[..4], [0xfd00, 0x10, 0, 1]);
            }
            other => panic!("accepted a packet with mixed families: {other:?}"),
        }
    }
    let mss = tcp_mss_for_mtu(inner, 1450);
    assert!(mss <= 1450);
    let Some(h) = partial_checksum_hdr(inner, gso) else {
        return;
    };
    let hdr = ip::parse(inner).expect("taken as partial, so a valid IP header");
    assert_eq!(hdr.total_len, inner.len());
    assert_eq!(usize::from(h.csum_start), hdr.header_len);
    assert!(matches!(h.csum_offset, 6 | 16));
    if h.gso_type != virtio::GSO_NONE {
        let want = if hdr.is_v6() {
            virtio::GSO_TCPV6
        } else {
            virtio::GSO_TCPV4
        };
        assert_eq!(h.gso_type, want);
        assert_eq!(usize::from(h.gso_size), gso);
        assert!(usize::from(h.hdr_len) < inner.len());
    }
    // Finishing is the same with or without segmenting: finish the whole packet.
    let whole = virtio::VirtioNetHdr {
        gso_type: virtio::GSO_NONE,
        gso_size: 0,
        hdr_len: 0,
        ..h
    };
    let mut done = inner.to_vec();
    finish_checksum(&whole, &mut done).expect("a recognised partial checksum finishes");
    let l4 = &done[hdr.header_len..];
    let sum = ip::pseudo_header_sum(&done, hdr.version, hdr.protocol, l4.len());
    assert_eq!(
        checksum::fold(checksum::add(sum, l4)),
        0xffff,
        "the finished checksum verifies"
    );
}
