//! TSO then GRO: a TCP super-packet built from the input is segmented as the transmit path
//! does, the segments are coalesced as the receive path does, and the TCP payload bytes
//! must come back whole and in order. Without FIN/CWR (which GRO never merges) the result
//! must be one packet equal to the original apart from the TCP checksum field.
//!
//! Input layout: `[flags, option_words, gso(2), seq(4), len(2), tos, ttl, ident(2),
//! headroom, options and payload pattern...]`; flags bit 0 = IPv6, 1 = PSH, 2 = FIN,
//! 3 = CWR, 4 = ECE. The payload is `len` bytes cycling through the pattern.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlayd::offload::{plan, segment, Coalescer};
use overlayd::wire::checksum;
use overlayd::wire::virtio::{self, VirtioNetHdr};
use std::net::{Ipv4Addr, Ipv6Addr};

const SRC4: [u8; 4] = [10, 244, 1, 2];
const DST4: [u8; 4] = [10, 244, 2, 3];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2];
const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3];
const ACK: u8 = 0x10;

struct Input {
    v6: bool,
    flags: u8,
    opts: Vec<u8>,
    gso: u16,
    seq: u32,
    tos: u8,
    ttl: u8,
    ident: u16,
    headroom: usize,
    data: Vec<u8>,
}

fn derive(b: &[u8]) -> Option<Input> {
    let hdr = b.get(..15)?;
    let rest = &b[15..];
    let v6 = hdr[0] & 1 != 0;
    let mut flags = ACK;
    for (bit, f) in [(2, 0x08), (4, 0x01), (8, 0x80), (16, 0x40)] {
        if hdr[0] & bit != 0 {
            flags |= f;
        }
    }
    let words = usize::from(hdr[1] % 11);
    let opts: Vec<u8> = (0..words * 4)
        .map(|i| rest.get(i).copied().unwrap_or(1))
        .collect();
    let pattern = rest.get(opts.len()..).unwrap_or(&[]);
    // At least 64 bytes per segment keeps a 64 KiB packet to ~1000 segments.
    let gso = 64 + u16::from_be_bytes([hdr[2], hdr[3]]) % 9000;
    let ip_len = if v6 { 40 } else { 20 };
    let max = 65_535 - ip_len - 20 - opts.len();
    let len = usize::from(u16::from_be_bytes([hdr[8], hdr[9]])).min(max);
    let data = (0..len)
        .map(|i| {
            if pattern.is_empty() {
                i as u8
            } else {
                pattern[i % pattern.len()]
            }
        })
        .collect();
    Some(Input {
        v6,
        flags,
        opts,
        gso,
        seq: u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
        tos: hdr[10],
        ttl: hdr[11],
        ident: u16::from_be_bytes([hdr[12], hdr[13]]),
        headroom: usize::from(hdr[14] % 64),
        data,
    })
}

/// The super-packet as the kernel hands it over: partial TCP checksum, and its header.
fn super_packet(i: &Input) -> (VirtioNetHdr, Vec<u8>) {
    let ip_len = if i.v6 { 40 } else { 20 };
    let l4_len = 20 + i.opts.len() + i.data.len();
    let mut p = Vec::with_capacity(ip_len + l4_len);
    let pseudo = if i.v6 {
        p.extend_from_slice(&[0x60 | i.tos >> 4, i.tos << 4, 0, 0]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        p.extend_from_slice(&[6, i.ttl]);
        p.extend_from_slice(&SRC6);
        p.extend_from_slice(&DST6);
        checksum::pseudo_header_v6(Ipv6Addr::from(SRC6), Ipv6Addr::from(DST6), 6, l4_len as u32)
    } else {
        p.extend_from_slice(&[0x45, i.tos]);
        p.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        p.extend_from_slice(&i.ident.to_be_bytes());
        p.extend_from_slice(&[0x40, 0, i.ttl, 6, 0, 0]);
        p.extend_from_slice(&SRC4);
        p.extend_from_slice(&DST4);
        let c = checksum::checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        checksum::pseudo_header_v4(Ipv4Addr::from(SRC4), Ipv4Addr::from(DST4), 6, l4_len as u16)
    };
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&5201u16.to_be_bytes());
    p.extend_from_slice(&i.seq.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    let doff = 20 + i.opts.len();
    p.extend_from_slice(&[((doff / 4) as u8) << 4, i.flags]);
    p.extend_from_slice(&502u16.to_be_bytes());
    p.extend_from_slice(&checksum::fold(pseudo).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&i.opts);
    p.extend_from_slice(&i.data);
    let hdr = VirtioNetHdr {
        flags: virtio::F_NEEDS_CSUM,
        gso_type: if i.v6 {
            virtio::GSO_TCPV6
        } else {
            virtio::GSO_TCPV4
        },
        hdr_len: (ip_len + doff) as u16,
        gso_size: i.gso,
        csum_start: ip_len as u16,
        csum_offset: 16,
    };
    (hdr, p)
}

/// (IP header length, TCP header offset end, total length) of an emitted IP packet.
fn tcp_payload(p: &[u8]) -> &[u8] {
    let (hl, total) = if p[0] >> 4 == 6 {
        (40, 40 + usize::from(u16::from_be_bytes([p[4], p[5]])))
    } else {
        (
            usize::from(p[0] & 15) * 4,
            usize::from(u16::from_be_bytes([p[2], p[3]])),
        )
    };
    let doff = usize::from(p[hl + 12] >> 4) * 4;
    &p[hl + doff..total]
}

/// The packet with its TCP checksum field zeroed.
fn no_csum(p: &[u8]) -> Vec<u8> {
    let hl = if p[0] >> 4 == 6 {
        40
    } else {
        usize::from(p[0] & 15) * 4
    };
    let mut v = p.to_vec();
    v[hl + 16..hl + 18].fill(0);
    v
}

fuzz_target!(|bytes: &[u8]| {
    let Some(input) = derive(bytes) else {
        return;
    };
    let (hdr, sp) = super_packet(&input);
    let lay = plan(&hdr, &sp, input.headroom).expect("a well-formed super-packet plans");
    let mut out = vec![0u8; lay.out_len()];
    let lay2 = segment(&hdr, &sp, input.headroom, &mut out).expect("and segments");
    assert_eq!(lay, lay2);
    let expect_count = input.data.len().div_ceil(usize::from(input.gso)).max(1);
    assert_eq!(lay.count, expect_count);

    let mut co = Coalescer::new();
    let mut emitted: Vec<(VirtioNetHdr, Vec<u8>)> = Vec::new();
    let mut sink = |b: &[u8]| {
        let h = VirtioNetHdr::parse(b).expect("emitted with a virtio header");
        emitted.push((h, b[virtio::LEN..].to_vec()));
    };
    for i in 0..lay.count {
        co.push(&out[lay.packet(i)], &mut sink);
    }
    co.flush(&mut sink);
    assert_eq!(co.stats().bad_checksum, 0, "TSO wrote a bad checksum");

    let mut got = Vec::with_capacity(input.data.len());
    for (_, p) in &emitted {
        got.extend_from_slice(tcp_payload(p));
    }
    assert!(got == input.data, "payload bytes changed in TSO+GRO");

    if input.flags & (0x01 | 0x80) == 0 {
        assert_eq!(
            emitted.len(),
            1,
            "segments of one super-packet were not all merged"
        );
        let (h, p) = &emitted[0];
        assert_eq!(
            no_csum(p),
            no_csum(&sp),
            "merged packet differs from the original"
        );
        if lay.count > 1 {
            assert_eq!(h.gso_type, hdr.gso_type);
            assert_eq!(h.gso_size, hdr.gso_size);
            assert_eq!(h.hdr_len, hdr.hdr_len);
        }
    }
});
