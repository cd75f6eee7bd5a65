//! The L2 control plane: reads each attached network's config from etcd, announces this
//! node as a member of those networks (keys on an etcd lease, kept alive, deleted on a
//! clean stop), and keeps every network's member snapshot current from a watch.
//!
//! Layout next to flannel's keys (default prefix `/coreos.com/network`):
//! ```text
//! <prefix>/config                          flannel's network config (L3)
//! <prefix>/subnets/10.5.34.0-24            flannel's leases (L3)
//! <prefix>/l2/networks/<name>              {"VNI":100,"Backend":"vxlan"}      operator
//! <prefix>/l2/members/<name>/<PublicIP>    {"PublicIP":"192.168.1.10"}        each node
//! ```
//!
//! A member key alone does not make a member: a member counts (gets floods, its frames are
//! accepted) only while a current subnet lease carries its address as `PublicIP` (or
//! `PublicIPv6`), as the routed forwarding tables ([`LeaseHolders`]) say. The snapshots are
//! re-checked against the leases on every member change and every swap of those tables
//! (the L3 loop tells, [`LeaseHolders::changed`]), so a node whose lease expired stops
//! counting as soon as the L3 loop has seen it go, with its key still there; a slow
//! [`LEASE_RECHECK`] remains as a safety net.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Event, EventType, KeyValue, PutOptions};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::config::{L2ConfigError, L2NetworkConfig};
use super::switch::{Members, Shared};
use crate::control::follow::{Flow, Follow, Follower};
use crate::control::pool::{EtcdError, EtcdPool};
use crate::counters::ControlStats;
use crate::fib::{SharedFib, SharedFib6};

/// Seconds a member key outlives its node's last keepalive.
pub const MEMBER_TTL_SECS: i64 = 90;
/// How often the member lease is kept alive.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// How often the member snapshots are re-checked against the leases without being told
/// of a change (a safety net: every swap of the tables is told).
pub const LEASE_RECHECK: Duration = Duration::from_secs(30);

/// Where the current subnet leases' addresses are read: the routed forwarding tables, which
/// the L3 control loop keeps to the leases (every underlay address of every kept lease).
#[derive(Clone)]
pub struct LeaseHolders {
    pub fib: SharedFib,
    pub fib6: SharedFib6,
    /// Told after each swap of `fib`/`fib6` (`peers::Tables::changes`).
    pub changed: watch::Receiver<()>,
}

impl LeaseHolders {
    /// Whether a current lease carries `ip` as its `PublicIP` or `PublicIPv6`.
    pub fn holds(&self, ip: Ipv4Addr) -> bool {
        self.fib.load().is_known_sender(ip) || self.fib6.load().is_known_sender(ip)
    }
}

/// The members of one network that count: those other than us whose address holds a
/// current lease (`holds`); and the announced ones left out for holding none.
pub fn lease_holding(
    announced: &BTreeSet<Ipv4Addr>,
    self_ip: Ipv4Addr,
    holds: impl Fn(Ipv4Addr) -> bool,
) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    announced
        .iter()
        .copied()
        .filter(|ip| *ip != self_ip)
        .partition(|ip| holds(*ip))
}

/// Why the L2 control plane cannot start.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("invalid L2 network config in etcd at {key}: {source}")]
    Config { key: String, source: L2ConfigError },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl From<etcd_client::Error> for L2Error {
    fn from(e: etcd_client::Error) -> Self {
        L2Error::Etcd(e.into())
    }
}

/// `<prefix>/l2/networks/<name>`.
pub fn network_key(prefix: &str, name: &str) -> String {
    format!("{}/l2/networks/{name}", prefix.trim_end_matches('/'))
}

/// `<prefix>/l2/members/` (every network's members).
pub fn members_root(prefix: &str) -> String {
    format!("{}/l2/members/", prefix.trim_end_matches('/'))
}

/// `<prefix>/l2/members/<name>/<ip>`.
pub fn member_key(prefix: &str, name: &str, ip: Ipv4Addr) -> String {
    format!("{}{name}/{ip}", members_root(prefix))
}

/// Splits a member key into network name and node address (`None`: not a member key).
pub fn parse_member_key(prefix: &str, key: &str) -> Option<(String, Ipv4Addr)> {
    let rest = key.strip_prefix(&members_root(prefix))?;
    let (name, ip) = rest.split_once('/')?;
    Some((name.to_string(), ip.parse().ok()?))
}

/// Reads network `name`'s config, waiting (and saying so once) while it is absent. An
/// invalid config is an error: the operator must fix it.
pub async fn wait_network(
    pool: &EtcdPool,
    prefix: &str,
    name: &str,
) -> Result<L2NetworkConfig, L2Error> {
    let key = network_key(prefix, name);
    let mut logged = false;
    loop {
        let got = pool
            .call("get L2 network", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await;
        match got {
            Ok(r) => {
                if let Some(kv) = r.kvs().first() {
                    return L2NetworkConfig::parse(kv.value())
                        .map_err(|source| L2Error::Config { key, source });
                }
                if !logged {
                    warn!(key = %key, "no L2 network config in etcd yet; waiting for one");
                    logged = true;
                }
            }
            Err(e) => {
                if !logged {
                    warn!(key = %key, error = %e, "cannot read the L2 network config; retrying");
                    logged = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Keeps membership current until cancelled. `names[i]` is `shared.nets[i]`'s name.
pub struct L2Control {
    pub pool: EtcdPool,
    pub prefix: String,
    pub names: Vec<String>,
    pub self_ip: Ipv4Addr,
    pub shared: Arc<Shared>,
    /// etcd errors, watch restarts and relists of the membership loop (`shared.control`).
    pub stats: Arc<ControlStats>,
    pub leases: LeaseHolders,
    lease: i64,
    /// Every network's members as last read.
    all: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// The same, handed to the [`Publisher`].
    announced: watch::Sender<Announced>,
}

/// Every network's announced members (their keys), by network name.
type Announced = Arc<BTreeMap<String, BTreeSet<Ipv4Addr>>>;

/// Turns the announced members into the snapshots the workers use (lease holders only), on
/// every change of the announcements or of the forwarding tables, and every
/// [`LEASE_RECHECK`].
struct Publisher {
    names: Vec<String>,
    self_ip: Ipv4Addr,
    shared: Arc<Shared>,
    leases: LeaseHolders,
}

impl Publisher {
    async fn run(mut self, mut rx: watch::Receiver<Announced>) {
        let mut tick = tokio::time::interval(LEASE_RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // False once the tables' sender is gone (the L3 loop stopped): the tick remains.
        let mut told = true;
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                changed = self.leases.changed.changed(), if told => told = changed.is_ok(),
                _ = tick.tick() => {}
            }
            let all = rx.borrow_and_update().clone();
            self.publish(&all);
        }
    }

    /// Publishes every network's member snapshot (lease holders, without ourselves).
    fn publish(&self, all: &BTreeMap<String, BTreeSet<Ipv4Addr>>) {
        let none = BTreeSet::new();
        for (i, name) in self.names.iter().enumerate() {
            let announced = all.get(name).unwrap_or(&none);
            let (ips, unleased) =
                lease_holding(announced, self.self_ip, |ip| self.leases.holds(ip));
            let net = &self.shared.nets[i];
            let before = net
                .stats
                .members_unleased
                .swap(unleased.len() as u64, Ordering::Relaxed);
            let m = Members::new(ips);
            let moved = **net.members.load() != m;
            if moved || before != unleased.len() as u64 {
                info!(network = %name, members = ?m.ips(), without_lease = ?unleased, "L2 members");
            }
            if moved {
                self.shared.set_members(i as u16, m);
            }
        }
    }
}

impl L2Control {
    pub fn new(
        pool: EtcdPool,
        prefix: String,
        names: Vec<String>,
        self_ip: Ipv4Addr,
        shared: Arc<Shared>,
        leases: LeaseHolders,
    ) -> Self {
        Self {
            pool,
            prefix,
            names,
            self_ip,
            stats: shared.control.clone(),
            shared,
            leases,
            lease: 0,
            all: BTreeMap::new(),
            announced: watch::channel(Arc::default()).0,
        }
    }

    fn member_value(&self) -> String {
        serde_json::json!({ "PublicIP": self.self_ip.to_string() }).to_string()
    }

    /// Writes our member keys on a (new, if needed) lease.
    pub async fn announce(&mut self) -> Result<(), EtcdError> {
        if self.lease == 0 {
            self.lease = self
                .pool
                .call("grant L2 member lease", |mut c| async move {
                    c.lease_grant(MEMBER_TTL_SECS, None).await
                })
                .await?
                .id();
        }
        let lease = self.lease;
        for name in &self.names {
            let (key, value) = (
                member_key(&self.prefix, name, self.self_ip),
                self.member_value(),
            );
            self.pool
                .call("announce L2 member", |mut c| {
                    let (key, value) = (key.clone(), value.clone());
                    async move {
                        c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                            .await
                    }
                })
                .await?;
        }
        info!(networks = ?self.names, public_ip = %self.self_ip, "announced L2 membership");
        Ok(())
    }

    /// Removes our member keys (clean stop): peers stop flooding to us at once.
    pub async fn withdraw(pool: EtcdPool, prefix: String, names: Vec<String>, ip: Ipv4Addr) {
        for name in &names {
            let key = member_key(&prefix, name, ip);
            let _ = pool
                .call("withdraw L2 member", |mut c| {
                    let key = key.clone();
                    async move { c.delete(key, None).await }
                })
                .await;
        }
    }

    /// Every member of every network in a listing of member keys.
    fn members(&self, kvs: &[KeyValue]) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
        let mut m: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key());
            match parse_member_key(&self.prefix, &key) {
                Some((name, ip)) => {
                    m.entry(name).or_default().insert(ip);
                }
                None => debug!(key = %key, "ignoring a malformed L2 member key"),
            }
        }
        m
    }

    /// Hands every network's announced members to the [`Publisher`].
    fn publish(&self, all: &BTreeMap<String, BTreeSet<Ipv4Addr>>) {
        self.announced.send_replace(Arc::new(all.clone()));
    }

    fn own_missing(&self, all: &BTreeMap<String, BTreeSet<Ipv4Addr>>) -> bool {
        self.names
            .iter()
            .any(|n| !all.get(n).is_some_and(|s| s.contains(&self.self_ip)))
    }

    /// Runs until cancelled: list, then watch (resumed after errors, relisted after a
    /// compaction); re-announce when our keys vanish or our lease expires. While etcd is
    /// unreachable the last snapshots stay in force.
    pub async fn run(mut self) {
        let follow = Follow {
            pool: self.pool.clone(),
            what: "L2 members",
            prefix: members_root(&self.prefix),
            keys_only: true,
            keepalive_every: KEEPALIVE,
            stats: self.stats.clone(),
        };
        let publisher = Publisher {
            names: self.names.clone(),
            self_ip: self.self_ip,
            shared: self.shared.clone(),
            leases: self.leases.clone(),
        };
        let rx = self.announced.subscribe();
        tokio::select! {
            () = follow.run(&mut self) => {}
            () = publisher.run(rx) => {}
        }
    }
}

impl Follower for L2Control {
    async fn listed(&mut self, kvs: Vec<KeyValue>) -> Result<Flow, EtcdError> {
        self.all = self.members(&kvs);
        if self.own_missing(&self.all) {
            self.announce().await?;
            return Ok(Flow::Relist);
        }
        self.publish(&self.all);
        Ok(Flow::Watch)
    }

    async fn changed(&mut self, events: &[Event]) -> Flow {
        let mut own_gone = false;
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let Some((name, ip)) = parse_member_key(&self.prefix, &key) else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => {
                    self.all.entry(name).or_default().insert(ip);
                }
                EventType::Delete => {
                    if let Some(s) = self.all.get_mut(&name) {
                        s.remove(&ip);
                    }
                    own_gone |= ip == self.self_ip && self.names.contains(&name);
                }
            }
        }
        if own_gone {
            warn!("our L2 member key was deleted; announcing again");
            return Flow::Relist;
        }
        self.publish(&self.all);
        Flow::Watch
    }

    async fn keepalive(&mut self) -> Result<(), EtcdError> {
        let lease = self.lease;
        let ttl = self
            .pool
            .call("L2 member keepalive", |c| {
                crate::control::pool::keep_alive_once(c, lease)
            })
            .await?;
        if ttl <= 0 {
            warn!("the L2 member lease expired; announcing again");
            self.lease = 0;
            self.announce().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let p = "/coreos.com/network/";
        assert_eq!(network_key(p, "a"), "/coreos.com/network/l2/networks/a");
        let k = member_key(p, "tenant-a", Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(k, "/coreos.com/network/l2/members/tenant-a/10.0.0.1");
        assert_eq!(
            parse_member_key(p, &k),
            Some(("tenant-a".into(), Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(
            parse_member_key(p, "/coreos.com/network/l2/members/a/x"),
            None
        );
        assert_eq!(
            parse_member_key(p, "/coreos.com/network/l2/members/a"),
            None
        );
        assert_eq!(parse_member_key(p, "/other/l2/members/a/10.0.0.1"), None);
    }

    #[test]
    fn only_lease_holders_other_than_us_count() {
        let ip = |d| Ipv4Addr::new(192, 168, 77, d);
        let announced: BTreeSet<Ipv4Addr> = [ip(1), ip(2), ip(3), ip(99)].into();
        let leased = [ip(1), ip(2), ip(3)];
        let (members, unleased) = lease_holding(&announced, ip(1), |a| leased.contains(&a));
        assert_eq!(members, [ip(2), ip(3)]);
        assert_eq!(unleased, [ip(99)]);
        // No lease at all: nobody counts, and we are never our own member.
        let (members, unleased) = lease_holding(&announced, ip(1), |_| false);
        assert!(members.is_empty());
        assert_eq!(unleased, [ip(2), ip(3), ip(99)]);
        assert_eq!(
            lease_holding(&BTreeSet::new(), ip(1), |_| true),
            (vec![], vec![])
        );
    }
}
