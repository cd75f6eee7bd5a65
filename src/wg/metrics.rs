//! The wireguard devices' figures on `/metrics`: drops by reason (the engine's and the data
//! path's), handshakes and packets per device, and each peer's last handshake and bytes,
//! copied into the recorder on each scrape (through [`crate::telemetry::State::extra`]).
//! `overlayd status` reads the per-peer ones back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::engine::{Stats, WgDrop};
use crate::control::lease::encode_key;
use crate::counters::DropCounters;
use crate::drop::DropReason;

/// Drops by reason: `{device, reason}`; the reasons are the engine's ([`WgDrop`]) and the
/// data path's ([`DropReason`]) names, one series per name ([`drops`]).
pub const DROPPED: &str = "overlayd_wireguard_dropped_total";
/// Handshakes completed: `{device}`.
pub const HANDSHAKES: &str = "overlayd_wireguard_handshakes_total";
/// Packets through the engine: `{device, direction}`.
pub const PACKETS: &str = "overlayd_wireguard_packets_total";
/// Seconds since a peer's last handshake: `{device, peer, endpoint}` (absent before the first).
pub const PEER_HANDSHAKE: &str = "overlayd_wireguard_peer_last_handshake_seconds";
/// A peer's data bytes: `{device, peer, endpoint, direction}`.
pub const PEER_BYTES: &str = "overlayd_wireguard_peer_bytes_total";

/// What one device's figures are read from.
pub struct Figures {
    pub device: &'static str,
    /// The engine's.
    pub stats: Arc<Stats>,
    /// The data path thread's own drops (device and socket side).
    pub drops: Arc<DropCounters>,
}

/// One device's drops by reason name: every [`WgDrop`] and every [`DropReason`], a name the
/// two share (`no_route`) counted once with both counts added.
pub fn drops(st: &Stats, data: &DropCounters) -> Vec<(&'static str, u64)> {
    let mut by_name: Vec<(&'static str, u64)> = WgDrop::ALL
        .iter()
        .map(|&w| (w.as_str(), st.dropped(w)))
        .collect();
    for r in DropReason::ALL {
        let n = data[r as usize].load(Ordering::Relaxed);
        match by_name.iter_mut().find(|(name, _)| *name == r.as_str()) {
            Some((_, total)) => *total += n,
            None => by_name.push((r.as_str(), n)),
        }
    }
    by_name
}

/// Copies every device's figures into the recorder.
pub fn refresh(devices: &[Figures]) {
    for d in devices {
        let (dev, st) = (d.device, &d.stats);
        for (reason, n) in drops(st, &d.drops) {
            metrics::counter!(DROPPED, "device" => dev, "reason" => reason).absolute(n);
        }
        metrics::counter!(HANDSHAKES, "device" => dev)
            .absolute(st.handshakes.load(Ordering::Relaxed));
        metrics::counter!(PACKETS, "device" => dev, "direction" => "tx")
            .absolute(st.tx_packets.load(Ordering::Relaxed));
        metrics::counter!(PACKETS, "device" => dev, "direction" => "rx")
            .absolute(st.rx_packets.load(Ordering::Relaxed));
        let peers = st.peers.lock().map(|p| p.clone()).unwrap_or_default();
        for f in peers {
            let labels = [
                ("device", dev.to_string()),
                ("peer", encode_key(&f.public_key)),
                ("endpoint", f.endpoint.to_string()),
            ];
            if let Some(age) = f.last_handshake {
                metrics::gauge!(PEER_HANDSHAKE, &labels).set(age.as_secs_f64());
            }
            for (dir, n) in [("tx", f.tx_bytes), ("rx", f.rx_bytes)] {
                let mut l = labels.to_vec();
                l.push(("direction", dir.to_string()));
                metrics::counter!(PEER_BYTES, &l).absolute(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(figures: &[(&str, u64)], reason: &str) -> Vec<u64> {
        figures
            .iter()
            .filter(|(name, _)| *name == reason)
            .map(|&(_, n)| n)
            .collect()
    }

    #[test]
    fn the_data_paths_drops_join_the_engines_one_series_per_reason() {
        let st = Stats::default();
        st.drops[WgDrop::BadMac as usize].store(3, Ordering::Relaxed);
        st.drops[WgDrop::NoRoute as usize].store(2, Ordering::Relaxed);
        let data = DropCounters::default();
        data[DropReason::IoError as usize].store(5, Ordering::Relaxed);
        data[DropReason::Truncated as usize].store(1, Ordering::Relaxed);
        data[DropReason::NoRoute as usize].store(4, Ordering::Relaxed);
        let f = drops(&st, &data);
        assert_eq!(count(&f, "bad_mac"), [3]);
        assert_eq!(count(&f, "io_error"), [5]);
        assert_eq!(count(&f, "truncated"), [1]);
        assert_eq!(count(&f, "no_route"), [6], "a shared name is one series");
        assert_eq!(count(&f, "bad_inner"), [0]);
        let mut names: Vec<&str> = f.iter().map(|&(name, _)| name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), f.len(), "no reason twice: {f:?}");
        assert_eq!(f.len(), WgDrop::COUNT + DropReason::COUNT - 1);
    }
}
