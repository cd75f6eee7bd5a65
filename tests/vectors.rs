//! Frames captured from the Linux kernel's own VXLAN driver (see `tests/vectors/README.md`)
//! checked against overlayd's wire layer: every VXLAN payload decapsulates, and every inner
//! IP packet re-encapsulates to exactly the bytes the kernel sent.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use overlayd::backend::{Decapsulated, Encap};
use overlayd::wire::{arp, ether, ipv4, vxlan};

/// Outer Ethernet + IPv4 (no options) + UDP in front of the VXLAN header.
const OUTER_LEN: usize = 14 + 20 + 8;

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

/// What one captured VXLAN frame holds.
struct Captured<'a> {
    udp_dst_port: u16,
    /// The UDP payload: VXLAN header onwards.
    udp_payload: &'a [u8],
}

/// Checks the outer headers of a captured frame and returns its UDP payload.
fn outer(frame: &[u8]) -> Captured<'_> {
    let eth = ether::Frame::new_checked(frame).unwrap();
    assert_eq!(eth.ethertype(), ether::ETHERTYPE_IPV4);
    let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.header_len(), 20);
    assert_eq!(ip.protocol(), ipv4::PROTO_UDP);
    assert!(ip.verify_checksum(), "outer IPv4 checksum");
    let udp = &frame[14 + 20..14 + ip.total_len() as usize];
    assert_eq!(udp, ip.payload());
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    assert_eq!(udp_len, udp.len());
    assert_eq!(frame.len(), OUTER_LEN + udp_len - 8);
    Captured {
        udp_dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        udp_payload: &udp[8..],
    }
}

#[derive(Default, Debug)]
struct Counts {
    ipv4: usize,
    ipv6: usize,
    arp: usize,
}

/// Decapsulates and re-encapsulates every frame of a capture.
fn check_capture(name: &str, vni: u32, port: u16) -> Counts {
    let mut n = Counts::default();
    for (i, frame) in read_pcap(name).iter().enumerate() {
        let c = outer(frame);
        assert_eq!(c.udp_dst_port, port, "frame {i}");
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
                match ipv4::inner_packet(ip).unwrap() {
                    ipv4::InnerIp::V4(p) => {
                        let p = ipv4::Packet::new_checked(p).unwrap();
                        assert!(p.verify_checksum(), "frame {i}: inner IPv4 checksum");
                        n.ipv4 += 1;
                    }
                    ipv4::InnerIp::V6(_) => n.ipv6 += 1,
                }
                // Re-encapsulate as the sender did: we are the inner source MAC.
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
                    ip.len() + tx.overhead() + 14,
                    "frame {i}: overhead"
                );
            }
        }
    }
    n
}

#[test]
fn kernel_vxlan_flannel() {
    let n = check_capture("kernel-vxlan-flannel.pcap", 1, 8472);
    assert!(n.ipv4 > 10, "{n:?}");
    assert_eq!(n.arp, 0, "static neighbours: no ARP on the wire");
}

#[test]
fn kernel_vxlan_arp_full_vni() {
    let n = check_capture("kernel-vxlan-arp-vni11259375.pcap", 0xABCDEF, 4789);
    assert_eq!(n.arp, 2, "{n:?}");
    assert!(n.ipv4 >= 4 && n.ipv6 >= 4, "{n:?}");
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
        .map(|f| outer(f).udp_payload)
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
    use overlayd::wire::flow;
    use std::collections::{BTreeSet, HashMap};
    for (name, vni) in [
        ("kernel-vxlan-flannel.pcap", 1),
        ("kernel-vxlan-arp-vni11259375.pcap", 0xABCDEF),
    ] {
        let mut ours: HashMap<(u32, u32), BTreeSet<u16>> = HashMap::new();
        let mut kernel: HashMap<(u32, u16), BTreeSet<u32>> = HashMap::new();
        for frame in read_pcap(name) {
            let c = outer(&frame);
            let sport = u16::from_be_bytes([frame[34], frame[35]]);
            let host = u32::from_be_bytes([frame[26], frame[27], frame[28], frame[29]]);
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
