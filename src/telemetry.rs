//! Observability: Prometheus metrics, `/healthz` and `/readyz` on one small HTTP listener
//! (`--metrics-addr`, or flannel's `--healthz-ip/--healthz-port`). systemd notification is
//! in [`crate::systemd`].
//!
//! The data plane never touches this module: its workers bump plain atomic counters
//! ([`crate::counters`]) and a scrape copies them into the `metrics` recorder
//! just before rendering, so counting costs the fast path one relaxed add per batch.
//!
//! The listener must not be a way to starve the daemon: each connection gets
//! [`HEADER_TIMEOUT`] to send a request head (hyper's timer also runs while a kept-alive
//! connection waits for its next request, so it is the idle timeout too) and lives at most
//! [`CONNECTION_LIFETIME`] in all; with [`MAX_CONNECTIONS`] open, a new one makes the
//! oldest close (so that a probe is still answered while idle connections fill the cap), and
//! is itself closed at once if no slot frees within [`SLOT_WAIT`]; both are counted in
//! `overlayd_http_connections_shed_total`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing::warn;

use crate::counters::{totals, ControlStats, WorkerStats};
use crate::drop::DropReason;
use crate::fib::{SharedFib, SharedFib6};
use crate::systemd::Health;

/// Time a connection has to send a whole request head, and to start the next one when kept
/// alive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is served, whatever it does (a slow body, a response not read):
/// then it is shut down gracefully, and dropped [`SHUTDOWN_GRACE`] later.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Time a connection past its lifetime gets to finish the response in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Connections served at once; a new one beyond closes the oldest.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connection over the cap waits for the oldest one to close.
const SLOT_WAIT: Duration = Duration::from_millis(100);

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
    /// How packets are spread over the routed plane's workers (`--steer`), set with it.
    pub steer: OnceLock<&'static str>,
    /// The routed plane's worker threads.
    pub threads: AtomicUsize,
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
    /// How many direct routes (`Backend.DirectRouting`) are installed; absent when off.
    pub direct_routes: OnceLock<Arc<AtomicUsize>>,
    /// gre over IPv4: how many peers are sent to through the link-layer path (their next
    /// hop known); absent for other backends.
    pub link_peers: OnceLock<Arc<AtomicUsize>>,
    /// The same for the L2 gre networks' members (`--gre-link-tx` with a gre network).
    pub l2_link_peers: OnceLock<Arc<AtomicUsize>>,
    /// The L2 networks' shared state, when any is attached.
    pub l2: OnceLock<Arc<crate::l2::switch::Shared>>,
    /// The verdict of the last health check (the one the systemd watchdog acts on); absent
    /// until the first check.
    health: Mutex<Option<Health>>,
    /// Connections closed because [`MAX_CONNECTIONS`] were open (the oldest, or the new one).
    http_shed: AtomicU64,
    /// Metrics kept by a module above this layer (the wireguard backend's), copied into the
    /// recorder on each scrape like the rest.
    pub extra: OnceLock<Extra>,
}

/// What copies a module's own figures into the metrics recorder.
pub struct Extra(pub Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Extra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Extra(..)")
    }
}

impl State {
    /// Records the health check's verdict for `/healthz`, and hands it on (to the watchdog).
    pub fn record_health(&self, health: Health) -> Health {
        if let Ok(mut h) = self.health.lock() {
            *h = Some(health);
        }
        health
    }

    /// `/healthz`: 200 unless the last health check found a problem (a dead data-plane
    /// worker, the device gone, the control loop stopped), then 503 naming it. Before the
    /// first check the daemon is alive and starting: 200.
    pub fn healthz(&self) -> (axum::http::StatusCode, String) {
        use axum::http::StatusCode;
        let health = self.health.lock().ok().and_then(|h| *h);
        match health.map(|h| h.problems()) {
            Some(p) if !p.is_empty() => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {}\n", p.join("; ")),
            ),
            _ => (StatusCode::OK, "ok\n".to_string()),
        }
    }

    /// The gauges of what the control side keeps toward the peers: direct routes and
    /// `--gre-link-tx` next hops.
    fn refresh_route_gauges(&self) {
        let gauges = [
            ("overlayd_direct_routes", &self.direct_routes),
            ("overlayd_gre_link_peers", &self.link_peers),
            ("overlayd_l2_gre_link_peers", &self.l2_link_peers),
        ];
        for (name, n) in gauges {
            if let Some(n) = n.get() {
                metrics::gauge!(name).set(n.load(Ordering::Relaxed) as f64);
            }
        }
    }

    /// Copies every counter into the recorder (called per scrape).
    fn refresh(&self) {
        if let Some(Extra(extra)) = self.extra.get() {
            extra();
        }
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
            metrics::counter!("overlayd_offload_fallbacks_total", "backend" => backend)
                .absolute(t.tx_offload_fallbacks);
            metrics::counter!("overlayd_receive_batches_total", "backend" => backend)
                .absolute(t.rx_batches);
            metrics::counter!("overlayd_receive_messages_total", "backend" => backend)
                .absolute(t.rx_messages);
            metrics::counter!("overlayd_rx_unmerged_partial_total", "backend" => backend)
                .absolute(t.rx_unmerged_partial);
            metrics::counter!("overlayd_icmp_unreachable_sent_total").absolute(t.icmp_unreachable);
            metrics::counter!("overlayd_arp_replies_total").absolute(t.arp_replies);
            for r in DropReason::ALL {
                metrics::counter!("overlayd_drops_total", "reason" => r.as_str())
                    .absolute(t.drops[r as usize]);
            }
        }
        if let Some(steer) = self.steer.get() {
            metrics::gauge!("overlayd_workers", "steer" => *steer)
                .set(self.threads.load(Ordering::Relaxed) as f64);
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
        self.refresh_route_gauges();
        if let Some(l2) = self.l2.get() {
            refresh_l2(l2);
            refresh_l2_control(&l2.control);
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
        metrics::counter!("overlayd_http_connections_shed_total")
            .absolute(self.http_shed.load(Ordering::Relaxed));
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
fn refresh_l2(l2: &crate::l2::switch::Shared) {
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
        metrics::counter!("overlayd_l2_offload_fallbacks_total", "network" => net.clone())
            .absolute(get(&st.tx_offload_fallbacks));
        metrics::counter!("overlayd_l2_mac_moves_pinned_total", "network" => net.clone())
            .absolute(get(&st.moves_pinned));
        metrics::counter!("overlayd_l2_flood_copies_total", "network" => net.clone())
            .absolute(get(&st.flood_copies));
        metrics::counter!("overlayd_l2_learned_total", "network" => net.clone())
            .absolute(get(&st.learned));
        metrics::counter!("overlayd_l2_moves_total", "network" => net.clone())
            .absolute(get(&st.moves));
        metrics::counter!("overlayd_l2_arp_suppressed_total", "network" => net.clone())
            .absolute(get(&st.arp_suppressed));
        metrics::counter!("overlayd_l2_rx_unmerged_partial_total", "network" => net.clone())
            .absolute(get(&st.rx_unmerged_partial));
        metrics::counter!("overlayd_l2_fdb_full_total", "network" => net.clone())
            .absolute(get(&st.fdb_full));
        metrics::gauge!("overlayd_l2_members", "network" => net.clone())
            .set(n.members.load().ips().len() as f64);
        metrics::gauge!("overlayd_l2_members_without_lease", "network" => net.clone())
            .set(get(&st.members_unleased) as f64);
        metrics::gauge!("overlayd_l2_fdb_entries", "network" => net)
            .set(l2.fdb_entries(i as u16) as f64);
    }
    for r in DropReason::ALL {
        metrics::counter!("overlayd_l2_drops_total", "reason" => r.as_str())
            .absolute(l2.drops[r as usize].load(Ordering::Relaxed));
    }
}

/// The L2 membership loop's etcd errors, watch restarts and relists (as the L3 loop's).
fn refresh_l2_control(c: &ControlStats) {
    metrics::counter!("overlayd_l2_etcd_errors_total")
        .absolute(c.etcd_errors.load(Ordering::Relaxed));
    metrics::counter!("overlayd_l2_watch_restarts_total")
        .absolute(c.watch_restarts.load(Ordering::Relaxed));
    metrics::counter!("overlayd_l2_relists_total").absolute(c.relists.load(Ordering::Relaxed));
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
    use tokio::sync::oneshot;
    let app = router(handle, state.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // One sender per open connection, oldest first: sending closes that connection.
    let mut open: std::collections::VecDeque<oneshot::Sender<()>> = Default::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait a little instead of spinning.
                warn!(error = %e, "the metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                state.http_shed.fetch_add(1, Ordering::Relaxed);
                open.retain(|c| !c.is_closed());
                if let Some(oldest) = open.pop_front() {
                    let _ = oldest.send(());
                }
                match tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => continue,
                }
            }
        };
        let (close, closed) = oneshot::channel();
        open.push_back(close);
        let app = app.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_connection(stream, app) => {}
                _ = closed => {}
            }
            drop(slot);
        });
    }
}

/// One connection, bounded by [`HEADER_TIMEOUT`] per request head and
/// [`CONNECTION_LIFETIME`] in all.
async fn serve_connection(stream: tokio::net::TcpStream, app: axum::Router) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(
            TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(app),
        );
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

/// The three endpoints.
fn router(handle: PrometheusHandle, state: Arc<State>) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let metrics = {
        let state = state.clone();
        move || {
            let (state, handle) = (state.clone(), handle.clone());
            async move {
                state.refresh();
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }
    };
    let healthz = {
        let state = state.clone();
        move || {
            let answer = state.healthz();
            async move { answer }
        }
    };
    let readyz = move || {
        let ready = state.ready.load(Ordering::Relaxed);
        async move {
            if ready {
                (StatusCode::OK, "ready\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
    };
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n",
            )
        })
}

/// Binds the listener (an error here is a startup error: the operator asked for it).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const OK: Health = Health::OK;

    #[test]
    fn healthz_follows_the_watchdog_verdict() {
        let state = State::default();
        assert_eq!(state.healthz(), (StatusCode::OK, "ok\n".into()), "starting");
        assert_eq!(state.record_health(OK), OK);
        assert_eq!(state.healthz().0, StatusCode::OK);
        let dead = Health {
            workers_alive: false,
            ..OK
        };
        state.record_health(dead);
        let (code, body) = state.healthz();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("a data-plane worker stopped"), "{body}");
        state.record_health(OK);
        assert_eq!(state.healthz().0, StatusCode::OK, "recovered");
    }
}
