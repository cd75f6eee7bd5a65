//! Per-packet encapsulation cost: write the backend's header in front of a 1400-byte inner
//! IPv4 packet, then validate and strip it again as the receiver does, for every backend.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use overlayd::backend::{Decapsulated, Encap};
use overlayd::wire::{ip, ipv4};
use std::hint::black_box;
use std::net::Ipv4Addr;

const INNER_LEN: usize = 1400;
const LOCAL: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x00];
const PEER: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x02, 0x00];

/// A 1400-byte IPv4 UDP packet 10.244.1.2 → 10.244.2.3 with a valid header checksum.
fn inner() -> Vec<u8> {
    let mut b: Vec<u8> = (0..INNER_LEN).map(|i| (i * 7) as u8).collect();
    ipv4::Repr {
        src_addr: Ipv4Addr::new(10, 244, 1, 2),
        dst_addr: Ipv4Addr::new(10, 244, 2, 3),
        protocol: ip::PROTO_UDP,
        payload_len: (INNER_LEN - ipv4::HEADER_LEN) as u16,
        ttl: 64,
        ident: 0,
    }
    .emit(&mut b);
    b
}

/// (name, sender's backend, receiver's backend): vxlan receivers accept frames to their MAC.
fn backends() -> Vec<(&'static str, Encap, Encap)> {
    let vxlan = |local_mac| Encap::Vxlan { vni: 1, local_mac };
    let gre = |checksum, sequence| Encap::Gre {
        key: Some(1),
        checksum,
        sequence,
    };
    vec![
        ("udp", Encap::Udp, Encap::Udp),
        ("vxlan", vxlan(LOCAL), vxlan(PEER)),
        ("gre_key", gre(false, false), gre(false, false)),
        ("gre_key_csum_seq", gre(true, true), gre(true, true)),
    ]
}

fn bench(c: &mut Criterion) {
    let ip = inner();
    let mut g = c.benchmark_group("encap");
    g.throughput(Throughput::Bytes(INNER_LEN as u64));
    for (name, tx, rx) in backends() {
        let mut buf = vec![0u8; tx.header_len()];
        buf.extend_from_slice(&ip);
        tx.encapsulate(&mut buf, PEER, 0)
            .expect("valid inner packet");
        assert_eq!(rx.decapsulate(&buf), Ok(Decapsulated::Ip(&ip[..])));
        let mut seq = 0u32;
        g.bench_function(format!("{name}_encap_decap_1400"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                tx.encapsulate(black_box(&mut buf), PEER, seq)
                    .expect("valid inner packet");
                match rx.decapsulate(black_box(&buf)) {
                    Ok(Decapsulated::Ip(p)) => p.len(),
                    _ => unreachable!("own packet decapsulates"),
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
