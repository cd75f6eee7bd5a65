//! The etcd side of the control plane: flannel's schema over the etcd v3 API.
//!
//! Reads the network config, acquires this node's subnet lease (create-if-absent
//! transactions; losing a race means choosing again), keeps it alive, and turns the other
//! nodes' leases into forwarding-table snapshots by listing and then watching from the
//! listed revision. A compacted watch relists and diffs; a deleted or expired own lease is
//! re-acquired (the same subnet when still free); while etcd is unreachable nothing here
//! touches the forwarding table, so traffic to known peers keeps flowing. Every call goes
//! through [`EtcdPool`], which bounds it in time and fails over between the etcd members.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::control::config::NetworkConfig;
use crate::control::lease::{LeaseAttrs, SubnetKey};
use crate::control::pool::{EtcdPool, Timeouts};
use crate::control::subnet::{choose, stale_own, Choice, ExistingLease, Identity, NoFreeSubnet};
use crate::fib::{Fib, Fib6, Peer, Peer6, SharedFib, SharedFib6};

/// Lease time to live, as flannel: 24 hours.
pub const LEASE_TTL_SECS: i64 = 24 * 3600;

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

/// flannel's zero `IP4Net`: the IPv4 subnet of an IPv6-only lease, as its key reads.
const NO_IPV4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

/// One lease as read from etcd.
#[derive(Debug, Clone)]
pub struct RemoteLease {
    pub key: String,
    /// The IPv4 subnet; 0.0.0.0/0 for an IPv6-only lease (its key reads `0.0.0.0-0&...`).
    pub subnet: Ipv4Net,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    /// etcd lease id; 0 = a reservation.
    pub lease_id: i64,
    pub mod_revision: i64,
    /// The revision that created the key (orders racing acquisitions).
    pub create_revision: i64,
}

impl RemoteLease {
    /// Whether the lease has an IPv4 subnet (it is not IPv6-only).
    pub fn has_ipv4(&self) -> bool {
        self.subnet != NO_IPV4
    }

    /// The subnets its key names.
    pub fn subnets(&self) -> SubnetKey {
        SubnetKey {
            ipv4: self.has_ipv4().then_some(self.subnet),
            ipv6: self.ipv6_subnet,
        }
    }
}

/// The result of an acquisition.
#[derive(Debug, Clone)]
pub struct Acquired {
    /// The IPv4 subnet; 0.0.0.0/0 when the config disables IPv4.
    pub subnet: Ipv4Net,
    /// The IPv6 subnet, when the config enables IPv6.
    pub ipv6_subnet: Option<Ipv6Net>,
    pub lease_id: i64,
    pub reservation: bool,
}

impl Acquired {
    /// The subnets of the key we hold.
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            ipv4: (self.subnet != NO_IPV4).then_some(self.subnet),
            ipv6: self.ipv6_subnet,
        }
    }
}

/// The etcd members (with failover) plus our prefix.
#[derive(Clone)]
pub struct Registry {
    pool: EtcdPool,
    prefix: String,
    /// Keys whose malformed values were already logged, so each is logged once per revision.
    logged: Arc<std::sync::Mutex<HashSet<(String, i64)>>>,
}

impl Registry {
    /// Checks the endpoints and TLS files (a bad one is an error to report, not to retry);
    /// the members are connected on first use, each call failing over between them.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, EtcdError> {
        Ok(Self {
            pool: EtcdPool::new(opts, Timeouts::default())?,
            prefix: opts.prefix.trim_end_matches('/').to_string(),
            logged: Default::default(),
        })
    }

    /// The etcd members (the L2 control plane and `overlayd status` share them).
    pub fn pool(&self) -> EtcdPool {
        self.pool.clone()
    }

    /// The key prefix, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// Seconds left on etcd lease `id` (`None` when etcd does not know it).
    pub async fn lease_ttl(&self, id: i64) -> Option<i64> {
        let r = self
            .pool
            .call("lease time-to-live", |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await
            .ok()?;
        (r.ttl() >= 0).then(|| r.ttl())
    }

    /// The key of `subnet`'s lease.
    pub fn lease_key(&self, subnets: &SubnetKey) -> String {
        format!("{}{}", self.subnets_prefix(), subnets.to_key())
    }

    /// The raw network config, if present.
    pub async fn get_config(&self) -> Result<Option<Vec<u8>>, EtcdError> {
        let key = self.config_key();
        let resp = self
            .pool
            .call("get config", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Writes the config unless one exists already; returns whether ours was written.
    pub async fn create_config(&self, json: &str) -> Result<bool, EtcdError> {
        let key = self.config_key();
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, json, None)]);
        let r = self
            .pool
            .call("create config", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(r.succeeded())
    }

    /// Lists every lease with the revision of the listing. Malformed entries are logged
    /// once (with their key) and left out.
    pub async fn list(&self) -> Result<(Vec<RemoteLease>, i64), EtcdError> {
        let prefix = self.subnets_prefix();
        let resp = self
            .pool
            .call("list leases", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let leases = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                self.decode(kv.key(), kv.value(), kv.lease(), kv.mod_revision())
                    .map(|l| RemoteLease {
                        create_revision: kv.create_revision(),
                        ..l
                    })
            })
            .collect();
        Ok((leases, rev))
    }

    fn decode(
        &self,
        key: &[u8],
        value: &[u8],
        lease_id: i64,
        mod_revision: i64,
    ) -> Option<RemoteLease> {
        let key = String::from_utf8_lossy(key).into_owned();
        let name = key.strip_prefix(&self.subnets_prefix()).unwrap_or(&key);
        let parsed = SubnetKey::parse(name)
            .map_err(|e| e.to_string())
            .and_then(|subnets| {
                LeaseAttrs::from_json(value)
                    .map(|attrs| (subnets, attrs))
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok((subnets, attrs)) => Some(RemoteLease {
                key,
                subnet: subnets.ipv4.unwrap_or(NO_IPV4),
                ipv6_subnet: subnets.ipv6,
                attrs,
                lease_id,
                mod_revision,
                create_revision: 0,
            }),
            Err(e) => {
                if self
                    .logged
                    .lock()
                    .map(|mut l| l.insert((key.clone(), mod_revision)))
                    .unwrap_or(false)
                {
                    warn!(key = %key, error = %e, "ignoring malformed lease");
                }
                None
            }
        }
    }

    /// Acquires this node's subnets (IPv4, IPv6 or both, in one key as flannel keeps them) in
    /// flannel's order: our existing lease or reservation, then `previous` (per family), then
    /// random free ones; created or updated with a compare-and-swap transaction, choosing
    /// again whenever another node wins the race.
    ///
    /// Two nodes can create different keys naming the same IPv4 (or IPv6) subnet when their
    /// other halves differ, which no single-key transaction prevents (flannel has this race):
    /// after creating a key, the listing is checked for an overlapping key created earlier,
    /// and if there is one ours is withdrawn and the choice made again.
    pub async fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: SubnetKey,
    ) -> Result<Acquired, EtcdError> {
        let value = attrs.to_json();
        let me = Identity {
            public_ip: cfg.enable_ipv4.then_some(attrs.public_ip),
            public_ipv6: attrs.public_ipv6,
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
        for attempt in 0.. {
            let (leases, _) = self.list().await?;
            let mut existing: Vec<ExistingLease> = leases
                .iter()
                .map(|l| ExistingLease {
                    key: l.subnets(),
                    public_ip: l.attrs.public_ip,
                    public_ipv6: l.attrs.public_ipv6,
                    reservation: l.lease_id == 0,
                })
                .collect();
            for s in stale_own(cfg, &existing, &me) {
                info!(subnet = %s, "deleting our old lease that no longer fits the network config");
                let key = self.lease_key(&s);
                self.pool
                    .call("delete old lease", |mut c| {
                        let key = key.clone();
                        async move { c.delete(key, None).await }
                    })
                    .await?;
                existing.retain(|e| e.key != s);
            }
            let choice = choose(cfg, &existing, &me, previous, &mut rng)?;
            let subnets = choice.key();
            let key = self.lease_key(&subnets);
            let current = leases.iter().find(|l| l.key == key);
            let reservation = current.is_some_and(|l| l.lease_id == 0);
            let (cmp, lease_id) = match current {
                Some(l) if reservation => (
                    Compare::mod_revision(key.clone(), CompareOp::Equal, l.mod_revision),
                    0,
                ),
                Some(l) => (
                    Compare::mod_revision(key.clone(), CompareOp::Equal, l.mod_revision),
                    self.grant().await?,
                ),
                None => (
                    Compare::version(key.clone(), CompareOp::Equal, 0),
                    self.grant().await?,
                ),
            };
            let put = if lease_id != 0 {
                Some(PutOptions::new().with_lease(lease_id))
            } else {
                None
            };
            let txn =
                Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::put(key.clone(), value.clone(), put)]);
            let won = self
                .pool
                .call("acquire subnet", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?
                .succeeded();
            if won {
                if matches!(choice, Choice::New(_)) && self.lost_overlap(&key, &subnets).await? {
                    debug!(subnet = %subnets, "another node created an overlapping key first; choosing again");
                    if lease_id != 0 {
                        // Revoking the lease deletes our key with it.
                        self.revoke(lease_id).await;
                    }
                    continue;
                }
                info!(subnet = %subnets, reservation, attempt, "acquired subnet lease");
                // The key now lives on the new etcd lease; the one it had (ours from a
                // previous run, or from an attempt whose answer was lost in a failover)
                // holds nothing any more: revoke it rather than leave it for 24 hours.
                if let Some(old) = current
                    .map(|l| l.lease_id)
                    .filter(|&o| o != 0 && o != lease_id)
                {
                    self.revoke(old).await;
                }
                return Ok(Acquired {
                    subnet: subnets.ipv4.unwrap_or(NO_IPV4),
                    ipv6_subnet: subnets.ipv6,
                    lease_id,
                    reservation,
                });
            }
            debug!(subnet = %subnets, "lost the race for a subnet; choosing again");
            if lease_id != 0 {
                self.revoke(lease_id).await;
            }
        }
        unreachable!("the acquisition loop only exits by returning")
    }

    /// After creating `key` (naming `subnets`): whether another key overlapping either of
    /// its subnets was created before it, i.e. a racing node got there first.
    async fn lost_overlap(&self, key: &str, subnets: &SubnetKey) -> Result<bool, EtcdError> {
        let (leases, _) = self.list().await?;
        let Some(ours) = leases.iter().find(|l| l.key == key) else {
            // Gone already (deleted by an operator): choose again.
            return Ok(true);
        };
        Ok(leases.iter().any(|l| {
            l.key != key && l.create_revision < ours.create_revision && {
                let theirs = l.subnets();
                let v4 = matches!((theirs.ipv4, subnets.ipv4), (Some(a), Some(b)) if a.contains(&b) || b.contains(&a));
                let v6 = matches!((theirs.ipv6, subnets.ipv6), (Some(a), Some(b)) if a.contains(&b) || b.contains(&a));
                v4 || v6
            }
        }))
    }

    /// [`Registry::acquire`] until it succeeds: etcd errors and an exhausted network are
    /// retried with backoff (logged at each step), as etcd may come back and leases expire.
    pub async fn acquire_with_retry(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: SubnetKey,
    ) -> Acquired {
        let mut step = 0;
        loop {
            match self.acquire(cfg, attrs, previous).await {
                Ok(a) => return a,
                Err(e) => {
                    let d = backoff(&mut step);
                    warn!(error = %e, retry_in = ?d, "cannot acquire a subnet lease yet; retrying");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// A new etcd lease of [`LEASE_TTL_SECS`].
    async fn grant(&self) -> Result<i64, EtcdError> {
        Ok(self
            .pool
            .call("grant lease", |mut c| async move {
                c.lease_grant(LEASE_TTL_SECS, None).await
            })
            .await?
            .id())
    }

    /// Revokes etcd lease `id`, best effort (it expires by itself otherwise).
    async fn revoke(&self, id: i64) {
        if let Err(e) = self
            .pool
            .call(
                "revoke lease",
                |mut c| async move { c.lease_revoke(id).await },
            )
            .await
        {
            debug!(lease = id, error = %e, "cannot revoke an unused etcd lease; it will expire");
        }
    }

    /// Sends one keepalive for etcd lease `id`; returns its remaining TTL (<= 0: expired).
    pub async fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        self.pool
            .call("lease keepalive", |c| {
                crate::control::pool::keep_alive_once(c, id)
            })
            .await
    }
}

/// Turns the leases into a forwarding table for this node (empty when the network has no
/// IPv4: `EnableIPv4` false).
pub fn build_fib(
    cfg: &NetworkConfig,
    local: Ipv4Net,
    leases: &BTreeMap<String, RemoteLease>,
    decode_peer: &dyn Fn(&RemoteLease) -> Option<Peer>,
) -> Fib {
    if !cfg.enable_ipv4 {
        return Fib::default();
    }
    let peers = leases
        .values()
        .filter(|l| l.has_ipv4() && l.subnet != local)
        .filter_map(decode_peer);
    let (fib, skipped) = Fib::new(cfg.network, cfg.subnet_len, Some(local), peers);
    // Rebuilt on every watch event: warn about each skipped lease once per process, not once
    // per rebuild (a stray lease would otherwise be logged again at every peer change).
    static WARNED: std::sync::OnceLock<std::sync::Mutex<HashSet<(Ipv4Net, Ipv4Addr)>>> =
        std::sync::OnceLock::new();
    let warned = WARNED.get_or_init(Default::default);
    for p in skipped {
        let first = warned
            .lock()
            .map(|mut w| w.insert((p.subnet, p.public_ip)))
            .unwrap_or(true);
        if first {
            warn!(subnet = %p.subnet, public_ip = %p.public_ip, "ignoring a lease that overlaps another, lies outside Network or does not match SubnetLen");
        }
    }
    fib
}

/// Turns the leases' IPv6 halves into the IPv6 forwarding table for this node (empty
/// when the network has no IPv6). Each lease naming an IPv6 subnet other than ours is read
/// by `decode_peer`, which checks its backend data and picks the underlay address.
pub fn build_fib6(
    cfg: &NetworkConfig,
    local: Option<Ipv6Net>,
    leases: &BTreeMap<String, RemoteLease>,
    decode_peer: &dyn Fn(&RemoteLease) -> Option<Peer6>,
) -> Fib6 {
    let Some(c6) = &cfg.ipv6 else {
        return Fib6::default();
    };
    let peers = leases
        .values()
        .filter(|l| l.ipv6_subnet.is_some_and(|s| Some(s) != local))
        .filter_map(decode_peer);
    let (fib, skipped) = Fib6::new(c6.network, c6.subnet_len, local, peers);
    static WARNED: std::sync::OnceLock<std::sync::Mutex<HashSet<(Ipv6Net, IpAddr)>>> =
        std::sync::OnceLock::new();
    let warned = WARNED.get_or_init(Default::default);
    for p in skipped {
        let first = warned
            .lock()
            .map(|mut w| w.insert((p.subnet, p.underlay)))
            .unwrap_or(true);
        if first {
            warn!(ipv6_subnet = %p.subnet, underlay = %p.underlay, "ignoring a lease whose IPv6 subnet overlaps another, lies outside IPv6Network or does not match IPv6SubnetLen");
        }
    }
    fib
}

/// Maps a lease to a data-plane peer (checks backend type and data); `None` = ignore it.
pub type PeerDecoder = Box<dyn Fn(&RemoteLease) -> Option<Peer> + Send + Sync>;

/// Maps a lease's IPv6 half to an IPv6 data-plane peer; `None` = ignore it.
pub type PeerDecoder6 = Box<dyn Fn(&RemoteLease) -> Option<Peer6> + Send + Sync>;

/// Everything the background control loop needs.
pub struct ControlLoop {
    pub registry: Registry,
    pub cfg: NetworkConfig,
    pub attrs: LeaseAttrs,
    pub acquired: Acquired,
    pub fib: SharedFib,
    /// Maps a lease to a data-plane peer (checks backend type and data), `None` = ignore.
    pub decode_peer: PeerDecoder,
    /// The IPv6 forwarding table, built from the same leases.
    pub fib6: SharedFib6,
    /// Maps a lease's IPv6 half to an IPv6 peer, `None` = ignore.
    pub decode_peer6: PeerDecoder6,
    /// Told about every change of our own subnet (re-acquisition).
    pub subnet_tx: watch::Sender<SubnetKey>,
    /// Own-lease keepalive period.
    pub keepalive_every: Duration,
    /// Counters and lease state for the metrics exporter.
    pub stats: Arc<crate::counters::ControlStats>,
}

/// Retry delay after `step` failures in a row: 1 s doubling to 30 s (shared with the L2
/// control loop).
pub(crate) fn backoff(step: &mut u32) -> Duration {
    *step = (*step + 1).min(6);
    Duration::from_millis(500u64 << *step).min(Duration::from_secs(30))
}

impl ControlLoop {
    /// Runs until cancelled: keeps the lease alive and the forwarding table current.
    pub async fn run(mut self) {
        let mut peers: BTreeMap<String, RemoteLease> = BTreeMap::new();
        let mut revision: i64 = 0;
        let mut step = 0;
        let mut relist = true;
        let mut ka = tokio::time::interval(self.keepalive_every);
        ka.tick().await;
        loop {
            if relist {
                match self.registry.list().await {
                    Ok((list, rev)) => {
                        let new: BTreeMap<String, RemoteLease> =
                            list.into_iter().map(|l| (l.key.clone(), l)).collect();
                        log_diff(&peers, &new);
                        peers = new;
                        revision = rev;
                        relist = false;
                        step = 0;
                        if !peers.contains_key(&self.registry.lease_key(&self.acquired.key())) {
                            self.reacquire().await;
                            continue;
                        }
                        self.publish(&peers);
                    }
                    Err(e) => {
                        self.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
                        let d = backoff(&mut step);
                        warn!(error = %e, retry_in = ?d, "cannot list leases; forwarding to known peers continues");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                }
            }
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream = match self
                .registry
                .pool
                .watch(self.registry.subnets_prefix(), opts)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    self.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
                    let d = backoff(&mut step);
                    warn!(error = %e, retry_in = ?d, "cannot watch leases; forwarding to known peers continues");
                    tokio::time::sleep(d).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    _ = ka.tick() => {
                        if let Err(e) = self.keepalive().await {
                            self.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, "lease keepalive failed; will retry");
                        }
                    }
                    msg = stream.message() => match msg {
                        Ok(Some(resp)) => {
                            if resp.canceled() || resp.compact_revision() > 0 {
                                warn!(compact_revision = resp.compact_revision(), reason = resp.cancel_reason(), "lease watch cancelled (compaction); relisting");
                                self.stats.relists.fetch_add(1, Ordering::Relaxed);
                                relist = true;
                                break;
                            }
                            // The revision to resume from comes from the events only: a
                            // response header's revision can run ahead of events still to
                            // come (etcd sends history in batches when catching up).
                            let mut changed = false;
                            let mut own_gone = false;
                            for ev in resp.events() {
                                let Some(kv) = ev.kv() else { continue };
                                let key = String::from_utf8_lossy(kv.key()).into_owned();
                                revision = revision.max(kv.mod_revision());
                                match ev.event_type() {
                                    EventType::Put => {
                                        if let Some(l) = self.registry.decode(kv.key(), kv.value(), kv.lease(), kv.mod_revision()) {
                                            if !peers.contains_key(&key) {
                                                info!(subnet = %l.subnets(), public_ip = %l.attrs.public_ip, public_ipv6 = ?l.attrs.public_ipv6, "peer added");
                                            }
                                            peers.insert(key, l);
                                        } else {
                                            peers.remove(&key);
                                        }
                                        changed = true;
                                    }
                                    EventType::Delete => {
                                        if let Some(l) = peers.remove(&key) {
                                            info!(subnet = %l.subnets(), public_ip = %l.attrs.public_ip, public_ipv6 = ?l.attrs.public_ipv6, "peer removed");
                                        }
                                        if key == self.registry.lease_key(&self.acquired.key()) {
                                            own_gone = true;
                                        }
                                        changed = true;
                                    }
                                }
                            }
                            step = 0;
                            if own_gone {
                                warn!(subnet = %self.acquired.key(), "our lease was deleted or expired; re-acquiring");
                                relist = true;
                                break;
                            }
                            if changed {
                                self.publish(&peers);
                            }
                        }
                        Ok(None) | Err(_) => {
                            self.stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                            self.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
                            let d = backoff(&mut step);
                            warn!(retry_in = ?d, endpoint = stream.endpoint(), revision, "lease watch broke; resuming from the last revision seen");
                            tokio::time::sleep(d).await;
                            break;
                        }
                    }
                }
            }
        }
    }

    fn publish(&self, peers: &BTreeMap<String, RemoteLease>) {
        let mut fib = build_fib(&self.cfg, self.acquired.subnet, peers, &*self.decode_peer);
        fib.adopt_counters(&self.fib.load());
        let mut fib6 = build_fib6(
            &self.cfg,
            self.acquired.ipv6_subnet,
            peers,
            &*self.decode_peer6,
        );
        fib6.adopt_counters(&self.fib6.load());
        debug!(
            peers = fib.peers().len(),
            peers6 = fib6.peers().len(),
            "forwarding table updated"
        );
        self.fib.store(Arc::new(fib));
        self.fib6.store(Arc::new(fib6));
    }

    async fn keepalive(&mut self) -> Result<(), EtcdError> {
        if self.acquired.reservation {
            return Ok(());
        }
        let ttl = self.registry.keep_alive(self.acquired.lease_id).await?;
        if ttl <= 0 {
            warn!(
                lease = self.acquired.lease_id,
                "our etcd lease expired; re-acquiring"
            );
            self.reacquire().await;
        } else {
            debug!(
                ttl,
                endpoint = self.registry.pool.current_endpoint(),
                "lease kept alive"
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            self.stats
                .lease_expiry_unix
                .store(now + ttl, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Re-acquires our lease, preferring the subnet we hold; retries until it succeeds.
    async fn reacquire(&mut self) {
        let mut step = 0;
        loop {
            match self
                .registry
                .acquire(&self.cfg, &self.attrs, self.acquired.key())
                .await
            {
                Ok(a) => {
                    if a.key() != self.acquired.key() {
                        warn!(old = %self.acquired.key(), new = %a.key(), "re-acquired a different subnet");
                    } else {
                        info!(subnet = %a.key(), "re-acquired our subnet");
                    }
                    self.acquired = a;
                    let _ = self.subnet_tx.send(self.acquired.key());
                    return;
                }
                Err(e) => {
                    let d = backoff(&mut step);
                    warn!(error = %e, retry_in = ?d, "re-acquiring our lease failed; forwarding continues");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }
}

fn log_diff(old: &BTreeMap<String, RemoteLease>, new: &BTreeMap<String, RemoteLease>) {
    for (k, l) in new {
        if !old.contains_key(k) && !old.is_empty() {
            info!(subnet = %l.subnets(), public_ip = %l.attrs.public_ip, public_ipv6 = ?l.attrs.public_ipv6, "peer added (relist)");
        }
    }
    for (k, l) in old {
        if !new.contains_key(k) {
            info!(subnet = %l.subnets(), public_ip = %l.attrs.public_ip, public_ipv6 = ?l.attrs.public_ipv6, "peer removed (relist)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut s = 0;
        let first = backoff(&mut s);
        let mut last = first;
        for _ in 0..10 {
            last = backoff(&mut s);
        }
        assert!(first < last);
        assert!(last <= Duration::from_secs(30));
    }
}
