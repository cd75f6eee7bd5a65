//! Failover across the etcd endpoints: one client per member, used one at a time, every call
//! bounded in time and retried on the next member when the one it went to fails.
//!
//! Why not etcd-client's own multi-endpoint client: it puts every endpoint behind tonic's
//! power-of-two-choices balancer (`Channel::balance_channel`). tonic connects to each endpoint
//! lazily; when a connection attempt fails, the endpoint reports itself *ready* anyway and
//! hands the stored connect error to the next request routed to it (`Reconnect` in lazy mode),
//! and every endpoint reports the same load, so a dead member keeps getting its share of the
//! requests, each failing at once with "tcp connect error", and nothing retries them elsewhere.
//! A member whose packets are dropped is worse: its established connection swallows requests
//! until the request timeout, and its reconnection attempts until the connect timeout. Whether
//! a call works thus depends on which endpoint the balancer happens to pick (issue 15).
//!
//! Here each member has its own client on a single-endpoint channel. A call goes to the member
//! that answered last; when that member fails it (transport error, timeout, or a gRPC status
//! that means "this member cannot serve now": `Unavailable` — no leader, leader changed,
//! request timed out —, `DeadlineExceeded`, `Unknown`, ...), its client is dropped (the next
//! use reconnects), the member is set aside for a cool-down, and the call is retried on the
//! next member. A call fails only when every member failed it; the callers' retry loops then
//! back off. Errors that would be the same on every member (permission denied, invalid
//! argument, a compacted revision) are returned at once.
//!
//! Every request carries etcd's "require leader" flag, so a member cut off from the quorum
//! (but still reachable) refuses at once instead of serving stale reads or stalling writes,
//! and cancels our watches on it within a few election timeouts. Watches are kept honest by
//! HTTP/2 keepalive pings on the connection and by a progress request when a watch has been
//! quiet for a while (see [`Watch`]); a watch that breaks is resumed by its caller from the
//! last revision it saw, on whichever member answers next.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, WatchOptions, WatchResponse, WatchStream};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::subnet::NoFreeSubnet;

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("etcd at {endpoint}: {source}")]
    Member {
        endpoint: String,
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoint}: no answer to {what} within {after:?}")]
    Timeout {
        what: String,
        endpoint: String,
        after: Duration,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Tls {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Exhausted(#[from] NoFreeSubnet),
}

/// The largest gRPC message accepted from etcd (a page of a listing, or a watch response
/// catching up on a burst of changes); tonic's default of 4 MiB is what a listing of some
/// 50 000 leases in one read used to hit ("decoded message length too large").
pub const MAX_MESSAGE: usize = 512 << 20;

/// Time bounds of every etcd interaction.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP (and TLS) connection to one member.
    pub connect: Duration,
    /// One request to one member, connection included.
    pub request: Duration,
    /// HTTP/2 ping interval while a stream (watch, keepalive) is open. etcd refuses pings
    /// more frequent than its `--grpc-keepalive-min-time` (5 s by default).
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is declared dead.
    pub ping_timeout: Duration,
    /// A watch that received nothing for this long is asked for its progress; if that is
    /// not answered within `request`, the member is declared failed.
    pub watch_quiet: Duration,
    /// How long a failed member is tried only after the others.
    pub cooldown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(5),
            ping_interval: Duration::from_secs(6),
            ping_timeout: Duration::from_secs(3),
            watch_quiet: Duration::from_secs(10),
            cooldown: Duration::from_secs(10),
        }
    }
}

struct Member {
    url: String,
    client: Mutex<Option<Client>>,
    failed_at: Mutex<Option<Instant>>,
}

struct Inner {
    members: Vec<Member>,
    options: ConnectOptions,
    timeouts: Timeouts,
    /// The member that answered last (calls start there).
    current: AtomicUsize,
}

/// The etcd members given with `--etcd-endpoints`, with failover between them. Cheap to clone.
#[derive(Clone)]
pub struct EtcdPool {
    inner: Arc<Inner>,
}

/// Checks one `--etcd-endpoints` entry: `http://host:port`, `https://host:port` or `host:port`.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let bad = |why: &str| {
        Err(format!(
            "--etcd-endpoints entry {url:?} is not valid ({why}): expected a client URL such as http://10.0.0.5:2379 or https://etcd-1.example:2379"
        ))
    };
    if authority.is_empty() {
        return bad("no host");
    }
    if authority
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@' | ','))
    {
        return bad("only scheme, host and port are allowed");
    }
    let (host, port) = match authority.rsplit_once(':') {
        // A bracketed IPv6 address with no port: "[fd00::1]".
        Some((h, p)) if !p.ends_with(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if host.is_empty() {
        return bad("no host");
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return bad("the port must be 1-65535");
        }
    }
    Ok(())
}

/// Renews etcd lease `id` once through `c`; returns its remaining TTL in seconds, 0 when
/// etcd no longer knows it (expired or revoked).
pub async fn keep_alive_once(mut c: Client, id: i64) -> Result<i64, etcd_client::Error> {
    // Opening the stream renews once and checks the answer (refusing an unknown lease);
    // one more renewal gives the TTL.
    let (mut keeper, mut stream) = match c.lease_keep_alive(id).await {
        Ok(ks) => ks,
        Err(etcd_client::Error::LeaseKeepAliveError(e)) if e.contains("not found") => return Ok(0),
        Err(e) => return Err(e),
    };
    keeper.keep_alive().await?;
    match stream.message().await? {
        Some(r) => Ok(r.ttl().max(0)),
        None => Err(etcd_client::Error::LeaseKeepAliveError(
            "stream ended without an answer".into(),
        )),
    }
}

/// Whether an error means "this member cannot serve now" (try another one) rather than
/// "this request is wrong" (every member would say the same).
pub fn is_member_failure(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::TransportError(_)
        | E::IoError(_)
        | E::WatchError(_)
        | E::LeaseKeepAliveError(_)
        | E::EndpointError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
        ),
        _ => false,
    }
}

impl EtcdPool {
    /// Checks the endpoints and TLS files; connects to nothing yet (each member is
    /// connected on first use).
    pub fn new(opts: &EtcdOptions, timeouts: Timeouts) -> Result<Self, EtcdError> {
        if opts.endpoints.is_empty() {
            return Err(EtcdError::Config(
                "--etcd-endpoints is empty: expected one or more client URLs such as http://10.0.0.5:2379".into(),
            ));
        }
        for e in &opts.endpoints {
            check_endpoint(e).map_err(EtcdError::Config)?;
        }
        let tls = opts.cafile.is_some() || opts.certfile.is_some();
        if tls {
            if let Some(e) = opts.endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(EtcdError::Config(format!(
                    "--etcd-endpoints entry {e:?} is plain http but TLS files are given (--etcd-cafile/--etcd-certfile): use https:// for every endpoint"
                )));
            }
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(timeouts.connect)
            .with_timeout(timeouts.request)
            .with_keep_alive(timeouts.ping_interval, timeouts.ping_timeout)
            // Pings only while a stream is open: etcd counts pings on an idle connection as
            // abuse and closes it ("too_many_pings").
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
            // Simple tokens expire after 5 idle minutes and die with a member's restart:
            // authenticate again instead of failing.
            co = co
                .with_user(u.clone(), p.clone())
                .with_auto_token_refresh(true);
        }
        if tls {
            let read = |p: &std::path::PathBuf| {
                std::fs::read(p).map_err(|source| EtcdError::Tls {
                    path: p.clone(),
                    source,
                })
            };
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &opts.cafile {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&opts.certfile, &opts.keyfile) {
                t = t.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            co = co.with_tls(t);
        }
        let members = opts
            .endpoints
            .iter()
            .map(|url| Member {
                url: url.clone(),
                client: Mutex::new(None),
                failed_at: Mutex::new(None),
            })
            .collect::<Vec<_>>();
        // Nodes start on different members, so that a thousand of them do not all land on
        // the first endpoint of the list.
        let start = (rand::random::<u32>() as usize) % members.len();
        Ok(EtcdPool {
            inner: Arc::new(Inner {
                members,
                options: co,
                timeouts,
                current: AtomicUsize::new(start),
            }),
        })
    }

    /// The time bounds in force.
    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    /// The endpoint calls go to first (the one that answered last).
    pub fn current_endpoint(&self) -> &str {
        &self.inner.members[self.inner.current.load(Ordering::Relaxed)].url
    }

    /// Members in the order to try them: the current one, then the others in list order,
    /// those that failed recently last.
    fn order(&self) -> Vec<usize> {
        let n = self.inner.members.len();
        let cur = self.inner.current.load(Ordering::Relaxed) % n;
        let cooldown = self.inner.timeouts.cooldown;
        let cooling = |i: usize| {
            self.inner.members[i]
                .failed_at
                .lock()
                .ok()
                .and_then(|g| *g)
                .is_some_and(|t| t.elapsed() < cooldown)
        };
        let all: Vec<usize> = (0..n).map(|k| (cur + k) % n).collect();
        let (fresh, cooling): (Vec<usize>, Vec<usize>) =
            all.into_iter().partition(|&i| !cooling(i));
        fresh.into_iter().chain(cooling).collect()
    }

    /// Member `i`'s client, connecting it if needed (bounded: authentication, when
    /// configured, is a request).
    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let m = &self.inner.members[i];
        if let Some(c) = m.client.lock().ok().and_then(|g| g.clone()) {
            return Ok(c);
        }
        let t = self.inner.timeouts;
        let connect = Client::connect([m.url.as_str()], Some(self.inner.options.clone()));
        let c = match tokio::time::timeout(t.connect + t.request, connect).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(etcd_client::Error::EndpointError(format!(
                    "{}: no answer within {:?}",
                    m.url,
                    t.connect + t.request
                )))
            }
        };
        if let Ok(mut g) = m.client.lock() {
            *g = Some(c.clone());
        }
        Ok(c)
    }

    /// Records that member `i` failed: its client is dropped (the next use reconnects) and
    /// it is tried after the others for a while; calls move on to the next member.
    pub fn member_failed(&self, i: usize, why: &dyn std::fmt::Display) {
        let m = &self.inner.members[i];
        if let Ok(mut g) = m.client.lock() {
            *g = None;
        }
        if let Ok(mut g) = m.failed_at.lock() {
            *g = Some(Instant::now());
        }
        let n = self.inner.members.len();
        if self
            .inner
            .current
            .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && n > 1
        {
            warn!(endpoint = %m.url, next = %self.inner.members[(i + 1) % n].url, error = %why, "etcd member failed; moving to the next endpoint");
        } else {
            debug!(endpoint = %m.url, error = %why, "etcd member failed");
        }
    }

    fn member_ok(&self, i: usize) {
        let m = &self.inner.members[i];
        let was_failed = m.failed_at.lock().ok().and_then(|mut g| g.take()).is_some();
        let prev = self.inner.current.swap(i, Ordering::Relaxed);
        if prev != i || was_failed {
            info!(endpoint = %m.url, "using etcd endpoint");
        }
    }

    /// Runs `f` with a member's client, bounded by the request timeout, trying the next
    /// member when one fails; returns the result and the member that produced it.
    pub async fn call_on<T, F, Fut>(&self, what: &str, mut f: F) -> Result<(T, usize), EtcdError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let t = self.inner.timeouts;
        let mut last: Option<EtcdError> = None;
        for i in self.order() {
            let url = &self.inner.members[i].url;
            let client = match self.client(i).await {
                Ok(c) => c,
                // Refused credentials are the same on every member: say so at once.
                Err(e) if !is_member_failure(&e) => {
                    return Err(EtcdError::Member {
                        endpoint: url.clone(),
                        source: e,
                    })
                }
                Err(e) => {
                    self.member_failed(i, &e);
                    last = Some(EtcdError::Member {
                        endpoint: url.clone(),
                        source: e,
                    });
                    continue;
                }
            };
            match tokio::time::timeout(t.request, f(client)).await {
                Ok(Ok(v)) => {
                    self.member_ok(i);
                    return Ok((v, i));
                }
                Ok(Err(e)) if is_member_failure(&e) => {
                    self.member_failed(i, &e);
                    last = Some(EtcdError::Member {
                        endpoint: url.clone(),
                        source: e,
                    });
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    let e = EtcdError::Timeout {
                        what: what.to_string(),
                        endpoint: url.clone(),
                        after: t.request,
                    };
                    self.member_failed(i, &e);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Config("no etcd endpoint".into())))
    }

    /// Like [`EtcdPool::call_on`], without the member.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, EtcdError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_on(what, f).await.map(|(v, _)| v)
    }

    /// Opens a watch on `key` with `opts` on the first member that confirms it.
    pub async fn watch(&self, key: String, opts: WatchOptions) -> Result<Watch, EtcdError> {
        let ((stream, first), member) = self
            .call_on("watch", |c| {
                let (key, opts) = (key.clone(), opts.clone());
                async move {
                    let mut w = c.watch_client().max_decoding_message_size(MAX_MESSAGE);
                    let mut s = w.watch(key, Some(opts)).await?;
                    // The member confirms the watch (or refuses it) at once; a member that
                    // cannot is not one to watch on.
                    let first = s.message().await?;
                    Ok((s, first))
                }
            })
            .await?;
        let pending = match first {
            None => {
                self.member_failed(member, &"watch closed at creation");
                return Err(EtcdError::Member {
                    endpoint: self.inner.members[member].url.clone(),
                    source: etcd_client::Error::WatchError("watch closed at creation".into()),
                });
            }
            Some(r) if r.created() && !r.canceled() && r.events().is_empty() => None,
            Some(r) => Some(r),
        };
        Ok(Watch {
            pool: self.clone(),
            member,
            stream,
            pending,
            last_heard: Instant::now(),
            probe_sent: None,
        })
    }
}

/// A watch on one member, with liveness: when it has been quiet for `watch_quiet`, a
/// progress request is sent, and if nothing comes back within the request timeout the
/// member is declared failed and the watch ends with an error (the caller resumes it from
/// its last revision, on the next member).
pub struct Watch {
    pool: EtcdPool,
    member: usize,
    stream: WatchStream,
    pending: Option<WatchResponse>,
    last_heard: Instant,
    probe_sent: Option<Instant>,
}

impl Watch {
    /// The endpoint this watch is on.
    pub fn endpoint(&self) -> &str {
        &self.pool.inner.members[self.member].url
    }

    /// The next response carrying events, a cancellation or a compaction; progress answers
    /// are consumed here. `Ok(None)`: the stream ended. Cancel-safe (state lives in `self`).
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, EtcdError> {
        if let Some(r) = self.pending.take() {
            return Ok(Some(r));
        }
        let t = self.pool.inner.timeouts;
        loop {
            let deadline = match self.probe_sent {
                Some(sent) => sent + t.request,
                None => self.last_heard + t.watch_quiet,
            };
            tokio::select! {
                m = self.stream.message() => {
                    self.last_heard = Instant::now();
                    self.probe_sent = None;
                    match m {
                        Ok(Some(r)) => {
                            if r.canceled() && r.compact_revision() == 0 {
                                // Not a compaction: the member gave up on us ("no leader").
                                let why = format!("watch cancelled: {}", r.cancel_reason());
                                self.pool.member_failed(self.member, &why);
                                return Ok(Some(r));
                            }
                            if r.events().is_empty() && !r.canceled() && r.compact_revision() == 0 {
                                // A progress answer or notification: proof of life only. Its
                                // revision is not used: etcd before 3.5.8 / 3.4.25 may send it
                                // ahead of events still queued for the watch.
                                continue;
                            }
                            return Ok(Some(r));
                        }
                        Ok(None) => {
                            self.pool.member_failed(self.member, &"watch stream closed");
                            return Ok(None);
                        }
                        Err(e) => {
                            self.pool.member_failed(self.member, &e);
                            return Err(EtcdError::Member { endpoint: self.endpoint().to_string(), source: e });
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if self.probe_sent.is_some() {
                        let e = EtcdError::Timeout {
                            what: "watch progress".into(),
                            endpoint: self.endpoint().to_string(),
                            after: t.request,
                        };
                        self.pool.member_failed(self.member, &e);
                        return Err(e);
                    }
                    self.probe_sent = Some(Instant::now());
                    if let Err(e) = self.stream.request_progress().await {
                        self.pool.member_failed(self.member, &e);
                        return Err(EtcdError::Member { endpoint: self.endpoint().to_string(), source: e });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        for ok in [
            "http://10.0.0.5:2379",
            "https://etcd-1.example:2379",
            "http://10.0.0.5:2379/",
            "10.0.0.5:2379",
            "etcd:2379",
            "http://etcd",
            "https://[fd00::1]:2379",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "http://",
            "http://10.0.0.5:2379/v3",
            "http://10.0.0.5:notaport",
            "http://10.0.0.5:0",
            "http://10.0.0.5:70000",
            "http://a b:2379",
            "http://user@host:2379",
            "http://:2379",
        ] {
            let e = check_endpoint(bad).unwrap_err();
            assert!(
                e.contains("--etcd-endpoints") && e.contains("http://10.0.0.5:2379"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn failures_are_classified() {
        use tonic::{Code, Status};
        let s = |c| etcd_client::Error::GRpcStatus(Status::new(c, "x"));
        assert!(is_member_failure(&s(Code::Unavailable)));
        assert!(is_member_failure(&s(Code::DeadlineExceeded)));
        assert!(!is_member_failure(&s(Code::PermissionDenied)));
        assert!(!is_member_failure(&s(Code::InvalidArgument)));
        assert!(!is_member_failure(&s(Code::FailedPrecondition)));
        assert!(is_member_failure(&etcd_client::Error::WatchError(
            "closed".into()
        )));
        assert!(!is_member_failure(&etcd_client::Error::InvalidArgs(
            "x".into()
        )));
    }

    #[tokio::test]
    async fn pool_checks_flags_without_connecting() {
        let opts = |eps: &[&str]| EtcdOptions {
            endpoints: eps.iter().map(|s| s.to_string()).collect(),
            prefix: "/p".into(),
            ..Default::default()
        };
        assert!(EtcdPool::new(&opts(&["http://192.0.2.1:2379"]), Timeouts::default()).is_ok());
        assert!(EtcdPool::new(&opts(&[]), Timeouts::default()).is_err());
        assert!(EtcdPool::new(&opts(&["http://a:1", "nope nope"]), Timeouts::default()).is_err());
        let mut tls = opts(&["https://a:1", "http://b:2"]);
        tls.cafile = Some("/nonexistent".into());
        let e = EtcdPool::new(&tls, Timeouts::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("http://b:2") && e.contains("https://"), "{e}");
    }

    /// Every member refusing connections: the call fails after trying each once, quickly,
    /// and names the member.
    #[tokio::test]
    async fn all_members_down_fails_fast_naming_a_member() {
        // Ports on loopback where nothing listens (bound then dropped).
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let eps: Vec<String> = (0..3).map(|_| format!("http://{}", free())).collect();
        let opts = EtcdOptions {
            endpoints: eps.clone(),
            prefix: "/p".into(),
            ..Default::default()
        };
        let pool = EtcdPool::new(&opts, Timeouts::default()).unwrap();
        let t0 = std::time::Instant::now();
        let r = pool
            .call("get", |mut c| async move { c.get("k", None).await })
            .await;
        let e = r.expect_err("nothing listens").to_string();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(eps.iter().any(|u| e.contains(u)), "{e}");
    }
}
