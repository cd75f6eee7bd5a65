//! Counters: the plain atomics the data plane and the control loops bump, and nothing else.
//!
//! A leaf module: it depends on nothing above [`crate::drop`], so the data plane, the
//! forwarding table and the control loops can all own counters here while the metrics
//! exporter ([`crate::telemetry`]) only reads them. Every add is one relaxed atomic add; the
//! exporter copies the values into the `metrics` recorder only when scraped.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::drop::DropReason;

/// Adds `n` to a counter (relaxed: counters order nothing).
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Drops by reason, indexed by `DropReason as usize`.
pub type DropCounters = [AtomicU64; DropReason::COUNT];

/// Counts `n` drops under `r`.
#[inline]
pub fn count_drop(d: &DropCounters, r: DropReason, n: u64) {
    bump(&d[r as usize], n);
}

/// Packets and bytes in one direction, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct DirCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

impl DirCounters {
    #[inline]
    pub fn add(&self, packets: u64, bytes: u64) {
        bump(&self.packets, packets);
        bump(&self.bytes, bytes);
    }
}

/// Per-peer traffic counters, shared by the snapshots that list the peer (they survive
/// forwarding-table rebuilds) and bumped by the workers. Transmit and receive sides sit on
/// separate cache lines so the two directions do not contend.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub tx: DirCounters,
    pub rx: DirCounters,
}

/// Counters of one routed (L3) worker, bumped by it alone.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_sends: AtomicU64,
    /// Of `tx_sends`: whole super-packets written through the tunnel-GSO TAP.
    pub tx_tunnel_gso: AtomicU64,
    /// Destinations a transmit offload (UDP GSO, tunnel GSO) was refused for and turned
    /// off for until the re-probe (`datapath::fallback`).
    pub tx_offload_fallbacks: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_batches: AtomicU64,
    /// Buffers the receive calls handed over: each one datagram, or one run of datagrams
    /// the kernel's UDP GRO merged (`rx_packets` over this is how much it merged).
    pub rx_messages: AtomicU64,
    /// Of those, single datagrams holding a full-size segment whose checksum its sender
    /// left partial ([`crate::datapath::recv::unmerged_partial`]): segments encapsulated
    /// by this same kernel, which its UDP GRO never merges.
    pub rx_unmerged_partial: AtomicU64,
    pub icmp_unreachable: AtomicU64,
    pub arp_replies: AtomicU64,
    pub drops: DropCounters,
}

impl WorkerStats {
    /// Counts `n` drops under `r`.
    #[inline]
    pub fn drop(&self, r: DropReason, n: u64) {
        count_drop(&self.drops, r, n);
    }
}

/// Totals over all workers, for logs, tests and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub tx_sends: u64,
    pub tx_tunnel_gso: u64,
    pub tx_offload_fallbacks: u64,
    pub rx_batches: u64,
    pub rx_messages: u64,
    pub rx_unmerged_partial: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub icmp_unreachable: u64,
    pub arp_replies: u64,
    pub drops: [u64; DropReason::COUNT],
}

/// Sums worker counters.
pub fn totals(stats: &[WorkerStats]) -> Totals {
    let mut t = Totals::default();
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for s in stats {
        t.tx_sends += get(&s.tx_sends);
        t.tx_tunnel_gso += get(&s.tx_tunnel_gso);
        t.tx_offload_fallbacks += get(&s.tx_offload_fallbacks);
        t.rx_batches += get(&s.rx_batches);
        t.rx_messages += get(&s.rx_messages);
        t.rx_unmerged_partial += get(&s.rx_unmerged_partial);
        t.tx_packets += get(&s.tx_packets);
        t.tx_bytes += get(&s.tx_bytes);
        t.rx_packets += get(&s.rx_packets);
        t.rx_bytes += get(&s.rx_bytes);
        t.icmp_unreachable += get(&s.icmp_unreachable);
        t.arp_replies += get(&s.arp_replies);
        for (d, a) in t.drops.iter_mut().zip(&s.drops) {
            *d += get(a);
        }
    }
    t
}

/// Counters of one L2 network, bumped by the L2 workers.
#[derive(Debug, Default)]
pub struct NetStats {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_unicast: AtomicU64,
    pub tx_flood: AtomicU64,
    pub flood_copies: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Whole super-frames written through the tunnel-GSO TAP.
    pub tx_tunnel_gso: AtomicU64,
    /// Destinations a transmit offload was refused for (as [`WorkerStats`]').
    pub tx_offload_fallbacks: AtomicU64,
    pub learned: AtomicU64,
    pub moves: AtomicU64,
    /// MAC moves refused because the MAC moved too often (`l2::fdb::MAX_MOVES`).
    pub moves_pinned: AtomicU64,
    pub arp_suppressed: AtomicU64,
    /// Full-size segments that came alone with partial checksums (as
    /// [`WorkerStats::rx_unmerged_partial`]).
    pub rx_unmerged_partial: AtomicU64,
    /// MACs not learned: the network's own table (its quota) had no room for them.
    pub fdb_full: AtomicU64,
    /// A gauge: nodes announced as members whose address holds no current lease (not used).
    pub members_unleased: AtomicU64,
}

/// Control-plane facts the exporter reports, updated by the daemon and the control loops.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Unix time at which our lease expires (0 = reservation or unknown).
    pub lease_expiry_unix: AtomicI64,
    pub lease_held: AtomicBool,
    pub etcd_errors: AtomicU64,
    pub watch_restarts: AtomicU64,
    pub relists: AtomicU64,
    pub reacquisitions: AtomicU64,
    pub device_repairs: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_every_worker_and_reason() {
        let w = [WorkerStats::default(), WorkerStats::default()];
        bump(&w[0].tx_packets, 3);
        bump(&w[1].tx_packets, 4);
        bump(&w[1].rx_bytes, 100);
        w[0].drop(DropReason::NoRoute, 2);
        w[1].drop(DropReason::NoRoute, 1);
        w[1].drop(DropReason::IoError, 5);
        let t = totals(&w);
        assert_eq!(t.tx_packets, 7);
        assert_eq!(t.rx_bytes, 100);
        assert_eq!(t.drops[DropReason::NoRoute as usize], 3);
        assert_eq!(t.drops[DropReason::IoError as usize], 5);
        assert_eq!(t.drops.iter().sum::<u64>(), 8);
    }
}
