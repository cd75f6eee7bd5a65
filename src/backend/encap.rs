//! The data path's view of a backend: [`Encap`], one small enum over the three wire
//! formats, with the header length, the overhead, and checked encapsulation and
//! decapsulation, dispatched to each backend's own module ([`super::udp_tunnel`],
//! [`super::vxlan_tunnel`], [`super::gre_tunnel`]) where the format is written.
//!
//! Pure: it writes headers into room the caller left in front of the inner packet and
//! validates received payloads, with no I/O, no allocation and no panics on any input.
//! Choosing the outer UDP source port (see [`crate::wire::flow`]) and the sockets is the
//! data plane's job.

use super::{gre_tunnel, udp_tunnel, vxlan_tunnel};
use crate::drop::DropReason;
use crate::wire::{gre, ip};

/// Outer IPv4 header length, counted in [`Encap::overhead`].
const OUTER_IPV4_LEN: usize = 20;
/// Outer IPv6 header length, counted in [`Encap::overhead_v6`].
const OUTER_IPV6_LEN: usize = 40;
/// Outer UDP header length.
const OUTER_UDP_LEN: usize = 8;

/// An encapsulation backend and its per-network parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// flannel udp: the inner IP packet is the UDP payload.
    Udp,
    /// VXLAN with this VNI; `local_mac` is our VTEP MAC (inner source, accepted inner dst).
    Vxlan { vni: u32, local_mac: [u8; 6] },
    /// GRE with an optional key, optional checksum and optional sequence numbers.
    Gre {
        key: Option<u32>,
        checksum: bool,
        sequence: bool,
    },
}

/// What a valid underlay payload carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decapsulated<'a> {
    /// The inner IP packet, validated and trimmed of padding.
    Ip(&'a [u8]),
    /// VXLAN only: the whole inner Ethernet frame of an ARP packet.
    Arp(&'a [u8]),
}

impl Encap {
    /// Bytes written in front of the inner IP packet: udp 0, vxlan 8 + 14, gre 4 plus 4
    /// for each of key, checksum and sequence that is enabled.
    pub const fn header_len(&self) -> usize {
        match *self {
            Encap::Udp => 0,
            Encap::Vxlan { .. } => vxlan_tunnel::INNER_IP_AT,
            Encap::Gre {
                key,
                checksum,
                sequence,
            } => {
                gre::BASE_LEN
                    + 4 * (key.is_some() as usize)
                    + 4 * (checksum as usize)
                    + 4 * (sequence as usize)
            }
        }
    }

    /// Total per-packet overhead on the underlay, outer IPv4 (20) and UDP (8, not for gre)
    /// included: udp 28, vxlan 50, gre 28 with a key. Inner MTU = underlay MTU − this.
    pub const fn overhead(&self) -> usize {
        let udp = match self {
            Encap::Gre { .. } => 0,
            _ => OUTER_UDP_LEN,
        };
        OUTER_IPV4_LEN + udp + self.header_len()
    }

    /// The per-packet overhead on an IPv6 underlay: [`Self::overhead`] with the 40-byte
    /// outer IPv6 header instead of IPv4's 20: udp 48, vxlan 70, gre 48 with a key.
    pub const fn overhead_v6(&self) -> usize {
        self.overhead() + OUTER_IPV6_LEN - OUTER_IPV4_LEN
    }

    /// Writes the encapsulation header into `pkt`, which is [`Self::header_len`] bytes of
    /// room followed by the inner IP packet. vxlan: VXLAN header, then an Ethernet header
    /// dst = `peer_mac`, src = `local_mac`, EtherType from the inner IP version. gre:
    /// protocol = inner EtherType, the key, `seq` when sequencing is on, and the checksum
    /// computed last over the whole packet. `peer_mac` and `seq` are ignored where unused.
    ///
    /// `Truncated` when `pkt` has no inner packet after the room; `BadInner` when the
    /// inner packet is neither IPv4 nor IPv6 (udp: also checked, so every backend refuses
    /// the same inputs).
    pub fn encapsulate(
        &self,
        pkt: &mut [u8],
        peer_mac: [u8; 6],
        seq: u32,
    ) -> Result<(), DropReason> {
        let h = self.header_len();
        let ethertype = match pkt.get(h..) {
            None | Some([]) => return Err(DropReason::Truncated),
            Some(inner) => ip::Version::of(inner)
                .ok_or(DropReason::BadInner)?
                .ethertype(),
        };
        match *self {
            Encap::Udp => {}
            Encap::Vxlan { vni, local_mac } => {
                vxlan_tunnel::encapsulate(pkt, vni, local_mac, peer_mac, ethertype)
            }
            Encap::Gre {
                key,
                checksum,
                sequence,
            } => gre_tunnel::encapsulate(pkt, key, checksum, sequence.then_some(seq), ethertype),
        }
        Ok(())
    }

    /// Checked decapsulation of one underlay payload: the UDP payload (udp, vxlan) or the
    /// GRE header onwards (gre).
    ///
    /// Errors: `Truncated` for short input; `BadHeader` for a malformed VXLAN/GRE header
    /// (I flag clear, GRE version or reserved bits, bad GRE checksum); `WrongVni` when the
    /// VNI or key is not ours (GRE: key presence must match too); `BadInner` for an inner
    /// EtherType other than IPv4/IPv6 (or ARP on vxlan), a mismatch between EtherType and IP
    /// version, a bad inner IP header, or (vxlan) an IP frame not addressed to `local_mac`.
    /// ARP frames may be broadcast and are returned whole for the ARP responder.
    pub fn decapsulate<'a>(&self, payload: &'a [u8]) -> Result<Decapsulated<'a>, DropReason> {
        match *self {
            Encap::Udp => udp_tunnel::decapsulate(payload),
            Encap::Vxlan { vni, local_mac } => vxlan_tunnel::decapsulate(payload, vni, local_mac),
            Encap::Gre { key, .. } => gre_tunnel::decapsulate(payload, key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ether, ipv4, vxlan};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const LOCAL: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x00];
    const PEER: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x02, 0x00];

    /// An IPv4 ICMP packet 10.244.1.1 → 10.244.2.1 with `n` payload bytes.
    fn inner(n: usize) -> Vec<u8> {
        let mut b = vec![0xeeu8; 20 + n];
        ipv4::Repr {
            src_addr: Ipv4Addr::new(10, 244, 1, 1),
            dst_addr: Ipv4Addr::new(10, 244, 2, 1),
            protocol: ip::PROTO_ICMP,
            payload_len: n as u16,
            ttl: 64,
            ident: 0,
        }
        .emit(&mut b);
        b
    }

    fn encap(e: &Encap, ip: &[u8], seq: u32) -> Vec<u8> {
        let mut buf = vec![0x5au8; e.header_len()];
        buf.extend_from_slice(ip);
        e.encapsulate(&mut buf, PEER, seq).unwrap();
        buf
    }

    const ALL: [Encap; 5] = [
        Encap::Udp,
        Encap::Vxlan {
            vni: 1,
            local_mac: LOCAL,
        },
        Encap::Gre {
            key: Some(1),
            checksum: false,
            sequence: false,
        },
        Encap::Gre {
            key: None,
            checksum: false,
            sequence: false,
        },
        Encap::Gre {
            key: Some(0xdeadbeef),
            checksum: true,
            sequence: true,
        },
    ];

    #[test]
    fn lengths() {
        let l: Vec<_> = ALL.iter().map(|e| (e.header_len(), e.overhead())).collect();
        assert_eq!(l, [(0, 28), (22, 50), (8, 28), (4, 24), (16, 36)]);
        let l6: Vec<_> = ALL.iter().map(|e| e.overhead_v6()).collect();
        assert_eq!(l6, [48, 70, 48, 44, 56]);
    }

    #[test]
    fn vxlan_bytes() {
        let ip = inner(4);
        let e = Encap::Vxlan {
            vni: 0xabcdef,
            local_mac: LOCAL,
        };
        let b = encap(&e, &ip, 0);
        assert_eq!(&b[..8], &[0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        assert_eq!(&b[8..14], &PEER);
        assert_eq!(&b[14..20], &LOCAL);
        assert_eq!(&b[20..22], &[0x08, 0x00]);
        assert_eq!(&b[22..], &ip[..]);
        // The peer decapsulates with its own MAC as local.
        let peer = Encap::Vxlan {
            vni: 0xabcdef,
            local_mac: PEER,
        };
        assert_eq!(peer.decapsulate(&b), Ok(Decapsulated::Ip(&ip[..])));
        // We do not accept a frame addressed to the peer.
        let us = Encap::Vxlan {
            vni: 0xabcdef,
            local_mac: LOCAL,
        };
        assert_eq!(us.decapsulate(&b), Err(DropReason::BadInner));
        let other_vni = Encap::Vxlan {
            vni: 1,
            local_mac: PEER,
        };
        assert_eq!(other_vni.decapsulate(&b), Err(DropReason::WrongVni));
    }

    #[test]
    fn gre_bytes() {
        let ip = inner(4);
        let e = Encap::Gre {
            key: Some(0x01020304),
            checksum: false,
            sequence: false,
        };
        let b = encap(&e, &ip, 99);
        assert_eq!(&b[..8], &[0x20, 0, 0x08, 0x00, 1, 2, 3, 4]);
        assert_eq!(e.decapsulate(&b), Ok(Decapsulated::Ip(&ip[..])));
        let other = Encap::Gre {
            key: Some(5),
            checksum: false,
            sequence: false,
        };
        assert_eq!(other.decapsulate(&b), Err(DropReason::WrongVni));
        let keyless = Encap::Gre {
            key: None,
            checksum: false,
            sequence: false,
        };
        assert_eq!(keyless.decapsulate(&b), Err(DropReason::WrongVni));

        let e = Encap::Gre {
            key: Some(7),
            checksum: true,
            sequence: true,
        };
        let mut b = encap(&e, &ip, 99);
        assert_eq!(&b[..4], &[0xb0, 0, 0x08, 0x00]);
        assert_eq!(&b[12..16], &99u32.to_be_bytes());
        assert_eq!(crate::wire::checksum::checksum(&b), 0);
        assert_eq!(e.decapsulate(&b), Ok(Decapsulated::Ip(&ip[..])));
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert_eq!(e.decapsulate(&b), Err(DropReason::BadHeader));
    }

    #[test]
    fn inner_validation() {
        for e in ALL {
            let ip = inner(8);
            let mut b = encap(&e, &ip, 1);
            let h = e.header_len();
            // Padding after the inner packet is trimmed.
            b.extend_from_slice(&[0, 0, 0]);
            if let Encap::Gre { checksum: true, .. } = e {
                gre::fill_checksum(&mut b);
            }
            let local = match e {
                Encap::Vxlan { vni, .. } => Encap::Vxlan {
                    vni,
                    local_mac: PEER,
                },
                e => e,
            };
            assert_eq!(
                local.decapsulate(&b),
                Ok(Decapsulated::Ip(&ip[..])),
                "{e:?}"
            );
            // Truncated inner packet.
            let mut t = b[..h + 20 + 4].to_vec();
            if let Encap::Gre { checksum: true, .. } = e {
                gre::fill_checksum(&mut t);
            }
            assert_eq!(local.decapsulate(&t), Err(DropReason::Truncated), "{e:?}");
            // Not IP.
            let mut bad = vec![0u8; h];
            bad.extend_from_slice(&[0x50; 24]);
            assert_eq!(e.encapsulate(&mut bad, PEER, 0), Err(DropReason::BadInner));
            let mut empty = vec![0u8; h];
            assert_eq!(
                e.encapsulate(&mut empty, PEER, 0),
                Err(DropReason::Truncated)
            );
            assert!(local.decapsulate(&[]).is_err());
        }
    }

    #[test]
    fn ethertype_must_match_version() {
        let e = Encap::Vxlan {
            vni: 1,
            local_mac: PEER,
        };
        let mut b = encap(&e, &inner(8), 0);
        b[8..14].copy_from_slice(&PEER);
        b[20..22].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(e.decapsulate(&b), Err(DropReason::BadInner));
        b[20..22].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(e.decapsulate(&b), Err(DropReason::BadInner));

        let g = Encap::Gre {
            key: None,
            checksum: false,
            sequence: false,
        };
        let mut b = encap(&g, &inner(8), 0);
        b[2..4].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(g.decapsulate(&b), Err(DropReason::BadInner));
        b[2..4].copy_from_slice(&[0x65, 0x58]);
        assert_eq!(g.decapsulate(&b), Err(DropReason::BadInner));
    }

    #[test]
    fn vxlan_arp_passes_broadcast() {
        let e = Encap::Vxlan {
            vni: 1,
            local_mac: LOCAL,
        };
        let mut b = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        let mut frame = [0u8; 42];
        ether::emit(&mut frame, [0xff; 6], PEER, ether::ETHERTYPE_ARP);
        b.extend_from_slice(&frame);
        assert_eq!(e.decapsulate(&b), Ok(Decapsulated::Arp(&b[8..])));
        assert_eq!(e.decapsulate(&b[..49]), Err(DropReason::Truncated));
        assert_eq!(e.decapsulate(&b[..7]), Err(DropReason::Truncated));
        b[0] = 0;
        assert_eq!(e.decapsulate(&b), Err(DropReason::BadHeader));
    }

    fn encap_strategy() -> impl Strategy<Value = Encap> {
        prop_oneof![
            Just(Encap::Udp),
            (0..=vxlan::VNI_MAX, any::<[u8; 6]>())
                .prop_map(|(vni, local_mac)| Encap::Vxlan { vni, local_mac }),
            (any::<Option<u32>>(), any::<bool>(), any::<bool>()).prop_map(
                |(key, checksum, sequence)| Encap::Gre {
                    key,
                    checksum,
                    sequence
                }
            ),
        ]
    }

    /// A valid IPv4 or IPv6 packet with arbitrary contents.
    fn ip_strategy() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 40..200),
        )
            .prop_map(|(v6, mut b)| {
                if v6 {
                    b[0] = 0x60 | (b[0] & 0x0f);
                    let pl = (b.len() - 40) as u16;
                    b[4..6].copy_from_slice(&pl.to_be_bytes());
                } else {
                    b[0] = 0x45;
                    let tl = b.len() as u16;
                    b[2..4].copy_from_slice(&tl.to_be_bytes());
                    ipv4::Packet::new_unchecked(&mut b[..]).fill_checksum();
                }
                b
            })
    }

    proptest! {
        #[test]
        fn round_trip(e in encap_strategy(), ip in ip_strategy(), seq in any::<u32>()) {
            let mut buf = vec![0u8; e.header_len()];
            buf.extend_from_slice(&ip);
            e.encapsulate(&mut buf, PEER, seq).unwrap();
            let rx = match e {
                Encap::Vxlan { vni, .. } => Encap::Vxlan { vni, local_mac: PEER },
                e => e,
            };
            prop_assert_eq!(rx.decapsulate(&buf), Ok(Decapsulated::Ip(&ip[..])));
            prop_assert_eq!(buf.len(), ip.len() + e.header_len());
        }

        #[test]
        fn decapsulate_never_panics(e in encap_strategy(), buf in proptest::collection::vec(any::<u8>(), 0..120)) {
            match e.decapsulate(&buf) {
                Ok(Decapsulated::Ip(p)) => prop_assert!(ip::inner_packet(p).is_ok()),
                Ok(Decapsulated::Arp(f)) => prop_assert!(f.len() >= 42),
                Err(_) => {}
            }
        }

        #[test]
        fn encapsulate_never_panics(e in encap_strategy(), buf in proptest::collection::vec(any::<u8>(), 0..60)) {
            let mut b = buf.clone();
            let _ = e.encapsulate(&mut b, PEER, 0);
        }
    }
}
