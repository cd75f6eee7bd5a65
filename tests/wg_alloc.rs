//! Proof that the wireguard engine allocates nothing per packet once a session is up: two
//! engines handshake in memory, then carry IPv4 packets both ways (encrypt, route the
//! datagram, decrypt, AllowedIPs check) while a counting global allocator watches this
//! thread (the test harness's own threads may allocate meanwhile on a loaded machine).

use std::net::SocketAddr;

mod common;

use common::{allocations_here, Counting};
use overlayd::wg::engine::{Engine, Identity, Io, PeerSpec, WgDrop};

#[global_allocator]
static A: Counting = Counting;

/// Keeps the last datagram in a fixed buffer and counts deliveries: no allocation itself.
struct Wire {
    buf: Box<[u8; 2048]>,
    len: usize,
    delivered: u64,
}

impl Io for Wire {
    fn send(&mut self, _: SocketAddr, d: &[u8]) {
        self.buf[..d.len()].copy_from_slice(d);
        self.len = d.len();
    }
    fn deliver(&mut self, _: &[u8]) {
        self.delivered += 1;
    }
}

fn engine(secret: u8) -> Engine {
    Engine::new(Identity {
        secret: [secret; 32].into(),
        psk: Some([9; 32]),
        keepalive: Some(25),
    })
}

fn packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 1400];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&1400u16.to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

#[test]
fn steady_state_encrypt_and_decrypt_allocate_nothing() {
    let (mut a, mut b) = (engine(1), engine(2));
    let (aa, ba): (SocketAddr, SocketAddr) = (
        "192.0.2.1:51820".parse().unwrap(),
        "192.0.2.2:51820".parse().unwrap(),
    );
    let spec = |e: &Engine, at, net: &str| PeerSpec {
        public_key: e.public_key(),
        endpoint: at,
        allowed: vec![net.parse().unwrap()],
    };
    a.set_peers(&[spec(&b, ba, "10.244.2.0/24")]);
    b.set_peers(&[spec(&a, aa, "10.244.1.0/24")]);
    let mut wa = Wire {
        buf: Box::new([0; 2048]),
        len: 0,
        delivered: 0,
    };
    let mut wb = Wire {
        buf: Box::new([0; 2048]),
        len: 0,
        delivered: 0,
    };
    let (mut out, mut tmp) = (vec![0u8; 2048], vec![0u8; 2048]);
    let to_b = packet([10, 244, 1, 5], [10, 244, 2, 7]);
    let to_a = packet([10, 244, 2, 7], [10, 244, 1, 5]);
    // Handshake: initiation, response, then the queued packet.
    a.send(&to_b, &mut out, &mut wa);
    tmp[..wa.len].copy_from_slice(&wa.buf[..wa.len]);
    b.receive(aa, &tmp[..wa.len], &mut out, &mut wb);
    tmp[..wb.len].copy_from_slice(&wb.buf[..wb.len]);
    a.receive(ba, &tmp[..wb.len], &mut out, &mut wa);
    tmp[..wa.len].copy_from_slice(&wa.buf[..wa.len]);
    b.receive(aa, &tmp[..wa.len], &mut out, &mut wb);
    assert_eq!(wb.delivered, 1, "the session is up");
    let before = allocations_here();
    for _ in 0..1000 {
        a.send(&to_b, &mut out, &mut wa);
        tmp[..wa.len].copy_from_slice(&wa.buf[..wa.len]);
        b.receive(aa, &tmp[..wa.len], &mut out, &mut wb);
        b.send(&to_a, &mut out, &mut wb);
        tmp[..wb.len].copy_from_slice(&wb.buf[..wb.len]);
        a.receive(ba, &tmp[..wb.len], &mut out, &mut wa);
        a.tick(&mut out, &mut wa);
    }
    let allocs = allocations_here() - before;
    assert_eq!((wb.delivered, wa.delivered), (1001, 1000));
    for w in WgDrop::ALL {
        assert_eq!((w, a.stats.dropped(w) + b.stats.dropped(w)), (w, 0));
    }
    assert_eq!(
        allocs, 0,
        "allocations for 2000 packets in the steady state"
    );
}
