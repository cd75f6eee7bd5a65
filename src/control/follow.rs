//! One list → watch → resume loop over an etcd key prefix, with an etcd lease kept alive
//! beside it, shared by the L3 lease loop and the L2 membership loop.
//!
//! [`list_prefix`] reads a prefix page by page ([`PAGE`] keys each, continuing after the last
//! key, every page at the first page's revision, so the listing is one consistent snapshot
//! however many keys there are). [`Follow::run`] lists, hands the listing to the
//! [`Follower`], watches from the listed revision + 1, hands over each batch of events,
//! resumes a broken watch from the last revision its events carried (a response header's
//! revision can run ahead of events still queued when etcd catches a watch up in batches),
//! relists on compaction or when the follower asks, renews the follower's lease on a period,
//! backs off after errors and counts them. While etcd is unreachable the follower keeps what
//! it has.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Event, GetOptions, KeyValue, WatchOptions};
use tracing::warn;

use super::pool::{EtcdError, EtcdPool, MAX_MESSAGE};
use crate::counters::ControlStats;

/// Keys per page of a listing: small enough that a page of leases stays far below any
/// message size limit, large enough that 100 000 keys take 20 round trips.
pub const PAGE: i64 = 5_000;

/// Retry delay after `step` failures in a row: 1 s doubling to 30 s.
pub fn backoff(step: &mut u32) -> Duration {
    *step = (*step + 1).min(6);
    Duration::from_millis(500u64 << *step).min(Duration::from_secs(30))
}

/// The end of the key range holding every key that starts with `prefix` (etcd's
/// `range_end`: the prefix with its last byte below 0xff incremented; `\0` = to the end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key under `prefix` (with values unless `keys_only`) and the revision of the
/// listing, read in pages of [`PAGE`] at one revision.
pub async fn list_prefix(
    pool: &EtcdPool,
    what: &str,
    prefix: &str,
    keys_only: bool,
) -> Result<(Vec<KeyValue>, i64), EtcdError> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut all = Vec::new();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision != 0 {
            opts = opts.with_revision(revision);
        }
        if keys_only {
            opts = opts.with_keys_only();
        }
        let mut resp = pool
            .call(what, |c| {
                let (from, opts) = (from.clone(), opts.clone());
                async move {
                    let mut kv = c.kv_client().max_decoding_message_size(MAX_MESSAGE);
                    kv.get(from, Some(opts)).await
                }
            })
            .await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        match kvs.last() {
            Some(last) if more => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => {
                all.extend(kvs);
                return Ok((all, revision));
            }
        }
        all.extend(kvs);
    }
}

/// What the loop does after a follower's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on watching.
    Watch,
    /// List again (the follower re-created its own keys, or found them gone).
    Relist,
}

/// The side of a loop that knows the keys: turns listings and events into its state.
pub trait Follower: Send {
    /// A complete listing replaces what was known. An error backs off and lists again.
    fn listed(
        &mut self,
        kvs: Vec<KeyValue>,
    ) -> impl Future<Output = Result<Flow, EtcdError>> + Send;
    /// One batch of watch events, in order.
    fn changed(&mut self, events: &[Event]) -> impl Future<Output = Flow> + Send;
    /// Renews the follower's etcd lease (re-creating what it holds if the lease is gone).
    fn keepalive(&mut self) -> impl Future<Output = Result<(), EtcdError>> + Send;
}

/// One followed prefix.
pub struct Follow {
    pub pool: EtcdPool,
    /// What is followed, for the logs ("leases", "L2 members").
    pub what: &'static str,
    pub prefix: String,
    /// List keys only (the follower reads nothing but the keys).
    pub keys_only: bool,
    pub keepalive_every: Duration,
    /// etcd errors, watch restarts and relists are counted here.
    pub stats: Arc<ControlStats>,
}

impl Follow {
    /// Runs until cancelled.
    pub async fn run<F: Follower>(self, f: &mut F) {
        let mut step = 0;
        let mut ka = tokio::time::interval(self.keepalive_every);
        ka.tick().await;
        loop {
            let Some(revision) = self.list(f, &mut step).await else {
                continue;
            };
            self.watch(f, revision, &mut step, &mut ka).await;
        }
    }

    /// Lists and hands the listing over: `Some(revision)` to watch from, `None` to list
    /// again (after a back-off when something failed).
    async fn list<F: Follower>(&self, f: &mut F, step: &mut u32) -> Option<i64> {
        let listed = match list_prefix(&self.pool, self.what, &self.prefix, self.keys_only).await {
            Ok((kvs, revision)) => f.listed(kvs).await.map(|flow| (flow, revision)),
            Err(e) => Err(e),
        };
        match listed {
            Ok((Flow::Watch, revision)) => {
                *step = 0;
                Some(revision)
            }
            Ok((Flow::Relist, _)) => None,
            Err(e) => {
                self.failed(step, e.to_string(), "cannot list").await;
                None
            }
        }
    }

    async fn failed(&self, step: &mut u32, e: String, doing: &str) {
        self.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
        let d = backoff(step);
        warn!(error = %e, retry_in = ?d, what = self.what, "{doing}; forwarding to known peers continues");
        tokio::time::sleep(d).await;
    }

    /// Watches from `revision` + 1, resuming after errors, until a relist is due.
    async fn watch<F: Follower>(
        &self,
        f: &mut F,
        mut revision: i64,
        step: &mut u32,
        ka: &mut tokio::time::Interval,
    ) {
        loop {
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream = match self.pool.watch(self.prefix.clone(), opts).await {
                Ok(s) => s,
                Err(e) => {
                    self.failed(step, e.to_string(), "cannot watch").await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    _ = ka.tick() => {
                        if let Err(e) = f.keepalive().await {
                            self.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, what = self.what, "lease keepalive failed; will retry");
                        }
                    }
                    msg = stream.message() => match msg {
                        Ok(Some(resp)) => {
                            if resp.canceled() || resp.compact_revision() > 0 {
                                warn!(compact_revision = resp.compact_revision(), reason = resp.cancel_reason(), what = self.what, "watch cancelled (compaction); relisting");
                                self.stats.relists.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            for ev in resp.events() {
                                if let Some(kv) = ev.kv() {
                                    revision = revision.max(kv.mod_revision());
                                }
                            }
                            *step = 0;
                            if f.changed(resp.events()).await == Flow::Relist {
                                return;
                            }
                        }
                        Ok(None) | Err(_) => {
                            self.stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                            let why = format!("watch on {} broke at revision {revision}", stream.endpoint());
                            self.failed(step, why, "resuming from the last revision seen").await;
                            break;
                        }
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

    #[test]
    fn prefix_end_covers_the_prefix() {
        assert_eq!(prefix_end(b"/a/subnets/"), b"/a/subnets0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
