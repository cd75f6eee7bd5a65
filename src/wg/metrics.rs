//! The wireguard devices' figures on `/metrics`: the engine's drops by reason, handshakes
//! and packets per device, and each peer's last handshake and bytes, copied into the
//! recorder on each scrape (through [`crate::telemetry::State::extra`]). `overlayd status`
//! reads the per-peer ones back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::engine::{Stats, WgDrop};
use crate::control::lease::encode_key;

/// Drops by reason: `{device, reason}`.
pub const DROPPED: &str = "overlayd_wireguard_dropped_total";
/// Handshakes completed: `{device}`.
pub const HANDSHAKES: &str = "overlayd_wireguard_handshakes_total";
/// Packets through the engine: `{device, direction}`.
pub const PACKETS: &str = "overlayd_wireguard_packets_total";
/// Seconds since a peer's last handshake: `{device, peer, endpoint}` (absent before the first).
pub const PEER_HANDSHAKE: &str = "overlayd_wireguard_peer_last_handshake_seconds";
/// A peer's data bytes: `{device, peer, endpoint, direction}`.
pub const PEER_BYTES: &str = "overlayd_wireguard_peer_bytes_total";

/// Copies every device's figures into the recorder.
pub fn refresh(devices: &[(&'static str, Arc<Stats>)]) {
    for (dev, st) in devices {
        let dev = *dev;
        for w in WgDrop::ALL {
            metrics::counter!(DROPPED, "device" => dev, "reason" => w.as_str())
                .absolute(st.dropped(w));
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
