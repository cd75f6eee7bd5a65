//! Offload throughput: TSO split of a 64 KiB TCPv4 super-packet into 1398-byte segments
//! (50 bytes of headroom each) and its headers-only variant for the zero-copy send, GRO
//! coalescing of those segments back into one, and the
//! Internet checksum over the same 64 KiB.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use overlayd::offload::{segment, segment_headers, Coalescer};
use overlayd::wire::checksum;
use overlayd::wire::virtio::{self, VirtioNetHdr};
use std::hint::black_box;

const GSO: u16 = 1398;
const HEADROOM: usize = 50;

/// A 64 KiB TCPv4 super-packet (TSO, partial checksum) with 46 full segments + a tail.
fn super_packet() -> (VirtioNetHdr, Vec<u8>) {
    let data: Vec<u8> = (0..65535 - 52).map(|i: usize| (i * 7) as u8).collect();
    let ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let mut pkt = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
        .tcp(40000, 5201, 1, 502)
        .ack(7)
        .options_raw(&ts)
        .expect("12 option bytes")
        .write(&mut pkt, &data)
        .expect("fits");
    let partial = checksum::fold(checksum::pseudo_header_v4(
        [10, 244, 1, 2].into(),
        [10, 244, 2, 3].into(),
        6,
        (pkt.len() - 20) as u16,
    ));
    pkt[36..38].copy_from_slice(&partial.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: virtio::F_NEEDS_CSUM,
        gso_type: virtio::GSO_TCPV4,
        hdr_len: 52,
        gso_size: GSO,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, pkt)
}

fn bench(c: &mut Criterion) {
    let (hdr, sp) = super_packet();
    let mut out = vec![0u8; 128 * 1024];
    let lay = segment(&hdr, &sp, HEADROOM, &mut out).expect("valid");
    let segs: Vec<Vec<u8>> = (0..lay.count)
        .map(|i| out[lay.packet(i)].to_vec())
        .collect();

    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(sp.len() as u64));
    g.bench_function("checksum_64k", |b| {
        b.iter(|| checksum::fold(checksum::add(0, black_box(&sp))))
    });
    g.bench_function("tso_split_64k_v4", |b| {
        b.iter(|| segment(black_box(&hdr), black_box(&sp), HEADROOM, &mut out).expect("valid"))
    });
    let mut hdrs = vec![0u8; 32 * 1024];
    g.bench_function("tso_headers_64k_v4", |b| {
        b.iter(|| {
            segment_headers(black_box(&hdr), black_box(&sp), HEADROOM, &mut hdrs)
                .expect("valid")
                .expect("a super-packet")
        })
    });
    let mut co = Coalescer::new();
    g.bench_function(format!("gro_coalesce_{}_segments_v4", segs.len()), |b| {
        b.iter(|| {
            let mut n = 0usize;
            let mut sink = |p: &[u8]| n += p.len();
            for s in &segs {
                co.push(black_box(s), &mut sink);
            }
            co.flush(&mut sink);
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
