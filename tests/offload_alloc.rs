//! The offload steady state allocates nothing: `segment`, `Coalescer::push` and
//! `Coalescer::flush` run in a loop under a counting global allocator.
//!
//! A separate test binary because it installs its own `#[global_allocator]`. Only
//! allocations made on the measuring thread while counting is on are counted, so the test
//! harness's own threads cannot disturb the result.

use overlayd::offload::{segment, Coalescer};
use overlayd::wire::checksum;
use overlayd::wire::virtio::{self, VirtioNetHdr};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: the thread-local may already be gone while a thread exits.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` unchanged; counting touches only an atomic and
// a const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A 64 KiB TCPv4 super-packet as the kernel hands it over, built by etherparse.
fn super_packet(payload_len: usize) -> (VirtioNetHdr, Vec<u8>) {
    let data: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let mut pkt = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
        .tcp(40000, 5201, 1, 502)
        .ack(7)
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
        hdr_len: 40,
        gso_size: 1398,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, pkt)
}

#[test]
fn steady_state_does_not_allocate() {
    let (hdr, sp) = super_packet(65535 - 40);
    let mut udp = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
        .udp(53, 53)
        .write(&mut udp, b"not tcp")
        .expect("fits");
    let mut out = vec![0u8; 128 * 1024];
    let mut co = Coalescer::new();
    let mut emitted = 0usize;
    let mut bytes = 0usize;

    COUNTING.with(|c| c.set(true));
    for _ in 0..20 {
        let lay = segment(&hdr, &sp, 50, &mut out).expect("valid super-packet");
        let mut sink = |b: &[u8]| {
            emitted += 1;
            bytes += b.len();
        };
        for i in 0..lay.count {
            co.push(&out[lay.packet(i)], &mut sink);
        }
        co.push(&udp, &mut sink);
        co.flush(&mut sink);
    }
    COUNTING.with(|c| c.set(false));

    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        0,
        "allocations in the steady state"
    );
    // Per round: the UDP packet, then the whole super-packet back at flush.
    assert_eq!(emitted, 40);
    assert_eq!(bytes, 20 * (2 * virtio::LEN + sp.len() + udp.len()));
    assert_eq!(co.stats().super_packets, 20);
}
