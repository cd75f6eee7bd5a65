//! The etcd side of the control plane: flannel's schema over the etcd v3 API.
//!
//! Reads the network config, acquires this node's subnet lease (create-if-absent
//! transactions; losing a race means choosing again), keeps it alive, and turns the other
//! nodes' leases into forwarding-table snapshots by listing and then watching from the
//! listed revision. A compacted watch relists and diffs; a deleted or expired own lease is
//! re-acquired (the same subnet when still free); while etcd is unreachable nothing here
//! touches the forwarding table, so traffic to known peers keeps flowing. Every call goes
//! through [`EtcdPool`], which bounds it in time and fails over between the etcd members.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Event, EventType, KeyValue, PutOptions, Txn, TxnOp};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::control::config::NetworkConfig;
pub use crate::control::follow::backoff;
use crate::control::follow::{list_prefix, Flow, Follow, Follower};
use crate::control::lease::{LeaseAttrs, SubnetKey};
pub use crate::control::pool::{EtcdError, EtcdOptions};
use crate::control::pool::{EtcdPool, Timeouts};
use crate::control::subnet::{choose, stale_own, Choice, ExistingLease, Identity};

/// Lease time to live, as flannel: 24 hours.
pub const LEASE_TTL_SECS: i64 = 24 * 3600;

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
    /// Malformed lease key → the revision of the version logged (one entry per current
    /// malformed key: pruned at each listing and deletion).
    logged: Arc<std::sync::Mutex<HashMap<String, i64>>>,
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

    /// Lists every lease (in pages, at one revision) with the revision of the listing.
    /// Malformed entries are logged once per version (with their key) and left out.
    pub async fn list(&self) -> Result<(Vec<RemoteLease>, i64), EtcdError> {
        let (kvs, rev) =
            list_prefix(&self.pool, "list leases", &self.subnets_prefix(), false).await?;
        Ok((self.decode_all(&kvs), rev))
    }

    /// Decodes a complete listing; the malformed-lease log forgets the keys it lacks.
    fn decode_all(&self, kvs: &[KeyValue]) -> Vec<RemoteLease> {
        if let Ok(mut logged) = self.logged.lock() {
            let keys: HashSet<&[u8]> = kvs.iter().map(|kv| kv.key()).collect();
            logged.retain(|k, _| keys.contains(k.as_bytes()));
        }
        kvs.iter().filter_map(|kv| self.decode(kv)).collect()
    }

    /// Forgets a deleted key in the malformed-lease log.
    fn forget(&self, key: &str) {
        if let Ok(mut logged) = self.logged.lock() {
            logged.remove(key);
        }
    }

    fn decode(&self, kv: &KeyValue) -> Option<RemoteLease> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let name = key.strip_prefix(&self.subnets_prefix()).unwrap_or(&key);
        let parsed = SubnetKey::parse(name)
            .map_err(|e| e.to_string())
            .and_then(|subnets| {
                LeaseAttrs::from_json(kv.value())
                    .map(|attrs| (subnets, attrs))
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok((subnets, attrs)) => Some(RemoteLease {
                key,
                subnet: subnets.ipv4.unwrap_or(NO_IPV4),
                ipv6_subnet: subnets.ipv6,
                attrs,
                lease_id: kv.lease(),
                mod_revision: kv.mod_revision(),
                create_revision: kv.create_revision(),
            }),
            Err(e) => {
                let first = self
                    .logged
                    .lock()
                    .map(|mut l| {
                        l.insert(key.clone(), kv.mod_revision()) != Some(kv.mod_revision())
                    })
                    .unwrap_or(false);
                if first {
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

/// Where the control loop hands the leases it reads (the peers and forwarding tables are
/// built above this layer, with the backend).
pub trait LeaseSink: Send {
    /// A complete listing replaces every lease known.
    fn reset(&mut self, leases: Vec<RemoteLease>);
    /// A lease was added or changed.
    fn put(&mut self, lease: RemoteLease);
    /// The lease at `key` is gone (deleted, expired, or now unreadable).
    fn remove(&mut self, key: &str);
    /// Builds and publishes the forwarding tables for a node holding `own`.
    fn publish(&mut self, own: &Acquired);
}

/// Everything the background control loop needs.
pub struct ControlLoop {
    pub registry: Registry,
    pub cfg: NetworkConfig,
    pub attrs: LeaseAttrs,
    pub acquired: Acquired,
    /// Turns the leases into the forwarding tables.
    pub sink: Box<dyn LeaseSink>,
    /// Told about every change of our own subnet (re-acquisition).
    pub subnet_tx: watch::Sender<SubnetKey>,
    /// Own-lease keepalive period.
    pub keepalive_every: Duration,
    /// Counters and lease state for the metrics exporter.
    pub stats: Arc<crate::counters::ControlStats>,
}

impl ControlLoop {
    /// Runs until cancelled: keeps the lease alive and the forwarding table current.
    pub async fn run(mut self) {
        let follow = Follow {
            pool: self.registry.pool(),
            what: "leases",
            prefix: self.registry.subnets_prefix(),
            keys_only: false,
            keepalive_every: self.keepalive_every,
            stats: self.stats.clone(),
        };
        follow.run(&mut self).await
    }

    fn own_key(&self) -> String {
        self.registry.lease_key(&self.acquired.key())
    }

    /// Applies one watch event; returns whether our own key was deleted.
    async fn apply(&mut self, ev: &Event) -> bool {
        let Some(kv) = ev.kv() else { return false };
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let own = key == self.own_key();
        match ev.event_type() {
            EventType::Put => {
                if own && kv.value() != self.attrs.to_json().as_bytes() {
                    self.reassert(kv.lease()).await;
                }
                match self.registry.decode(kv) {
                    Some(l) => self.sink.put(l),
                    None => self.sink.remove(&key),
                }
                false
            }
            EventType::Delete => {
                self.registry.forget(&key);
                self.sink.remove(&key);
                own
            }
        }
    }

    /// Another writer replaced our lease's value: writes ours back, on our etcd lease.
    async fn reassert(&mut self, their_lease: i64) {
        if self.acquired.reservation {
            warn!(key = %self.own_key(), "our reservation's value was changed by another writer; keeping it (reservations are the operator's)");
            return;
        }
        let (key, value, lease) = (self.own_key(), self.attrs.to_json(), self.acquired.lease_id);
        tracing::error!(key = %key, their_etcd_lease = their_lease, "our lease was overwritten by another writer; writing ours back");
        let put = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let r = self
            .registry
            .pool
            .call("re-assert our lease", |mut c| {
                let (key, value, put) = (key.clone(), value.clone(), put.clone());
                async move { c.put(key, value, put).await }
            })
            .await;
        if let Err(e) = r {
            self.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "cannot write our lease back; the next change or relist retries");
        }
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

impl Follower for ControlLoop {
    async fn listed(&mut self, kvs: Vec<KeyValue>) -> Result<Flow, EtcdError> {
        let leases = self.registry.decode_all(&kvs);
        let own = self.own_key();
        let own_value = kvs
            .iter()
            .find(|kv| kv.key() == own.as_bytes())
            .map(|kv| (kv.value() == self.attrs.to_json().as_bytes(), kv.lease()));
        self.sink.reset(leases);
        match own_value {
            None => {
                self.reacquire().await;
                return Ok(Flow::Relist);
            }
            Some((false, theirs)) => self.reassert(theirs).await,
            Some((true, _)) => {}
        }
        self.sink.publish(&self.acquired);
        Ok(Flow::Watch)
    }

    async fn changed(&mut self, events: &[Event]) -> Flow {
        let mut own_gone = false;
        for ev in events {
            own_gone |= self.apply(ev).await;
        }
        if own_gone {
            warn!(subnet = %self.acquired.key(), "our lease was deleted or expired; re-acquiring");
            return Flow::Relist;
        }
        if !events.is_empty() {
            self.sink.publish(&self.acquired);
        }
        Flow::Watch
    }

    async fn keepalive(&mut self) -> Result<(), EtcdError> {
        ControlLoop::keepalive(self).await
    }
}
