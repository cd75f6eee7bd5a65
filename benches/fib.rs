//! Forwarding-table cost with 1000 peers (/24 subnets of 10.0.0.0/8): a destination lookup
//! that hits, one that misses, and the receive path's sender check.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use overlayd::fib::{Fib, Peer};
use std::hint::black_box;
use std::net::Ipv4Addr;

const PEERS: u32 = 1000;

fn subnet_base(i: u32) -> u32 {
    u32::from(Ipv4Addr::new(10, 0, 0, 0)) + ((i + 1) << 8)
}

fn table() -> Fib {
    let peers = (0..PEERS).map(|i| Peer {
        subnet: ipnet::Ipv4Net::new(Ipv4Addr::from(subnet_base(i)), 24).expect("/24"),
        public_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 0, 0)) + i + 1),
        mac: [2, 0, 0, 0, (i >> 8) as u8, i as u8],
    });
    let (fib, skipped) = Fib::new(
        "10.0.0.0/8".parse().expect("cidr"),
        24,
        Some("10.0.0.0/24".parse().expect("cidr")),
        peers,
    );
    assert!(skipped.is_empty());
    fib
}

fn bench(c: &mut Criterion) {
    let fib = table();
    // One host address in every peer's subnet, in a scattered order.
    let hits: Vec<Ipv4Addr> = (0..PEERS)
        .map(|i| Ipv4Addr::from(subnet_base((i * 7919) % PEERS) + 1 + i % 250))
        .collect();
    let misses: Vec<Ipv4Addr> = (0..PEERS)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + (i << 8) + 9))
        .collect();
    let senders: Vec<(Ipv4Addr, Ipv4Addr)> = fib
        .peers()
        .iter()
        .map(|p| {
            (
                p.public_ip,
                Ipv4Addr::from(u32::from(p.subnet.network()) + 5),
            )
        })
        .collect();
    assert!(hits.iter().all(|&d| fib.lookup(d).is_some()));
    assert!(misses.iter().all(|&d| fib.lookup(d).is_none()));

    let mut g = c.benchmark_group("fib_1000_peers");
    g.throughput(Throughput::Elements(u64::from(PEERS)));
    g.bench_function("lookup_hit", |b| {
        b.iter(|| {
            hits.iter()
                .filter(|&&d| fib.lookup(black_box(d)).is_some())
                .count()
        })
    });
    g.bench_function("lookup_miss", |b| {
        b.iter(|| {
            misses
                .iter()
                .filter(|&&d| fib.lookup(black_box(d)).is_some())
                .count()
        })
    });
    g.bench_function("sender_owns", |b| {
        b.iter(|| {
            senders
                .iter()
                .filter(|&&(p, s)| fib.sender_owns(black_box(p), black_box(s)))
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
