//! `--ip-blackhole-route` (flanneld's): a blackhole route for each subnet this node holds, so
//! that traffic to its unused addresses is dropped on the node instead of being routed back
//! into the overlay. Added with a high metric (`host::BLACKHOLE_METRIC`), unlike flanneld's,
//! so that a CNI bridge's route for the same prefix keeps winning; checked with every 2 s
//! check, moved with a re-acquired lease, removed at stop.

use ipnet::IpNet;
use tracing::{info, warn};

use crate::control::lease::SubnetKey;
use crate::host::Netlink;

/// The subnets of `held`, both families.
fn subnets(held: SubnetKey) -> Vec<IpNet> {
    let v4 = held.ipv4.map(IpNet::V4);
    let v6 = held.ipv6.map(IpNet::V6);
    v4.into_iter().chain(v6).collect()
}

/// The blackhole routes of a node that asked for them.
pub struct Blackholes {
    subnets: Vec<IpNet>,
}

impl Blackholes {
    pub fn new(held: SubnetKey) -> Self {
        Blackholes {
            subnets: subnets(held),
        }
    }

    /// Adds any that is missing (at start, and when deleted under us).
    pub async fn ensure(&self, nl: &Netlink) {
        for &sn in &self.subnets {
            match nl.ensure_blackhole(sn).await {
                Ok(true) => info!(subnet = %sn, "blackhole route added for this node's subnet"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot add the blackhole route; retrying"),
            }
        }
    }

    /// Our lease moved: the old subnets' routes go, the new ones' come.
    pub async fn move_to(&mut self, nl: &Netlink, held: SubnetKey) {
        self.remove(nl).await;
        self.subnets = subnets(held);
        self.ensure(nl).await;
    }

    /// Removes them all (at stop).
    pub async fn remove(&self, nl: &Netlink) {
        for &sn in &self.subnets {
            if let Err(e) = nl.del_blackhole(sn).await {
                warn!(error = %e, "cannot remove the blackhole route");
            }
        }
    }
}
