//! Observability: Prometheus metrics, `/healthz` and `/readyz` on one small HTTP listener
//! (`--metrics-addr`, or flannel's `--healthz-ip/--healthz-port`), and systemd readiness.
//!
//! The data plane never touches this module: its workers bump plain atomic counters
//! ([`crate::counters`]) and a scrape copies them into the `metrics` recorder
//! just before rendering, so counting costs the fast path one relaxed add per batch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::counters::{totals, ControlStats, WorkerStats};
use crate::drop::DropReason;
use crate::fib::SharedFib;
use crate::fib6::SharedFib6;

/// Which offloads the data plane got from the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offloads {
    /// The TUN hands over TCP super-packets.
    pub tun_tso: bool,
    /// ... and UDP ones (applications sending with UDP_SEGMENT).
    pub tun_uso: bool,
    /// Datagrams leave in UDP GSO runs.
    pub udp_gso: bool,
    /// Datagrams arrive in UDP GRO runs.
    pub udp_gro: bool,
}

/// Everything a scrape or a readiness probe reads.
#[derive(Debug, Default)]
pub struct State {
    pub ready: AtomicBool,
    pub backend: OnceLock<&'static str>,
    pub workers: Mutex<Option<Arc<Vec<WorkerStats>>>>,
    pub fib: OnceLock<SharedFib>,
    /// The IPv6 forwarding table (dual stack).
    pub fib6: OnceLock<SharedFib6>,
    pub control: Arc<ControlStats>,
    /// Offload state, set once the data plane is configured.
    pub offloads: OnceLock<Offloads>,
    /// Tunnel GSO in use (cleared at run time by a kernel refusal); absent = not set up.
    pub tunnel_gso: OnceLock<Arc<AtomicBool>>,
    /// The same for IPv6 outer headers (an IPv6 underlay).
    pub tunnel_gso6: OnceLock<Arc<AtomicBool>>,
    /// The L2 networks' shared state, when any is attached.
    pub l2: OnceLock<Arc<crate::l2::dataplane::Shared>>,
}

impl State {
    /// Copies every counter into the recorder (called per scrape).
    fn refresh(&self) {
        let backend = *self.backend.get().unwrap_or(&"");
        if let Some(w) = self.workers.lock().ok().and_then(|g| g.clone()) {
            let t = totals(&w);
            metrics::counter!("overlayd_packets_total", "direction" => "tx", "backend" => backend)
                .absolute(t.tx_packets);
            metrics::counter!("overlayd_packets_total", "direction" => "rx", "backend" => backend)
                .absolute(t.rx_packets);
            metrics::counter!("overlayd_bytes_total", "direction" => "tx", "backend" => backend)
                .absolute(t.tx_bytes);
            metrics::counter!("overlayd_bytes_total", "direction" => "rx", "backend" => backend)
                .absolute(t.rx_bytes);
            metrics::counter!("overlayd_send_calls_total", "backend" => backend)
                .absolute(t.tx_sends);
            metrics::counter!("overlayd_tunnel_gso_writes_total", "backend" => backend)
                .absolute(t.tx_tunnel_gso);
            metrics::counter!("overlayd_receive_batches_total", "backend" => backend)
                .absolute(t.rx_batches);
            metrics::counter!("overlayd_icmp_unreachable_sent_total").absolute(t.icmp_unreachable);
            metrics::counter!("overlayd_arp_replies_total").absolute(t.arp_replies);
            for r in DropReason::ALL {
                metrics::counter!("overlayd_drops_total", "reason" => r.as_str())
                    .absolute(t.drops[r as usize]);
            }
        }
        if let Some(fib) = self.fib.get() {
            let fib = fib.load();
            metrics::gauge!("overlayd_peers").set(fib.peers().len() as f64);
            for p in fib.peers() {
                peer_counters(p.subnet.to_string(), p.public_ip.to_string(), &p.counters);
            }
        }
        if let Some(fib6) = self.fib6.get() {
            let fib6 = fib6.load();
            metrics::gauge!("overlayd_ipv6_peers").set(fib6.peers().len() as f64);
            for p in fib6.peers() {
                peer_counters(p.subnet.to_string(), p.underlay.to_string(), &p.counters);
            }
        }
        if let Some(l2) = self.l2.get() {
            refresh_l2(l2);
        }
        if let Some(o) = self.offloads.get() {
            let tunnel = self
                .tunnel_gso
                .get()
                .is_some_and(|t| t.load(Ordering::Relaxed));
            let tunnel6 = self
                .tunnel_gso6
                .get()
                .is_some_and(|t| t.load(Ordering::Relaxed));
            for (k, on) in [
                ("tun_tso", &o.tun_tso),
                ("tun_uso", &o.tun_uso),
                ("udp_gso", &o.udp_gso),
                ("udp_gro", &o.udp_gro),
                ("tunnel_gso", &tunnel),
                ("tunnel_gso_ipv6", &tunnel6),
            ] {
                metrics::gauge!("overlayd_offload_enabled", "offload" => k).set(if *on {
                    1.0
                } else {
                    0.0
                });
            }
        }
        let c = &self.control;
        let expiry = c.lease_expiry_unix.load(Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        metrics::gauge!("overlayd_lease_held").set(if c.lease_held.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("overlayd_lease_expiry_seconds").set(if expiry > 0 {
            (expiry - now) as f64
        } else {
            0.0
        });
        metrics::counter!("overlayd_etcd_errors_total")
            .absolute(c.etcd_errors.load(Ordering::Relaxed));
        metrics::counter!("overlayd_watch_restarts_total")
            .absolute(c.watch_restarts.load(Ordering::Relaxed));
        metrics::counter!("overlayd_relists_total").absolute(c.relists.load(Ordering::Relaxed));
        metrics::counter!("overlayd_lease_reacquisitions_total")
            .absolute(c.reacquisitions.load(Ordering::Relaxed));
        metrics::counter!("overlayd_device_repairs_total")
            .absolute(c.device_repairs.load(Ordering::Relaxed));
        metrics::gauge!("overlayd_ready").set(if self.ready.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        });
    }
}

/// One peer's traffic counters: `peer` is its subnet (IPv4 or IPv6), `public_ip` the
/// underlay address its packets go to.
fn peer_counters(subnet: String, ip: String, c: &crate::counters::PeerCounters) {
    for (dir, d) in [("tx", &c.tx), ("rx", &c.rx)] {
        let labels = [
            ("peer", subnet.clone()),
            ("public_ip", ip.clone()),
            ("direction", dir.to_string()),
        ];
        metrics::counter!("overlayd_peer_packets_total", &labels)
            .absolute(d.packets.load(Ordering::Relaxed));
        metrics::counter!("overlayd_peer_bytes_total", &labels)
            .absolute(d.bytes.load(Ordering::Relaxed));
    }
}

/// Copies the L2 networks' counters into the recorder.
fn refresh_l2(l2: &crate::l2::dataplane::Shared) {
    for (i, n) in l2.nets.iter().enumerate() {
        let st = &n.stats;
        let net = n.name.clone();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metrics::counter!("overlayd_l2_rx_frames_total", "network" => net.clone())
            .absolute(get(&st.rx_frames));
        metrics::counter!("overlayd_l2_rx_bytes_total", "network" => net.clone())
            .absolute(get(&st.rx_bytes));
        metrics::counter!("overlayd_l2_tx_frames_total", "network" => net.clone(), "kind" => "unicast")
            .absolute(get(&st.tx_unicast));
        metrics::counter!("overlayd_l2_tx_frames_total", "network" => net.clone(), "kind" => "flood")
            .absolute(get(&st.tx_flood));
        metrics::counter!("overlayd_l2_tx_bytes_total", "network" => net.clone())
            .absolute(get(&st.tx_bytes));
        metrics::counter!("overlayd_l2_tunnel_gso_writes_total", "network" => net.clone())
            .absolute(get(&st.tx_tunnel_gso));
        metrics::counter!("overlayd_l2_flood_copies_total", "network" => net.clone())
            .absolute(get(&st.flood_copies));
        metrics::counter!("overlayd_l2_learned_total", "network" => net.clone())
            .absolute(get(&st.learned));
        metrics::counter!("overlayd_l2_moves_total", "network" => net.clone())
            .absolute(get(&st.moves));
        metrics::counter!("overlayd_l2_arp_suppressed_total", "network" => net.clone())
            .absolute(get(&st.arp_suppressed));
        metrics::counter!("overlayd_l2_fdb_full_total", "network" => net.clone())
            .absolute(get(&st.fdb_full));
        metrics::gauge!("overlayd_l2_members", "network" => net.clone())
            .set(n.members.load().ips().len() as f64);
        metrics::gauge!("overlayd_l2_fdb_entries", "network" => net)
            .set(l2.fdb_entries(i as u16) as f64);
    }
    for r in DropReason::ALL {
        metrics::counter!("overlayd_l2_drops_total", "reason" => r.as_str())
            .absolute(l2.drops[r as usize].load(Ordering::Relaxed));
    }
}

/// Installs the Prometheus recorder (once per process).
pub fn install_recorder() -> Option<PrometheusHandle> {
    // Every series is written at each scrape (`State::refresh`, just before rendering), so
    // one that was not written since the previous scrape belongs to something gone (a peer
    // that left, an L2 network): drop it rather than export it forever (found by the churn
    // soak in tests/etcd_ha.rs: one series per departed peer and direction, unbounded).
    PrometheusBuilder::new()
        .idle_timeout(
            metrics_util::MetricKindMask::ALL,
            Some(std::time::Duration::from_secs(1)),
        )
        .install_recorder()
        .map_err(|e| warn!(error = %e, "cannot install the metrics recorder"))
        .ok()
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, state: Arc<State>) {
    loop {
        let Ok((mut conn, peer)) = listener.accept().await else {
            continue;
        };
        let (handle, state) = (handle.clone(), state.clone());
        tokio::spawn(async move {
            // Read the request head (a client may send it in several pieces), bounded in
            // size and time.
            let mut buf = [0u8; 2048];
            let mut n = 0;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout_at(deadline, conn.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(k)) => n += k,
                }
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            debug!(%peer, path, "http request");
            let (status, ctype, body) = match path {
                "/metrics" => {
                    state.refresh();
                    ("200 OK", "text/plain; version=0.0.4", handle.render())
                }
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" if state.ready.load(Ordering::Relaxed) => {
                    ("200 OK", "text/plain", "ready\n".to_string())
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_string(),
                ),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "not found: try /metrics, /healthz or /readyz\n".to_string(),
                ),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Binds the listener (an error here is a startup error: the operator asked for it).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Tells systemd (`Type=notify`) that we are ready, when started by it (`$NOTIFY_SOCKET`).
pub fn notify_ready() {
    notify("READY=1\nSTATUS=forwarding");
}

/// Tells systemd that we are stopping.
pub fn notify_stopping() {
    notify("STOPPING=1");
}

fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return warn!(error = %e, "sd_notify: cannot create a socket"),
    };
    let res = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = res {
        warn!(error = %e, socket = %path, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_socket() {
        let dir = std::env::temp_dir().join(format!("ovd-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify_ready();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=forwarding");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
