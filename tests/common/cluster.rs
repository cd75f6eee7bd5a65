//! [`Cluster`]: the set-up most scenarios share, built in one line — a [`Topology`] of N
//! hosts, its etcd, and an overlayd on each host (a backend, per-host extra flags), started and
//! waited for until each wrote its subnet.env.
//!
//! ```ignore
//! let c = Cluster::builder().hosts(2).backend("vxlan").extra(1, &["--ip-masq"]).start();
//! let (d1, s1) = (&c.daemons[0], &c.subnets[0]);  // s1: FLANNEL_SUBNET, "10.244.X.1/24"
//! ```

use std::time::Duration;

use super::daemon::{overlayd_args, Overlayd};
use super::etcd::Etcd;
use super::topology::{Host, Topology};

/// How long each daemon may take to become ready unless told otherwise.
pub const CLUSTER_READY: Duration = Duration::from_secs(30);

/// Hosts, etcd and one ready daemon per host. Fields drop in order: the daemons first, then
/// etcd, then the namespaces.
#[derive(Debug)]
pub struct Cluster {
    pub daemons: Vec<Overlayd>,
    /// Each daemon's FLANNEL_SUBNET (`10.244.X.1/24`), by host.
    pub subnets: Vec<String>,
    pub etcd: Etcd,
    pub topo: Topology,
}

impl Cluster {
    /// 2 hosts, backend `udp`, no extra flags, [`CLUSTER_READY`].
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            hosts: 2,
            backend: "udp".into(),
            extra: Vec::new(),
            ready: CLUSTER_READY,
        }
    }

    /// Host `i`'s namespace.
    pub fn host(&self, i: usize) -> &Host {
        self.topo.host(i)
    }
}

/// What [`Cluster::builder`] starts.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    hosts: usize,
    backend: String,
    extra: Vec<(usize, Vec<String>)>,
    ready: Duration,
}

impl ClusterBuilder {
    /// The number of hosts (`h1..hN`), each with a daemon.
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// The backend every daemon is given (`udp`, `vxlan`, `gre`).
    pub fn backend(mut self, backend: &str) -> Self {
        self.backend = backend.into();
        self
    }

    /// Extra flags for host `i`'s daemon (after [`overlayd_args`]).
    pub fn extra(mut self, i: usize, flags: &[&str]) -> Self {
        self.extra
            .push((i, flags.iter().map(|f| f.to_string()).collect()));
        self
    }

    /// How long each daemon may take to write subnet.env.
    pub fn ready(mut self, timeout: Duration) -> Self {
        self.ready = timeout;
        self
    }

    /// Starts the topology, etcd and the daemons, and waits until each is ready.
    pub fn start(self) -> Cluster {
        let mut topo = Topology::new(self.hosts);
        let etcd = topo.start_etcd();
        let mut daemons: Vec<Overlayd> = (0..self.hosts)
            .map(|i| {
                let mut args = overlayd_args(&self.backend, &etcd);
                for (_, flags) in self.extra.iter().filter(|(h, _)| *h == i) {
                    args.extend(flags.iter().cloned());
                }
                Overlayd::spawn(topo.host(i), args)
            })
            .collect();
        let subnets = daemons
            .iter_mut()
            .map(|d| d.wait_ready(self.ready))
            .collect();
        Cluster {
            daemons,
            subnets,
            etcd,
            topo,
        }
    }
}
