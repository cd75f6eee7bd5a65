//! The etcd side of the control plane: flannel's schema over the etcd v3 API.
//!
//! Reads the network config, acquires this node's subnet lease (create-if-absent
//! transactions; losing a race means choosing again), keeps it alive, and turns the other
//! nodes' leases into forwarding-table snapshots by listing and then watching from the
//! listed revision. A compacted watch relists and diffs; a deleted or expired own lease is
//! re-acquired (the same subnet when still free); while etcd is unreachable nothing here
//! touches the forwarding table, so traffic to known peers keeps flowing.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::control::config::NetworkConfig;
use crate::control::lease::{LeaseAttrs, SubnetKey};
use crate::control::subnet::{choose, stale_own, Choice, ExistingLease, Identity, NoFreeSubnet};
use crate::fib::{Fib, Peer, SharedFib};

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

/// A connected etcd client plus our prefix.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    prefix: String,
    /// Keys whose malformed values were already logged, so each is logged once per revision.
    logged: Arc<std::sync::Mutex<HashSet<(String, i64)>>>,
}

impl Registry {
    /// Connects (one attempt; callers retry with backoff).
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, EtcdError> {
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
            co = co.with_user(u.clone(), p.clone());
        }
        if opts.cafile.is_some() || opts.certfile.is_some() {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|source| EtcdError::Tls {
                    path: p.clone(),
                    source,
                })
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &opts.cafile {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&opts.certfile, &opts.keyfile) {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            co = co.with_tls(tls);
        }
        let client = Client::connect(&opts.endpoints, Some(co)).await?;
        Ok(Self {
            client,
            prefix: opts.prefix.trim_end_matches('/').to_string(),
            logged: Default::default(),
        })
    }

    /// The etcd client (the L2 control plane shares the connection).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The key prefix, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// Seconds left on etcd lease `id` (`None` when etcd does not know it).
    pub async fn lease_ttl(&self, id: i64) -> Option<i64> {
        let r = self
            .client
            .clone()
            .lease_time_to_live(id, None)
            .await
            .ok()?;
        (r.ttl() >= 0).then(|| r.ttl())
    }

    /// The etcd key of the lease for `subnets`.
    pub fn lease_key(&self, subnets: &SubnetKey) -> String {
        format!("{}{}", self.subnets_prefix(), subnets.to_key())
    }

    /// The raw network config, if present.
    pub async fn get_config(&self) -> Result<Option<Vec<u8>>, EtcdError> {
        let resp = self.client.clone().get(self.config_key(), None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Writes the config unless one exists already; returns whether ours was written.
    pub async fn create_config(&self, json: &str) -> Result<bool, EtcdError> {
        let key = self.config_key();
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, json, None)]);
        Ok(self.client.clone().txn(txn).await?.succeeded())
    }

    /// Lists every lease with the revision of the listing. Malformed entries are logged
    /// once (with their key) and left out.
    pub async fn list(&self) -> Result<(Vec<RemoteLease>, i64), EtcdError> {
        let resp = self
            .client
            .clone()
            .get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))
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
                self.client.clone().delete(self.lease_key(&s), None).await?;
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
                Some(l) => {
                    let id = self
                        .client
                        .clone()
                        .lease_grant(LEASE_TTL_SECS, None)
                        .await?
                        .id();
                    (
                        Compare::mod_revision(key.clone(), CompareOp::Equal, l.mod_revision),
                        id,
                    )
                }
                None => {
                    let id = self
                        .client
                        .clone()
                        .lease_grant(LEASE_TTL_SECS, None)
                        .await?
                        .id();
                    (Compare::version(key.clone(), CompareOp::Equal, 0), id)
                }
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
            if self.client.clone().txn(txn).await?.succeeded() {
                if matches!(choice, Choice::New(_)) && self.lost_overlap(&key, &subnets).await? {
                    debug!(subnet = %subnets, "another node created an overlapping key first; choosing again");
                    if lease_id != 0 {
                        // Revoking the lease deletes our key with it.
                        let _ = self.client.clone().lease_revoke(lease_id).await;
                    }
                    continue;
                }
                info!(subnet = %subnets, reservation, attempt, "acquired subnet lease");
                return Ok(Acquired {
                    subnet: subnets.ipv4.unwrap_or(NO_IPV4),
                    ipv6_subnet: subnets.ipv6,
                    lease_id,
                    reservation,
                });
            }
            debug!(subnet = %subnets, "lost the race for a subnet; choosing again");
            if lease_id != 0 {
                let _ = self.client.clone().lease_revoke(lease_id).await;
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
}

/// Turns the leases into a forwarding table for this node.
pub fn build_fib(
    cfg: &NetworkConfig,
    local: Ipv4Net,
    leases: &BTreeMap<String, RemoteLease>,
    decode_peer: &dyn Fn(&RemoteLease) -> Option<Peer>,
) -> Fib {
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
            warn!(subnet = %p.subnet, public_ip = %p.public_ip, "ignoring a lease that overlaps another or does not match SubnetLen");
        }
    }
    fib
}

/// Maps a lease to a data-plane peer (checks backend type and data); `None` = ignore it.
pub type PeerDecoder = Box<dyn Fn(&RemoteLease) -> Option<Peer> + Send + Sync>;

/// Everything the background control loop needs.
pub struct ControlLoop {
    pub registry: Registry,
    pub cfg: NetworkConfig,
    pub attrs: LeaseAttrs,
    pub acquired: Acquired,
    pub fib: SharedFib,
    /// Maps a lease to a data-plane peer (checks backend type and data), `None` = ignore.
    pub decode_peer: PeerDecoder,
    /// Told about every change of our own subnets (re-acquisition).
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
                .client
                .clone()
                .watch(self.registry.subnets_prefix(), Some(opts))
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
                            if let Some(h) = resp.header() {
                                revision = revision.max(h.revision());
                            }
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
                                                info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer added");
                                            }
                                            peers.insert(key, l);
                                        } else {
                                            peers.remove(&key);
                                        }
                                        changed = true;
                                    }
                                    EventType::Delete => {
                                        if let Some(l) = peers.remove(&key) {
                                            info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer removed");
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
                                warn!(subnet = %self.acquired.subnet, "our lease was deleted or expired; re-acquiring");
                                relist = true;
                                break;
                            }
                            if changed {
                                self.publish(&peers);
                            }
                        }
                        Ok(None) | Err(_) => {
                            self.stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                            let d = backoff(&mut step);
                            warn!(retry_in = ?d, "lease watch broke; resuming");
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
        debug!(peers = fib.peers().len(), "forwarding table updated");
        self.fib.store(Arc::new(fib));
    }

    async fn keepalive(&mut self) -> Result<(), EtcdError> {
        if self.acquired.reservation {
            return Ok(());
        }
        let (mut keeper, mut stream) = self
            .registry
            .client
            .clone()
            .lease_keep_alive(self.acquired.lease_id)
            .await?;
        keeper.keep_alive().await?;
        if let Some(resp) = stream.message().await? {
            if resp.ttl() <= 0 {
                warn!(
                    lease = self.acquired.lease_id,
                    "our etcd lease expired; re-acquiring"
                );
                self.reacquire().await;
            } else {
                debug!(ttl = resp.ttl(), "lease kept alive");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                self.stats
                    .lease_expiry_unix
                    .store(now + resp.ttl(), Ordering::Relaxed);
            }
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
            info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer added (relist)");
        }
    }
    for (k, l) in old {
        if !new.contains_key(k) {
            info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer removed (relist)");
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
