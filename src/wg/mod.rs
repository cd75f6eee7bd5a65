//! flannel's `wireguard` backend in userspace: the node's key ([`keyfile`], [`identity`]),
//! the protocol engine over boringtun ([`engine`]), the devices `Backend.Mode` asks for
//! ([`layout`]), each device's peers ([`peers`]) kept by the control loop's [`Sink`], the
//! data path thread ([`worker`]) and the figures on `/metrics` ([`metrics`]). The daemon
//! runs it through the same start-up stages and main loop as every backend
//! (`daemon::wg_plane` is its data plane there); what our lease says is
//! `crate::backend::wireguard`'s.
//!
//! As flanneld: the lease carries `BackendType: "wireguard"` and the node's public key and
//! port (`BackendData` for IPv4, `BackendV6Data` for IPv6); the devices are `flannel-wg`
//! and, in `separate` mode with IPv6, `flannel-wg-v6`, with the underlay MTU less 80; each
//! peer's AllowedIPs are its lease's subnets and its endpoint its PublicIP (or PublicIPv6)
//! and port. One engine and one data path thread per device, all with the node's one key.

pub mod engine;
pub mod keyfile;
pub mod layout;
pub mod metrics;
pub mod peers;
pub mod worker;

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use tracing::info;

use crate::control::config::NetworkConfig;
use crate::control::etcd::{Acquired, LeaseSink, RemoteLease};
use crate::fib;
use engine::Identity;
use layout::Layout;
use peers::KeyBook;
use worker::{PeerList, SharedSpecs};

pub use layout::{DEVICE, DEVICE_V6};

/// Why a wireguard node could not start; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    #[error("{0}")]
    Mode(String),
    #[error("Backend.Type is wireguard, but the node's key file was not read")]
    NoKey,
    #[error("cannot create the eventfd that wakes a wireguard data path thread: {0}")]
    Wakeup(std::io::Error),
}

/// The node's identity: its key (from the key file, made on first start) and the options
/// every peer shares (`PSK`, `PersistentKeepaliveInterval`).
pub fn identity(cfg: &NetworkConfig) -> Result<Identity, WgError> {
    let wg = cfg.backend.wireguard.clone().unwrap_or_default();
    let key_path = keyfile::path_from_env();
    let id = Identity {
        secret: keyfile::load_or_create(&key_path)?,
        psk: wg.psk,
        keepalive: wg.keepalive,
    };
    let public_key = crate::control::lease::encode_key(&id.public_key());
    info!(key_file = %key_path.display(), %public_key, mode = wg.mode.as_str(), "wireguard identity");
    Ok(id)
}

/// The control loop's sink on a wireguard node: the forwarding tables ([`crate::peers`],
/// which keep the current leases: in the network, the oldest winning a conflict), each
/// wireguard lease's keys in the key book, and after each batch every device's peer list
/// computed from both ([`peers::peer_specs`]) and handed to its thread.
pub struct Sink {
    tables: crate::peers::Tables,
    fib: fib::SharedFib,
    fib6: fib::SharedFib6,
    keys: KeyBook,
    /// Each lease key's entries in the key book, to take them out when it goes.
    by_lease: HashMap<String, Vec<(IpNet, IpAddr)>>,
    devices: Vec<(Layout, SharedSpecs)>,
}

impl Sink {
    /// The sink for `layouts`' devices over `tables` (which fill `fib` and `fib6`); each
    /// device's peer list starts empty.
    pub fn new(
        tables: crate::peers::Tables,
        fib: fib::SharedFib,
        fib6: fib::SharedFib6,
        layouts: &[Layout],
    ) -> Result<Sink, WgError> {
        let devices = layouts
            .iter()
            .map(|l| Ok((l.clone(), PeerList::new()?)))
            .collect::<std::io::Result<_>>()
            .map_err(WgError::Wakeup)?;
        Ok(Sink {
            tables,
            fib,
            fib6,
            keys: KeyBook::new(),
            by_lease: HashMap::new(),
            devices,
        })
    }

    /// Each device's peer list, in the order of the layouts, for its data path thread.
    pub fn specs(&self) -> Vec<SharedSpecs> {
        self.devices.iter().map(|(_, s)| s.clone()).collect()
    }

    fn learn(&mut self, l: &RemoteLease) {
        let entries = peers::book_entries(l);
        self.by_lease
            .insert(l.key.clone(), entries.iter().map(|(n, _)| *n).collect());
        self.keys.extend(entries);
    }

    fn forget(&mut self, key: &str) {
        for net in self.by_lease.remove(key).unwrap_or_default() {
            self.keys.remove(&net);
        }
    }
}

impl LeaseSink for Sink {
    fn reset(&mut self, leases: Vec<RemoteLease>) {
        self.by_lease.clear();
        self.keys.clear();
        leases.iter().for_each(|l| self.learn(l));
        self.tables.reset(leases);
    }

    fn put(&mut self, lease: RemoteLease) {
        self.forget(&lease.key);
        self.learn(&lease);
        self.tables.put(lease);
    }

    fn remove(&mut self, key: &str) {
        self.forget(key);
        self.tables.remove(key);
    }

    fn publish(&mut self, own: &Acquired) {
        self.tables.publish(own);
        let (fib, fib6) = (self.fib.load(), self.fib6.load());
        for (layout, specs) in &self.devices {
            specs.publish(peers::peer_specs(layout, &fib, &fib6, &self.keys));
        }
    }
}
