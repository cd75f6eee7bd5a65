//! Receive side: coalesce decapsulated inner TCP segments into super-packets for the TUN.
//!
//! Inner IP packets are offered one by one ([`Coalescer::push`]); consecutive segments of
//! one TCP flow are appended into one of a fixed number of flow slots, each owning a
//! buffer allocated once in [`Coalescer::new`]. Output slices are a virtio net header
//! followed by an IP packet, ready for one `write` to a TUN opened with `IFF_VNET_HDR`:
//! a merged super-packet carries `NEEDS_CSUM` + `TCPV4`/`TCPV6` and the pseudo-header sum
//! in its TCP checksum field, so the kernel finishes (or resegments) it; anything else is
//! written unchanged behind an all-zero header.
//!
//! A segment is appended to a held flow only when it is the exact continuation: same
//! addresses, ports and ACK number, same TOS/TTL/DF (IPv4) or traffic class/flow label/hop
//! limit (IPv6), identical TCP data offset byte and options, identical flags apart from PSH
//! (and none of SYN/FIN/RST/URG/CWR), the next sequence number, a payload no larger than
//! the first segment's (a shorter one, or one with PSH, closes the flow and is emitted at
//! once), and a merged IP packet of at most [`MAX_IP_PACKET`] bytes. IPv4 packets must
//! have no options and not be fragments; IPv6 packets no extension headers. The IPv4 ID
//! and the TCP window are not compared: the super-packet keeps the first segment's.
//!
//! Checksums: merging rewrites the TCP checksum, which would launder a corrupted segment,
//! so every candidate's IPv4 header checksum and TCP checksum are verified before it is
//! held or appended. A segment that fails is passed through unmerged (after its flow's
//! held data) and the kernel drops it. Unmerged packets are never modified. A segment whose
//! sender left its checksum partial ([`Coalescer::push_with`]: a peer segmenting with
//! checksum offload over veth) has no checksum to verify; it merges all the same (the
//! kernel would take it unverified alone too, behind `NEEDS_CSUM`), and leaves unmerged
//! behind that header.
//!
//! Ordering: packets of one TCP flow (addresses + ports) leave in arrival order. Packets of
//! other flows and non-TCP packets may overtake segments still held; [`Coalescer::flush`]
//! when the receive side has drained its socket (at most a few `recvmmsg` batches) bounds
//! that delay.

use super::MAX_IP_PACKET;
use crate::wire::ip::{self, Version, PROTO_TCP};
use crate::wire::tcp::{self, flags};
use crate::wire::virtio::{self, VirtioNetHdr};
use crate::wire::{checksum, ipv4, ipv6};

/// Number of flows held at once; the least recently used is emitted to make room.
pub const SLOTS: usize = 8;

/// Largest packet the pass-through path can carry (an IPv6 packet with a full 16-bit
/// payload length). Longer input cannot be a valid IP packet; it is dropped and counted.
const MAX_PASS: usize = 40 + 65_535;

/// Counters the data path bumps; read by the metrics exporter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroStats {
    /// Packets offered to [`Coalescer::push`].
    pub packets_in: u64,
    /// Segments appended to a held one (they left inside a super-packet).
    pub merged: u64,
    /// Super-packets emitted (two or more segments).
    pub super_packets: u64,
    /// Packets emitted unchanged.
    pub passed: u64,
    /// TCP candidates whose IPv4 header or TCP checksum was wrong (passed unchanged).
    pub bad_checksum: u64,
    /// Packets longer than any IP packet can be, dropped.
    pub oversize: u64,
}

/// Identity of a TCP flow, in the byte order of the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FlowKey {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
}

impl FlowKey {
    fn version(&self) -> Version {
        if self.v6 {
            Version::Ipv6
        } else {
            Version::Ipv4
        }
    }
}

/// A TCP segment that may be merged.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    key: FlowKey,
    /// IP header length (20 or 40).
    ip_len: usize,
    /// IP + TCP header length.
    hdr_len: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

/// What [`classify`] found.
enum Class {
    /// Not TCP, or too broken to name its flow.
    Other,
    /// May be TCP but the ports cannot be read (IPv4 non-first fragment, IPv6 extension
    /// headers): every held flow between these two hosts leaves first. Ports are zero.
    MaybeTcp(FlowKey),
    /// TCP that must not be merged; the flow is named so its held data leaves first.
    TcpUnmergeable(FlowKey),
    /// TCP that may be merged.
    Mergeable(Candidate),
}

/// One held flow.
struct Slot {
    /// `virtio::LEN` bytes of header room, then the held IP packet.
    buf: Box<[u8]>,
    /// Length of the held IP packet; 0 when the slot is free.
    len: usize,
    /// The virtio header of the first segment should it leave alone (all-zero, or
    /// `NEEDS_CSUM` for a partial checksum).
    alone: VirtioNetHdr,
    key: FlowKey,
    ip_len: usize,
    hdr_len: usize,
    /// Payload size of the first segment: the super-packet's `gso_size`.
    gso: usize,
    next_seq: u32,
    segs: u32,
    /// Last use, for least-recently-used eviction.
    stamp: u64,
}

/// Coalesces inner TCP segments into TUN super-packets. See the module docs for the rules.
pub struct Coalescer {
    slots: Vec<Slot>,
    /// Header room + copy of a passed-through packet.
    scratch: Box<[u8]>,
    clock: u64,
    stats: GroStats,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    /// Allocates the [`SLOTS`] flow buffers and the pass-through buffer; nothing after.
    pub fn new() -> Self {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                buf: vec![0u8; virtio::LEN + MAX_IP_PACKET].into_boxed_slice(),
                len: 0,
                alone: VirtioNetHdr::default(),
                key: FlowKey::default(),
                ip_len: 0,
                hdr_len: 0,
                gso: 0,
                next_seq: 0,
                segs: 0,
                stamp: 0,
            })
            .collect();
        Self {
            slots,
            scratch: vec![0u8; virtio::LEN + MAX_PASS].into_boxed_slice(),
            clock: 0,
            stats: GroStats::default(),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> &GroStats {
        &self.stats
    }

    /// Offers one inner IP packet; may emit earlier packets and super-packets through
    /// `emit` (each slice = virtio header + IP packet).
    pub fn push(&mut self, pkt: &[u8], emit: &mut impl FnMut(&[u8])) {
        self.push_with(pkt, VirtioNetHdr::default(), emit);
    }

    /// Offers one inner IP packet with `alone`, the virtio header it goes with should it
    /// leave unmerged: all-zero when its checksum is complete (it is verified here before
    /// merging), or the `NEEDS_CSUM` header (no GSO) of a packet whose sender left its
    /// transport checksum partial ([`partial_checksum_hdr`](super::partial_checksum_hdr)).
    /// Such a checksum cannot be verified, and needs not be: the kernel trusts a
    /// `NEEDS_CSUM` packet's payload whether it comes alone or merged. It merges like a
    /// verified segment, so a peer that segments with partial checksums (whose datagrams
    /// the kernel's UDP GRO leaves uncoalesced) still reaches the device in super-packets.
    pub fn push_with(&mut self, pkt: &[u8], alone: VirtioNetHdr, emit: &mut impl FnMut(&[u8])) {
        self.stats.packets_in += 1;
        self.clock += 1;
        let partial = alone.needs_csum();
        let c = match classify(pkt) {
            Class::Other => return self.pass(pkt, alone, emit),
            Class::MaybeTcp(hosts) => {
                for i in 0..self.slots.len() {
                    let k = &self.slots[i].key;
                    if k.v6 == hosts.v6 && k.src == hosts.src && k.dst == hosts.dst {
                        self.emit_slot(i, emit);
                    }
                }
                return self.pass(pkt, alone, emit);
            }
            Class::TcpUnmergeable(key) => {
                if let Some(i) = self.find(&key) {
                    self.emit_slot(i, emit);
                }
                return self.pass(pkt, alone, emit);
            }
            Class::Mergeable(c) => c,
        };
        if !checksums_ok(pkt, &c, partial) {
            self.stats.bad_checksum += 1;
            if let Some(i) = self.find(&c.key) {
                self.emit_slot(i, emit);
            }
            return self.pass(pkt, alone, emit);
        }
        let i = match self.find(&c.key) {
            Some(i) if self.slots[i].can_append(pkt, &c) => {
                self.append(i, pkt, &c);
                let s = &self.slots[i];
                if c.flags & flags::PSH != 0 || c.payload < s.gso {
                    self.emit_slot(i, emit);
                }
                return;
            }
            Some(i) => {
                self.emit_slot(i, emit);
                i
            }
            None => {
                let i = self.victim();
                self.emit_slot(i, emit);
                i
            }
        };
        if c.flags & flags::PSH != 0 {
            // Nothing may follow it: no point holding it.
            return self.pass(pkt, alone, emit);
        }
        self.start(i, pkt, &c, alone);
    }

    /// Emits everything held (call at the end of each receive batch).
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        for i in 0..self.slots.len() {
            self.emit_slot(i, emit);
        }
    }

    fn find(&self, key: &FlowKey) -> Option<usize> {
        self.slots.iter().position(|s| s.len != 0 && s.key == *key)
    }

    /// A free slot, else the least recently used one.
    fn victim(&self) -> usize {
        if let Some(i) = self.slots.iter().position(|s| s.len == 0) {
            return i;
        }
        let mut best = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.stamp < self.slots[best].stamp {
                best = i;
            }
        }
        best
    }

    /// Emits `pkt` unchanged behind the virtio header `alone`.
    fn pass(&mut self, pkt: &[u8], alone: VirtioNetHdr, emit: &mut impl FnMut(&[u8])) {
        if pkt.len() > MAX_PASS {
            self.stats.oversize += 1;
            return;
        }
        self.stats.passed += 1;
        let out = &mut self.scratch[..virtio::LEN + pkt.len()];
        alone.emit(&mut out[..virtio::LEN]);
        out[virtio::LEN..].copy_from_slice(pkt);
        emit(out);
    }

    /// Holds `pkt` (already checked mergeable, ≤ MAX_IP_PACKET as its length field says)
    /// in the free slot `i`; `alone` is its header should nothing join it.
    fn start(&mut self, i: usize, pkt: &[u8], c: &Candidate, alone: VirtioNetHdr) {
        let s = &mut self.slots[i];
        s.buf[virtio::LEN..virtio::LEN + pkt.len()].copy_from_slice(pkt);
        s.alone = alone;
        s.len = pkt.len();
        s.key = c.key;
        s.ip_len = c.ip_len;
        s.hdr_len = c.hdr_len;
        s.gso = c.payload;
        s.next_seq = c.seq.wrapping_add(c.payload as u32);
        s.segs = 1;
        s.stamp = self.clock;
    }

    fn append(&mut self, i: usize, pkt: &[u8], c: &Candidate) {
        let s = &mut self.slots[i];
        let at = virtio::LEN + s.len;
        s.buf[at..at + c.payload].copy_from_slice(&pkt[c.hdr_len..]);
        s.len += c.payload;
        s.next_seq = s.next_seq.wrapping_add(c.payload as u32);
        s.segs += 1;
        s.stamp = self.clock;
        if c.flags & flags::PSH != 0 {
            let mut t = tcp::Packet::new_unchecked(&mut s.buf[virtio::LEN + s.ip_len..]);
            t.set_flags(t.flags() | flags::PSH);
        }
        self.stats.merged += 1;
    }

    /// Emits slot `i` if it holds anything, and frees it.
    fn emit_slot(&mut self, i: usize, emit: &mut impl FnMut(&[u8])) {
        let s = &mut self.slots[i];
        if s.len == 0 {
            return;
        }
        let len = s.len;
        s.len = 0;
        if s.segs == 1 {
            s.alone.emit(&mut s.buf[..virtio::LEN]);
            self.stats.passed += 1;
            return emit(&s.buf[..virtio::LEN + len]);
        }
        let (head, held) = s.buf.split_at_mut(virtio::LEN);
        let pkt = &mut held[..len];
        let v6 = s.key.v6;
        if v6 {
            ipv6::Packet::new_unchecked(&mut *pkt).set_payload_len((len - ipv6::HEADER_LEN) as u16);
        } else {
            // Held IPv4 packets have no options: the header checksum covers 20 bytes.
            let mut p = ipv4::Packet::new_unchecked(&mut *pkt);
            p.set_total_len(len as u16);
            p.fill_checksum();
        }
        let sum = ip::pseudo_header_sum(pkt, s.key.version(), PROTO_TCP, len - s.ip_len);
        tcp::Packet::new_unchecked(&mut pkt[s.ip_len..]).set_checksum(checksum::fold(sum));
        VirtioNetHdr {
            flags: virtio::F_NEEDS_CSUM,
            gso_type: if v6 {
                virtio::GSO_TCPV6
            } else {
                virtio::GSO_TCPV4
            },
            hdr_len: s.hdr_len as u16,
            gso_size: s.gso as u16,
            csum_start: s.ip_len as u16,
            csum_offset: tcp::CHECKSUM_OFFSET as u16,
        }
        .emit(head);
        self.stats.super_packets += 1;
        emit(&s.buf[..virtio::LEN + len]);
    }
}

impl Slot {
    /// `pkt` (described by `c`, same flow key) continues exactly what this slot holds.
    fn can_append(&self, pkt: &[u8], c: &Candidate) -> bool {
        let held = &self.buf[virtio::LEN..virtio::LEN + self.len];
        let same_ip = if self.key.v6 {
            let (h, p) = (
                ipv6::Packet::new_unchecked(held),
                ipv6::Packet::new_unchecked(pkt),
            );
            h.traffic_class() == p.traffic_class()
                && h.flow_label() == p.flow_label()
                && h.hop_limit() == p.hop_limit()
        } else {
            // TOS; DF (the flags/fragment word, MF and offset known 0); TTL.
            let (h, p) = (
                ipv4::Packet::new_unchecked(held),
                ipv4::Packet::new_unchecked(pkt),
            );
            h.tos() == p.tos() && h.frag_field() == p.frag_field() && h.ttl() == p.ttl()
        };
        if !same_ip || c.hdr_len != self.hdr_len || c.seq != self.next_seq {
            return false;
        }
        // Same header length on both: the data offsets agree.
        let h = tcp::Packet::new_unchecked(&held[self.ip_len..self.hdr_len]);
        let p = tcp::Packet::new_unchecked(&pkt[c.ip_len..c.hdr_len]);
        h.ack_number() == p.ack_number()
            && h.reserved() == p.reserved()
            && h.flags() == c.flags & !flags::PSH
            && h.options() == p.options()
            && c.payload <= self.gso
            && self.len + c.payload <= MAX_IP_PACKET
    }
}

/// Decides whether `pkt` is a mergeable TCP segment. Reads only within checked bounds.
fn classify(pkt: &[u8]) -> Class {
    let Some(version) = Version::of(pkt) else {
        return Class::Other;
    };
    let mut key = FlowKey::default();
    let (ip_len, total, mergeable_ip) = match version {
        Version::Ipv4 => {
            if pkt.len() < ipv4::HEADER_LEN {
                return Class::Other;
            }
            let p = ipv4::Packet::new_unchecked(pkt);
            let ihl = p.header_len();
            if p.protocol() != PROTO_TCP || ihl < ipv4::HEADER_LEN {
                return Class::Other;
            }
            key.src[..4].copy_from_slice(&p.src_addr().octets());
            key.dst[..4].copy_from_slice(&p.dst_addr().octets());
            if p.frag_offset() != 0 || pkt.len() < ihl + 4 {
                return Class::MaybeTcp(key);
            }
            // No options, no MF.
            (
                ihl,
                usize::from(p.total_len()),
                ihl == ipv4::HEADER_LEN && !p.more_frags(),
            )
        }
        Version::Ipv6 => {
            if pkt.len() < ipv6::HEADER_LEN {
                return Class::Other;
            }
            let p = ipv6::Packet::new_unchecked(pkt);
            key.v6 = true;
            key.src = p.src_addr().octets();
            key.dst = p.dst_addr().octets();
            match p.next_header() {
                // Extension headers are not walked: only TCP right after the fixed header
                // can be merged, TCP behind extension headers flushes the host pair.
                PROTO_TCP if pkt.len() >= ipv6::HEADER_LEN + 4 => {}
                PROTO_TCP => return Class::MaybeTcp(key),
                nh if ipv6::is_extension_header(nh) => return Class::MaybeTcp(key),
                _ => return Class::Other,
            }
            (ipv6::HEADER_LEN, p.total_len(), true)
        }
    };
    // At least the four bytes of the ports are there (checked above).
    let t = tcp::Packet::new_unchecked(&pkt[ip_len..]);
    key.src_port = t.src_port();
    key.dst_port = t.dst_port();
    let unmergeable = Class::TcpUnmergeable(key);
    if !mergeable_ip || total != pkt.len() || pkt.len() < ip_len + tcp::HEADER_LEN {
        return unmergeable;
    }
    let hdr_len = ip_len + t.header_len();
    let fl = t.flags();
    let refused = flags::SYN | flags::FIN | flags::RST | flags::URG | flags::CWR;
    if hdr_len < ip_len + tcp::HEADER_LEN
        || hdr_len >= pkt.len()
        || fl & refused != 0
        || pkt.len() > MAX_IP_PACKET
    {
        // Also a segment without payload (pure ACK): nothing to merge.
        return unmergeable;
    }
    Class::Mergeable(Candidate {
        key,
        ip_len,
        hdr_len,
        seq: t.seq_number(),
        flags: fl,
        payload: pkt.len() - hdr_len,
    })
}

/// The IPv4 header checksum (if any) and, unless the sender left it `partial`, the TCP
/// checksum of a candidate verify.
fn checksums_ok(pkt: &[u8], c: &Candidate, partial: bool) -> bool {
    if !c.key.v6 && !ipv4::Packet::new_unchecked(pkt).verify_checksum() {
        return false;
    }
    if partial {
        return true;
    }
    let l4 = &pkt[c.ip_len..];
    let sum = checksum::add(
        ip::pseudo_header_sum(pkt, c.key.version(), PROTO_TCP, l4.len()),
        l4,
    );
    checksum::fold(sum) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testutil::*;
    use crate::offload::tso::segment;
    use proptest::prelude::*;

    /// Pushes every packet, flushes, returns what was emitted (header, IP packet).
    fn run(pkts: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        let mut c = Coalescer::new();
        let mut out = Vec::new();
        let mut f =
            |b: &[u8]| out.push((VirtioNetHdr::parse(b).unwrap(), b[virtio::LEN..].to_vec()));
        for p in pkts {
            c.push(p, &mut f);
        }
        c.flush(&mut f);
        out
    }

    /// Splits a super-packet built from `data` into segments (as the sender's TSO would).
    fn split(v6: bool, seq: u32, opts: &[u8], psh: bool, data: &[u8], gso: u16) -> Vec<Vec<u8>> {
        let (hdr, sp) = as_tso(tcp(v6, seq, opts, psh, data), gso);
        let mut out = vec![0u8; 300_000];
        let lay = segment(&hdr, &sp, 0, &mut out).unwrap();
        (0..lay.count)
            .map(|i| out[lay.packet(i)].to_vec())
            .collect()
    }

    /// Zeroes the TCP checksum field so packets can be compared apart from it.
    fn no_csum(mut p: Vec<u8>) -> Vec<u8> {
        let t = ip::parse(&p).unwrap().header_len;
        tcp::Packet::new_unchecked(&mut p[t..]).set_checksum(0);
        p
    }

    /// Coalescing the segments of a split gives back the original packet.
    fn round_trip(
        v6: bool,
        len: usize,
        gso: u16,
        opts: &[u8],
        psh: bool,
    ) -> Result<(), TestCaseError> {
        let data = payload(len, 9);
        let orig = tcp(v6, 0xffff_ff00, opts, psh, &data);
        let segs = split(v6, 0xffff_ff00, opts, psh, &data, gso);
        let out = run(&segs);
        prop_assert_eq!(out.len(), 1, "one packet out");
        let (hdr, mut pkt) = out.into_iter().next().unwrap();
        if segs.len() == 1 {
            prop_assert_eq!(hdr, VirtioNetHdr::default());
            prop_assert_eq!(&pkt, &segs[0]);
        } else {
            let ip_len = if v6 { 40 } else { 20 };
            prop_assert_eq!(hdr.flags, virtio::F_NEEDS_CSUM);
            prop_assert_eq!(
                hdr.gso_type,
                if v6 {
                    virtio::GSO_TCPV6
                } else {
                    virtio::GSO_TCPV4
                }
            );
            prop_assert_eq!(usize::from(hdr.hdr_len), ip_len + 20 + opts.len());
            prop_assert_eq!(hdr.gso_size, gso);
            prop_assert_eq!(usize::from(hdr.csum_start), ip_len);
            prop_assert_eq!(hdr.csum_offset, 16);
            // Our own TSO accepts it and gives the same segments again.
            let mut again = vec![0u8; 300_000];
            let lay = segment(&hdr, &pkt, 0, &mut again).unwrap();
            prop_assert_eq!(lay.count, segs.len());
            for (i, s) in segs.iter().enumerate() {
                prop_assert_eq!(&again[lay.packet(i)], &s[..]);
            }
            kernel_finish(&hdr, &mut pkt);
            prop_assert!(tcp_csum_ok(&pkt));
        }
        prop_assert_eq!(no_csum(pkt), no_csum(orig));
        Ok(())
    }

    #[test]
    fn round_trip_64k() {
        let ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        round_trip(false, 65535 - 52, 1398, &ts, true).unwrap();
        round_trip(true, 65535 - 72, 1386, &ts, false).unwrap();
        round_trip(false, 1398 * 46, 1398, &[], false).unwrap();
        round_trip(false, 700, 1398, &[], false).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn round_trip_prop(
            v6 in any::<bool>(), len in 1usize..65400, gso in 200u16..9000,
            words in 0usize..=10, opt_byte in any::<u8>(), psh in any::<bool>(),
        ) {
            let opts = vec![opt_byte; words * 4];
            let max = if v6 { 65535 - 60 } else { 65535 - 40 } - opts.len();
            round_trip(v6, len.min(max), gso, &opts, psh)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            pkts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 0..12),
            heads in prop::collection::vec(prop::sample::select(vec![0x45u8, 0x46, 0x60, 0x4f, 0x00]), 12),
        ) {
            let mut c = Coalescer::new();
            let mut n = 0;
            for (mut p, h) in pkts.into_iter().zip(heads) {
                if let Some(b) = p.first_mut() { *b = h; }
                if p.len() > 9 && h >> 4 == 4 { p[9] = 6; }
                if p.len() > 6 && h >> 4 == 6 { p[6] = 6; }
                c.push(&p, &mut |_| n += 1);
            }
            c.flush(&mut |_| n += 1);
            prop_assert_eq!(n as u64, c.stats().passed + c.stats().super_packets);
        }
    }

    /// Two in-order full segments of one flow, as separate packets.
    fn pair(v6: bool) -> (Vec<u8>, Vec<u8>) {
        let a = tcp(v6, 1000, &[], false, &payload(1000, 1));
        let b = tcp(v6, 2000, &[], false, &payload(1000, 2));
        (a, b)
    }

    fn fix_tcp_csum(p: &mut [u8]) {
        let h = ip::parse(p).unwrap();
        let t = h.header_len;
        tcp::Packet::new_unchecked(&mut p[t..]).set_checksum(0);
        let s = ip::pseudo_header_sum(p, h.version, PROTO_TCP, p.len() - t);
        let c = !checksum::fold(checksum::add(s, &p[t..]));
        tcp::Packet::new_unchecked(&mut p[t..]).set_checksum(c);
    }

    fn refix(p: &mut [u8]) {
        if ip::parse(p).unwrap().version == Version::Ipv4 {
            ipv4::Packet::new_unchecked(&mut *p).fill_checksum();
        }
        fix_tcp_csum(p);
    }

    #[test]
    fn pair_merges() {
        for v6 in [false, true] {
            let (a, b) = pair(v6);
            let out = run(&[a, b]);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0.gso_size, 1000);
        }
    }

    /// Changing the second packet with `edit` must prevent the merge: both leave unchanged.
    fn refuses(v6: bool, what: &str, edit: impl Fn(&mut Vec<u8>)) {
        let (a, mut b) = pair(v6);
        edit(&mut b);
        refix(&mut b);
        let out = run(&[a.clone(), b.clone()]);
        assert_eq!(out.len(), 2, "{what}: merged");
        assert_eq!(out[0], (VirtioNetHdr::default(), a), "{what}");
        assert_eq!(out[1], (VirtioNetHdr::default(), b), "{what}");
    }

    /// Sets `bits` in the flags of the TCP header at `t`.
    fn add_flags(p: &mut [u8], t: usize, bits: u8) {
        let mut h = tcp::Packet::new_unchecked(&mut p[t..]);
        h.set_flags(h.flags() | bits);
    }

    #[test]
    fn refusals_v4() {
        let t = 20;
        refuses(false, "src addr", |p| p[15] ^= 1);
        refuses(false, "dst port", |p| p[t + 3] ^= 1);
        refuses(false, "ack", |p| p[t + 11] ^= 1);
        refuses(false, "tos", |p| p[1] = 4);
        refuses(false, "ttl", |p| p[8] = 63);
        refuses(false, "df", |p| p[6] ^= 0x40);
        refuses(false, "seq gap", |p| p[t + 7] ^= 1);
        refuses(false, "syn", |p| add_flags(p, t, flags::SYN));
        refuses(false, "fin", |p| add_flags(p, t, flags::FIN));
        refuses(false, "rst", |p| add_flags(p, t, flags::RST));
        refuses(false, "urg", |p| add_flags(p, t, flags::URG));
        refuses(false, "cwr", |p| add_flags(p, t, flags::CWR));
        refuses(false, "ece", |p| add_flags(p, t, flags::ECE));
        refuses(false, "mf", |p| p[6] |= 0x20);
        refuses(false, "longer", |p| {
            p.push(0);
            let l = p.len() as u16;
            ipv4::Packet::new_unchecked(&mut p[..]).set_total_len(l);
        });
        refuses(false, "ip options", |p| {
            p.splice(20..20, [1, 1, 1, 0]);
            p[0] = 0x46;
            let l = p.len() as u16;
            ipv4::Packet::new_unchecked(&mut p[..]).set_total_len(l);
        });
    }

    #[test]
    fn refusals_v6() {
        let t = 40;
        refuses(true, "traffic class", |p| p[1] ^= 0x10);
        refuses(true, "flow label", |p| p[3] ^= 1);
        refuses(true, "hop limit", |p| p[7] = 1);
        refuses(true, "ack", |p| p[t + 11] ^= 1);
        refuses(true, "fin", |p| add_flags(p, t, flags::FIN));
        refuses(true, "ext header", |p| {
            // Hop-by-hop options header (8 bytes of padding) before TCP.
            p.splice(40..40, [PROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
            p[6] = 0;
            let l = (p.len() - 40) as u16;
            ipv6::Packet::new_unchecked(&mut p[..]).set_payload_len(l);
        });
    }

    #[test]
    fn different_options_refused() {
        let a = tcp(false, 1000, &[1, 1, 1, 1], false, &payload(1000, 1));
        let b = tcp(false, 2000, &[1, 1, 1, 0], false, &payload(1000, 2));
        assert_eq!(run(&[a, b]).len(), 2);
        let b = tcp(false, 2000, &[], false, &payload(1000, 2));
        let a = tcp(false, 1000, &[1, 1, 1, 1], false, &payload(1000, 1));
        assert_eq!(run(&[a, b]).len(), 2);
    }

    #[test]
    fn bad_checksums_pass_unmerged() {
        for v6 in [false, true] {
            let (a, mut b) = pair(v6);
            let last = b.len() - 1;
            b[last] ^= 0xff; // corrupt payload, checksum left stale
            let out = run(&[a.clone(), b.clone()]);
            assert_eq!(
                out,
                vec![(VirtioNetHdr::default(), a), (VirtioNetHdr::default(), b)]
            );
        }
        let (a, mut b) = pair(false);
        b[8] = 1; // TTL changed, IPv4 header checksum stale
        let mut c = Coalescer::new();
        let mut n = 0;
        c.push(&a, &mut |_| n += 1);
        c.push(&b, &mut |_| n += 1);
        c.flush(&mut |_| n += 1);
        assert_eq!((n, c.stats().bad_checksum), (2, 1));
    }

    /// `p` as a sender with checksum offload leaves it: the TCP checksum field holds the
    /// pseudo-header sum; with the header [`partial_checksum_hdr`] finds for it.
    fn as_partial(mut p: Vec<u8>) -> (Vec<u8>, VirtioNetHdr) {
        let h = ip::parse(&p).unwrap();
        let t = h.header_len;
        let s = ip::pseudo_header_sum(&p, h.version, PROTO_TCP, p.len() - t);
        tcp::Packet::new_unchecked(&mut p[t..]).set_checksum(checksum::fold(s));
        let hdr = crate::offload::partial_checksum_hdr(&p, 0).expect("recognised as partial");
        (p, hdr)
    }

    #[test]
    fn partial_checksum_segments_merge_and_leave_alone_with_their_header() {
        for v6 in [false, true] {
            let (a, b) = pair(v6);
            let (pa, ha) = as_partial(a.clone());
            let (pb, hb) = as_partial(b.clone());
            assert!(!tcp_csum_ok(&pa), "a partial checksum does not verify");
            // Merged: the same super-packet as from the complete segments.
            let mut c = Coalescer::new();
            let mut out = Vec::new();
            let mut f =
                |x: &[u8]| out.push((VirtioNetHdr::parse(x).unwrap(), x[virtio::LEN..].to_vec()));
            c.push_with(&pa, ha, &mut f);
            c.push_with(&pb, hb, &mut f);
            c.flush(&mut f);
            assert_eq!(out, run(&[a.clone(), b]), "v6 {v6}");
            assert_eq!(c.stats().bad_checksum, 0);
            // Mixed with a complete one, in either order: merged too.
            let (a2, b2) = pair(v6);
            let mut c = Coalescer::new();
            let mut n = 0;
            c.push(&a2, &mut |_| n += 1);
            c.push_with(&pb, hb, &mut |_| n += 1);
            c.flush(&mut |_| n += 1);
            assert_eq!((n, c.stats().super_packets), (1, 1));
            let mut c = Coalescer::new();
            let mut n = 0;
            c.push_with(&pa, ha, &mut |_| n += 1);
            c.push(&b2, &mut |_| n += 1);
            c.flush(&mut |_| n += 1);
            assert_eq!((n, c.stats().super_packets), (1, 1));
            // Alone (held, then flushed): unchanged, behind NEEDS_CSUM, never all-zero.
            let mut c = Coalescer::new();
            let mut out = Vec::new();
            c.push_with(&pa, ha, &mut |x| out.push(x.to_vec()));
            c.flush(&mut |x| out.push(x.to_vec()));
            assert_eq!(out.len(), 1);
            assert_eq!(VirtioNetHdr::parse(&out[0]).unwrap(), ha);
            assert!(ha.needs_csum());
            assert_eq!(&out[0][virtio::LEN..], &pa[..]);
        }
    }

    #[test]
    fn partial_checksum_packets_not_merged_pass_with_their_header() {
        // A pure ACK (nothing to merge) and a PSH segment: passed at once, unchanged.
        let (ack, ha) = as_partial(tcp(false, 1000, &[], false, &[]));
        let (psh, hp) = as_partial(tcp(false, 1000, &[], true, &payload(100, 3)));
        // A stale IPv4 header checksum still refuses the merge.
        let (a, b) = pair(false);
        let (pa, hpa) = as_partial(a);
        let (mut pb, hpb) = as_partial(b);
        pb[8] = 1;
        let mut c = Coalescer::new();
        let mut out = Vec::new();
        let mut f = |x: &[u8]| out.push(x.to_vec());
        for (p, h) in [(&ack, ha), (&psh, hp), (&pa, hpa), (&pb, hpb)] {
            c.push_with(p, h, &mut f);
        }
        c.flush(&mut f);
        let want: Vec<Vec<u8>> = [(&ack, ha), (&psh, hp), (&pa, hpa), (&pb, hpb)]
            .iter()
            .map(|(p, h)| {
                let mut v = vec![0u8; virtio::LEN];
                h.emit(&mut v);
                v.extend_from_slice(p);
                v
            })
            .collect();
        assert_eq!(out, want);
        assert_eq!(c.stats().bad_checksum, 1);
    }

    #[test]
    fn psh_closes_and_only_last() {
        // PSH on the first: not held, the second starts a new flow.
        let a = tcp(false, 1000, &[], true, &payload(1000, 1));
        let b = tcp(false, 2000, &[], false, &payload(1000, 2));
        let out = run(&[a.clone(), b]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, a);
        // PSH on the second: merged and emitted at once with PSH.
        let a = tcp(false, 1000, &[], false, &payload(1000, 1));
        let b = tcp(false, 2000, &[], true, &payload(1000, 2));
        let c3 = tcp(false, 3000, &[], false, &payload(1000, 3));
        let out = run(&[a, b, c3]);
        assert_eq!(out.len(), 2);
        let t = tcp::Packet::new_unchecked(&out[0].1[20..]);
        assert_eq!(t.flags() & flags::PSH, flags::PSH);
        assert_eq!(out[0].0.gso_type, virtio::GSO_TCPV4);
        assert_eq!(out[1].0, VirtioNetHdr::default());
    }

    #[test]
    fn shorter_segment_closes_the_flow() {
        let a = tcp(false, 1000, &[], false, &payload(1000, 1));
        let b = tcp(false, 2000, &[], false, &payload(500, 2));
        let c3 = tcp(false, 2500, &[], false, &payload(500, 3));
        let out = run(&[a, b, c3]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.len(), 40 + 1500);
        assert_eq!(out[1].1.len(), 40 + 500);
    }

    #[test]
    fn size_limit_65535() {
        // 1460-byte segments: 44 fit (20 + 20 + 44·1460 = 64280), the 45th would not.
        let segs: Vec<Vec<u8>> = (0..46)
            .map(|i| tcp(false, i * 1460, &[], false, &payload(1460, i as u8)))
            .collect();
        let out = run(&segs);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.len(), 40 + 44 * 1460);
        assert_eq!(out[1].1.len(), 40 + 2 * 1460);
        assert!(out
            .iter()
            .all(|(h, p)| p.len() <= MAX_IP_PACKET && h.gso_size == 1460));
    }

    #[test]
    fn interleaved_flows_each_merge() {
        let a = split(false, 7, &[], true, &payload(10_000, 1), 1398);
        let b = split(true, 9, &[], true, &payload(10_000, 2), 1398);
        let mixed: Vec<Vec<u8>> = a
            .iter()
            .zip(&b)
            .flat_map(|(x, y)| [x.clone(), y.clone()])
            .collect();
        let out = run(&mixed);
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|(h, p)| h.gso_size == 1398 && p.len() > 10_000));
    }

    #[test]
    fn ordering_and_eviction() {
        // Non-TCP passes at once; a pure ACK of a held flow flushes it first.
        let (a, b) = pair(false);
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ipv4(SRC4, DST4, 64)
            .udp(1, 2)
            .write(&mut udp, b"x")
            .unwrap();
        let ack = tcp(false, 2000, &[], false, &[]);
        let out = run(&[a.clone(), udp.clone(), b.clone(), ack.clone()]);
        let pkts: Vec<Vec<u8>> = out.iter().map(|o| o.1.clone()).collect();
        assert_eq!(pkts[0], udp);
        assert_eq!(pkts[1].len(), 40 + 2000);
        assert_eq!(pkts[2], ack);
        // Nine flows: the oldest is evicted to make room, nothing is lost.
        let flows: Vec<Vec<u8>> = (0..9u16)
            .map(|f| {
                let mut p = tcp(false, 1, &[], false, &payload(100, 0));
                tcp::Packet::new_unchecked(&mut p[20..]).set_src_port(1000 + f);
                refix(&mut p);
                p
            })
            .collect();
        let mut c = Coalescer::new();
        let mut seen = Vec::new();
        for p in &flows {
            c.push(p, &mut |b| seen.push(b[virtio::LEN..].to_vec()));
        }
        assert_eq!(seen, vec![flows[0].clone()]);
        c.flush(&mut |b| seen.push(b[virtio::LEN..].to_vec()));
        assert_eq!(seen.len(), 9);
    }
}
