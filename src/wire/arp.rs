//! ARP for Ethernet and IPv4 (RFC 826), the only kind a VXLAN peer sends.
//!
//! A checked [`Packet`] view over the 28-byte ARP body, a [`Repr`], and [`reply_to`], which
//! answers a request inside an inner Ethernet frame on behalf of overlay addresses so a
//! kernel VXLAN peer without static neighbour entries can still resolve them. Pure: no I/O,
//! no allocation.

use std::net::Ipv4Addr;

use crate::drop::DropReason;
use crate::wire::ether::{self, MacAddr};

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;
/// Length of a whole Ethernet frame carrying one (no padding).
pub const FRAME_LEN: usize = ether::HEADER_LEN + PACKET_LEN;

/// Operation: request.
pub const OP_REQUEST: u16 = 1;
/// Operation: reply.
pub const OP_REPLY: u16 = 2;

const HTYPE_ETHERNET: u16 = 1;

mod field {
    use std::ops::Range;

    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// A read/write view of an Ethernet/IPv4 ARP packet (the body after the Ethernet header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`] passes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after checking it holds 28 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` unless the buffer holds a 28-byte Ethernet/IPv4 ARP packet.
    pub fn check_len(&self) -> Result<(), DropReason> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            Err(DropReason::Truncated)
        } else {
            Ok(())
        }
    }

    /// Hardware type (1 = Ethernet).
    pub fn hardware_type(&self) -> u16 {
        self.u16_at(field::HTYPE.start)
    }

    /// Protocol type (0x0800 = IPv4).
    pub fn protocol_type(&self) -> u16 {
        self.u16_at(field::PTYPE.start)
    }

    /// Hardware address length (6).
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length (4).
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Operation.
    pub fn operation(&self) -> u16 {
        self.u16_at(field::OPER.start)
    }

    /// Sender hardware address.
    pub fn sender_mac(&self) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SHA]);
        MacAddr(m)
    }

    /// Sender protocol address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Target hardware address.
    pub fn target_mac(&self) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::THA]);
        MacAddr(m)
    }

    /// Target protocol address.
    pub fn target_ip(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::TPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    fn u16_at(&self, off: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[off], b[off + 1]])
    }
}

/// A validated Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl Repr {
    /// `BadInner` unless hardware type is Ethernet, protocol IPv4, lengths 6 and 4.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, DropReason> {
        if p.hardware_type() != HTYPE_ETHERNET
            || p.protocol_type() != ether::ETHERTYPE_IPV4
            || p.hardware_len() != 6
            || p.protocol_len() != 4
        {
            return Err(DropReason::BadInner);
        }
        Ok(Repr {
            operation: p.operation(),
            sender_mac: p.sender_mac(),
            sender_ip: p.sender_ip(),
            target_mac: p.target_mac(),
            target_ip: p.target_ip(),
        })
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the 28-byte packet at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`PACKET_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..PACKET_LEN];
        b[field::HTYPE].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        b[field::PTYPE].copy_from_slice(&ether::ETHERTYPE_IPV4.to_be_bytes());
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        b[field::OPER].copy_from_slice(&self.operation.to_be_bytes());
        b[field::SHA].copy_from_slice(&self.sender_mac.0);
        b[field::SPA].copy_from_slice(&self.sender_ip.octets());
        b[field::THA].copy_from_slice(&self.target_mac.0);
        b[field::TPA].copy_from_slice(&self.target_ip.octets());
    }
}

/// Answers an ARP request. `request_frame` is a whole Ethernet frame; when it is an
/// Ethernet/IPv4 ARP request from a unicast sender, not a gratuitous announcement, and
/// `answer` accepts its target IP, writes a 42-byte Ethernet + ARP reply (to the sender,
/// from `our_mac`, saying target IP is at `our_mac`) into `out` and returns its length.
/// `None` for anything else, or when `out` is shorter than [`FRAME_LEN`].
///
/// RFC 5227 probes (sender IP 0.0.0.0) are answered like Linux does, to the prober's MAC
/// with target IP 0.0.0.0, so duplicate-address detection sees the conflict.
pub fn reply_to(
    request_frame: &[u8],
    our_mac: [u8; 6],
    answer: impl Fn(Ipv4Addr) -> bool,
    out: &mut [u8],
) -> Option<usize> {
    let frame = ether::Frame::new_checked(request_frame).ok()?;
    if frame.ethertype() != ether::ETHERTYPE_ARP {
        return None;
    }
    let req = Repr::parse(&Packet::new_checked(frame.payload()).ok()?).ok()?;
    if req.operation != OP_REQUEST
        || !req.sender_mac.is_unicast()
        || req.sender_ip == req.target_ip
        || !answer(req.target_ip)
    {
        return None;
    }
    let out = out.get_mut(..FRAME_LEN)?;
    ether::emit(out, req.sender_mac.0, our_mac, ether::ETHERTYPE_ARP);
    Repr {
        operation: OP_REPLY,
        sender_mac: MacAddr(our_mac),
        sender_ip: req.target_ip,
        target_mac: req.sender_mac,
        target_ip: req.sender_ip,
    }
    .emit(&mut out[ether::HEADER_LEN..]);
    Some(FRAME_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The request of kernel-vxlan-arp-vni11259375.pcap: who has 10.99.0.2, tell 10.99.0.1.
    const REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xe6, 0xa2, 0xbb, 0x28, 0xcb, 0x02, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0xe6, 0xa2, 0xbb, 0x28, 0xcb, 0x02, 0x0a, 0x63,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x00, 0x02,
    ];
    /// The kernel's reply from the same capture: 10.99.0.2 is at e2:f8:fa:cc:ed:94.
    const REPLY: [u8; 42] = [
        0xe6, 0xa2, 0xbb, 0x28, 0xcb, 0x02, 0xe2, 0xf8, 0xfa, 0xcc, 0xed, 0x94, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0xe2, 0xf8, 0xfa, 0xcc, 0xed, 0x94, 0x0a, 0x63,
        0x00, 0x02, 0xe6, 0xa2, 0xbb, 0x28, 0xcb, 0x02, 0x0a, 0x63, 0x00, 0x01,
    ];
    const OUR_MAC: [u8; 6] = [0xe2, 0xf8, 0xfa, 0xcc, 0xed, 0x94];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&REQUEST[14..]).unwrap();
        let r = Repr::parse(&p).unwrap();
        assert_eq!(r.operation, OP_REQUEST);
        assert_eq!(r.sender_mac, MacAddr([0xe6, 0xa2, 0xbb, 0x28, 0xcb, 0x02]));
        assert_eq!(r.sender_ip, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(r.target_mac, MacAddr([0; 6]));
        assert_eq!(r.target_ip, Ipv4Addr::new(10, 99, 0, 2));
    }

    #[test]
    fn construct() {
        let r = Repr::parse(&Packet::new_checked(&REQUEST[14..]).unwrap()).unwrap();
        let mut b = [0u8; 28];
        r.emit(&mut b);
        assert_eq!(b[..], REQUEST[14..]);
    }

    #[test]
    fn reply_matches_kernel() {
        let mut out = [0u8; 64];
        let n = reply_to(
            &REQUEST,
            OUR_MAC,
            |ip| ip == Ipv4Addr::new(10, 99, 0, 2),
            &mut out,
        );
        assert_eq!(n, Some(42));
        assert_eq!(out[..42], REPLY);
    }

    #[test]
    fn no_reply() {
        let mut out = [0u8; 64];
        let yes = |_| true;
        // Not ours.
        assert_eq!(reply_to(&REQUEST, OUR_MAC, |_| false, &mut out), None);
        // A reply is not answered.
        assert_eq!(reply_to(&REPLY, OUR_MAC, yes, &mut out), None);
        // Output too small, input truncated.
        assert_eq!(reply_to(&REQUEST, OUR_MAC, yes, &mut out[..41]), None);
        assert_eq!(reply_to(&REQUEST[..41], OUR_MAC, yes, &mut out), None);
        // Not ARP.
        let mut r = REQUEST;
        r[13] = 0x00;
        assert_eq!(reply_to(&r, OUR_MAC, yes, &mut out), None);
        // Gratuitous announcement (sender IP == target IP).
        let mut r = REQUEST;
        r[31] = 2;
        assert_eq!(reply_to(&r, OUR_MAC, yes, &mut out), None);
        // Multicast sender MAC.
        let mut r = REQUEST;
        r[22] = 0x01;
        assert_eq!(reply_to(&r, OUR_MAC, yes, &mut out), None);
        // Wrong protocol type.
        let mut r = REQUEST;
        r[16] = 0x86;
        assert_eq!(reply_to(&r, OUR_MAC, yes, &mut out), None);
    }

    #[test]
    fn probe_answered_to_zero() {
        let mut r = REQUEST;
        r[28..32].fill(0);
        let mut out = [0u8; 42];
        assert_eq!(reply_to(&r, OUR_MAC, |_| true, &mut out), Some(42));
        let rep = Repr::parse(&Packet::new_checked(&out[14..]).unwrap()).unwrap();
        assert_eq!(rep.target_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(rep.sender_ip, Ipv4Addr::new(10, 99, 0, 2));
    }

    proptest! {
        #[test]
        fn round_trip(op in any::<u16>(), sm in any::<[u8; 6]>(), si in any::<[u8; 4]>(),
                      tm in any::<[u8; 6]>(), ti in any::<[u8; 4]>()) {
            let r = Repr { operation: op, sender_mac: MacAddr(sm), sender_ip: si.into(),
                           target_mac: MacAddr(tm), target_ip: ti.into() };
            let mut b = [0u8; PACKET_LEN];
            r.emit(&mut b);
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()), Ok(r));
        }

        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..60), n in 0usize..60) {
            if let Ok(p) = Packet::new_checked(&buf[..]) {
                let _ = Repr::parse(&p);
            }
            let mut out = vec![0u8; n];
            if let Some(len) = reply_to(&buf, OUR_MAC, |_| true, &mut out) {
                prop_assert_eq!(len, FRAME_LEN);
            }
        }
    }
}
