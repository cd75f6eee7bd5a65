//! Proof that the wireguard engine allocates nothing per packet once a session is up: two
//! engines handshake in memory, then carry IPv4 packets both ways (encrypt, route the
//! datagram, decrypt, AllowedIPs check), and TCP super-packets the way the data path thread
//! carries them (segmented, sealed into one GSO buffer, cut at the stride as UDP GRO hands
//! it over, opened, coalesced back into super-packets), while a counting global allocator
//! watches this thread (the test harness's own threads may allocate meanwhile on a loaded
//! machine).

use std::net::SocketAddr;

mod common;

use common::{allocations_here, Counting};
use overlayd::offload::{tso, Coalescer};
use overlayd::wg::engine::{Engine, Identity, Io, PeerSpec, WgDrop};
use overlayd::wire::virtio::{self, VirtioNetHdr};

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

const AA: &str = "192.0.2.1:51820";
const BA: &str = "192.0.2.2:51820";

fn wire() -> Wire {
    Wire {
        buf: Box::new([0; 2048]),
        len: 0,
        delivered: 0,
    }
}

/// Engines A (10.244.1.0/24) and B (10.244.2.0/24), handshaken through `wa` and `wb`: A's
/// first packet `to_b` has been delivered.
fn session(to_b: &[u8], wa: &mut Wire, wb: &mut Wire) -> (Engine, Engine) {
    let (mut a, mut b) = (engine(1), engine(2));
    let (aa, ba): (SocketAddr, SocketAddr) = (AA.parse().unwrap(), BA.parse().unwrap());
    let spec = |e: &Engine, at, net: &str| PeerSpec {
        public_key: e.public_key(),
        endpoint: at,
        allowed: vec![net.parse().unwrap()],
    };
    a.set_peers(&[spec(&b, ba, "10.244.2.0/24")]);
    b.set_peers(&[spec(&a, aa, "10.244.1.0/24")]);
    let (mut out, mut tmp) = (vec![0u8; 2048], vec![0u8; 2048]);
    // Handshake: initiation, response, then the queued packet.
    a.send(to_b, &mut out, wa);
    tmp[..wa.len].copy_from_slice(&wa.buf[..wa.len]);
    b.receive(aa, &tmp[..wa.len], &mut out, wb);
    tmp[..wb.len].copy_from_slice(&wb.buf[..wb.len]);
    a.receive(ba, &tmp[..wb.len], &mut out, wa);
    tmp[..wa.len].copy_from_slice(&wa.buf[..wa.len]);
    b.receive(aa, &tmp[..wa.len], &mut out, wb);
    assert_eq!(wb.delivered, 1, "the session is up");
    (a, b)
}

#[test]
fn steady_state_encrypt_and_decrypt_allocate_nothing() {
    let (aa, ba): (SocketAddr, SocketAddr) = (AA.parse().unwrap(), BA.parse().unwrap());
    let (mut wa, mut wb) = (wire(), wire());
    let to_b = packet([10, 244, 1, 5], [10, 244, 2, 7]);
    let to_a = packet([10, 244, 2, 7], [10, 244, 1, 5]);
    let (mut a, mut b) = session(&to_b, &mut wa, &mut wb);
    let (mut out, mut tmp) = (vec![0u8; 2048], vec![0u8; 2048]);
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

/// What a TUN with TSO hands over: a virtio header asking for TCPv4 segmentation at `mss`,
/// and an IPv4 + TCP packet of `len` payload bytes from 10.244.1.5 to 10.244.2.7.
fn super_packet(len: usize, mss: u16) -> (VirtioNetHdr, Vec<u8>) {
    let total = 40 + len;
    let mut p: Vec<u8> = (0..total).map(|i| (i * 7) as u8).collect();
    p[..40].fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 244, 1, 5]);
    p[16..20].copy_from_slice(&[10, 244, 2, 7]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&1u32.to_be_bytes());
    p[32] = 0x50; // data offset: 5 words
    p[33] = 0x10; // ACK
    p[34..36].copy_from_slice(&502u16.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: virtio::F_NEEDS_CSUM,
        gso_type: virtio::GSO_TCPV4,
        hdr_len: 40,
        gso_size: mss,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, p)
}

/// B's side of the super-packet path: every decrypted segment offered to the coalescer,
/// whose super-packets are counted (no allocation).
struct Coalescing {
    coal: Coalescer,
    supers: u64,
    bytes: u64,
}

impl Io for Coalescing {
    fn send(&mut self, _: SocketAddr, _: &[u8]) {}
    fn deliver(&mut self, p: &[u8]) {
        let (supers, bytes) = (&mut self.supers, &mut self.bytes);
        self.coal.push(p, &mut |s| {
            *supers += 1;
            *bytes += (s.len() - virtio::LEN) as u64;
        });
    }
}

#[test]
fn super_packets_sealed_in_one_buffer_and_coalesced_allocate_nothing() {
    let aa: SocketAddr = AA.parse().unwrap();
    let (mut wa, mut wb) = (wire(), wire());
    let (mut a, mut b) = session(&packet([10, 244, 1, 5], [10, 244, 2, 7]), &mut wa, &mut wb);
    let (hdr, sp) = super_packet(60_000, 1368);
    let (mut segs, mut sealed_buf, mut open) =
        (vec![0u8; 256 << 10], vec![0u8; 512 << 10], vec![0u8; 2048]);
    let mut rx = Coalescing {
        coal: Coalescer::new(),
        supers: 0,
        bytes: 0,
    };
    let before = allocations_here();
    for _ in 0..200 {
        let lay = tso::segment(&hdr, &sp, 0, &mut segs).expect("a valid super-packet");
        let (_, sealed) = a
            .seal(&segs, &lay, &mut sealed_buf, &mut wa)
            .expect("the session is up");
        for d in sealed_buf[..sealed.out_len()].chunks(sealed.stride) {
            b.receive(aa, d, &mut open, &mut rx);
        }
        let (supers, bytes) = (&mut rx.supers, &mut rx.bytes);
        rx.coal.flush(&mut |s| {
            *supers += 1;
            *bytes += (s.len() - virtio::LEN) as u64;
        });
        a.tick(&mut open, &mut wa);
    }
    let allocs = allocations_here() - before;
    for w in WgDrop::ALL {
        assert_eq!((w, a.stats.dropped(w) + b.stats.dropped(w)), (w, 0));
    }
    assert_eq!(
        rx.bytes,
        200 * 60_040,
        "every byte delivered, as super-packets"
    );
    assert!(rx.supers <= 200 * 2, "coalesced: {} writes", rx.supers);
    assert_eq!(
        allocs, 0,
        "allocations for 200 super-packets of 44 segments"
    );
}
