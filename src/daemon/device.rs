//! The overlay device: opened (and, after it vanished, opened again) in one place with the
//! same options, and given its addresses, MTUs and routes as flanneld gives its devices.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{debug, error, warn};

use super::DaemonError;
use crate::control::lease::SubnetKey;
use crate::datapath;
use crate::host::{HostError, Netlink};
use crate::sys::tun::{self, Device};
use crate::telemetry;

/// Opens device `opts` (offloads asked for with `opts.vnet_hdr`) and applies `setup` to
/// it: at start and for the repair after a deletion.
pub async fn open(
    opts: &tun::Options,
    nl: &Netlink,
    setup: &DeviceSetup,
) -> Result<Device, DaemonError> {
    let mut dev = Device::open(opts).map_err(|source| DaemonError::Device {
        name: opts.name.clone(),
        source,
    })?;
    if opts.vnet_hdr {
        if let Err(e) = datapath::enable_offloads(&mut dev) {
            warn!(device = %dev.name, error = %e, "the kernel refused TUN offloads; packets are handled one by one");
        }
    }
    setup.apply(nl, &dev.name).await?;
    Ok(dev)
}

/// The index of link `name`, if there is one (the device overlayd opened is known by it: a
/// link that merely took its name is not ours).
pub async fn index(nl: &Netlink, name: &str) -> Option<u32> {
    nl.link(name).await.ok().flatten().map(|(i, _)| i)
}

/// What the periodic check found of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Ours, with its routes (one deleted under us was restored).
    Ours,
    /// A link overlayd did not create holds its name.
    Foreign,
    /// Gone.
    Gone,
    /// The links could not be read: the next check tries again.
    Unknown,
}

/// Checks device `name`, ours being link `index`: a route deleted under us (host network
/// scripts do that) is restored.
pub async fn check(
    nl: &Netlink,
    name: &str,
    index: Option<u32>,
    setup: &DeviceSetup,
    t: &telemetry::State,
) -> Seen {
    match nl.link(name).await {
        Ok(Some((found, _))) if Some(found) != index => {
            error!(device = %name, index = found, "a link that overlayd did not create holds the overlay device's name; remove it so that the device can be recreated");
            Seen::Foreign
        }
        Ok(Some((found, _))) => {
            if let Some(network) = setup.missing_route(nl, found).await {
                warn!(device = %name, %network, "overlay route vanished; restoring it");
                t.control.device_repairs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = setup.apply(nl, name).await {
                    error!(error = %e, "cannot restore the overlay route");
                }
            }
            Seen::Ours
        }
        Ok(None) => Seen::Gone,
        Err(e) => {
            debug!(device = %name, error = %e, "cannot check the overlay device");
            Seen::Unknown
        }
    }
}

/// The device's queues, shared with the workers.
pub fn queues(dev: &mut Device) -> Vec<Arc<tun::Queue>> {
    std::mem::take(&mut dev.queues)
        .into_iter()
        .map(Arc::new)
        .collect()
}

/// What the overlay device is given, as flanneld gives its devices: its MTU, the IPv4
/// subnet's network address /32 and the route for the IPv4 network (absent on an IPv6-only
/// node), the IPv6 subnet's network address /128 and the route for the IPv6 network (dual
/// stack and IPv6 only), and the device's IPv6 MTU when it must be below its link MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSetup {
    pub mtu: u32,
    pub ipv6_mtu: Option<u32>,
    /// (our subnet, the network).
    pub v4: Option<(Ipv4Net, Ipv4Net)>,
    pub v6: Option<(Ipv6Net, Ipv6Net)>,
}

impl DeviceSetup {
    /// Configures device `name` (idempotent: also the repair after a deletion, and the
    /// move to a re-acquired subnet).
    pub async fn apply(&self, nl: &Netlink, name: &str) -> Result<(), HostError> {
        match self.v4 {
            Some((sn, net)) => {
                nl.configure_overlay(name, sn.network(), self.mtu, net)
                    .await?
            }
            None => nl.link_up(name, self.mtu).await?,
        };
        if let Some((sn6, net6)) = self.v6 {
            nl.configure_overlay6(name, sn6.network(), net6, self.ipv6_mtu)
                .await?;
        }
        Ok(())
    }

    /// The part of this setup a device carrying only the families `v4` / `v6` is given
    /// (a wireguard device of `separate` mode).
    pub fn only(self, v4: bool, v6: bool) -> DeviceSetup {
        DeviceSetup {
            v4: self.v4.filter(|_| v4),
            v6: self.v6.filter(|_| v6),
            ..self
        }
    }

    /// The same setup for the subnets of `held` (a re-acquisition), each family's kept
    /// when `held` has none of it.
    pub fn moved_to(self, held: SubnetKey) -> DeviceSetup {
        DeviceSetup {
            v4: self.v4.map(|(sn, net)| (held.ipv4.unwrap_or(sn), net)),
            v6: self.v6.map(|(sn6, net6)| (held.ipv6.unwrap_or(sn6), net6)),
            ..self
        }
    }

    /// A network whose route through link `index` is gone, if any (errors reading the
    /// routes count as present: the next check tries again).
    pub async fn missing_route(&self, nl: &Netlink, index: u32) -> Option<ipnet::IpNet> {
        if let Some((_, net)) = self.v4 {
            if let Ok(false) = nl.has_route(net, index).await {
                return Some(net.into());
            }
        }
        if let Some((_, net6)) = self.v6 {
            if let Ok(false) = nl.has_route(net6, index).await {
                return Some(net6.into());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dual-stack node's setup: 10.1.2.0/24 of 10.1.0.0/16, fd00:1:0:2::/64 of fd00:1::/56.
    fn dual() -> DeviceSetup {
        DeviceSetup {
            mtu: 1450,
            ipv6_mtu: Some(1430),
            v4: Some((
                "10.1.2.0/24".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            )),
            v6: Some((
                "fd00:1:0:2::/64".parse().unwrap(),
                "fd00:1::/56".parse().unwrap(),
            )),
        }
    }

    #[test]
    fn a_reacquired_subnet_moves_each_family_it_names() {
        let setup = dual();
        let v4_only = SubnetKey {
            ipv4: Some("10.1.7.0/24".parse().unwrap()),
            ipv6: None,
        };
        let moved = setup.moved_to(v4_only);
        assert_eq!(
            moved.v4.unwrap().0,
            "10.1.7.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(moved.v6, setup.v6);
        assert_eq!((moved.mtu, moved.ipv6_mtu), (1450, Some(1430)));
        let v6_sn: Ipv6Net = "fd00:1:0:9::/64".parse().unwrap();
        let moved = setup.moved_to(SubnetKey {
            ipv4: None,
            ipv6: Some(v6_sn),
        });
        assert_eq!(moved.v6.unwrap(), (v6_sn, setup.v6.unwrap().1));
        assert_eq!(moved.v4, setup.v4);
    }

    #[test]
    fn a_device_of_one_family_takes_only_its_part() {
        let setup = dual();
        let v4 = setup.only(true, false);
        assert_eq!((v4.v4, v4.v6, v4.mtu), (setup.v4, None, 1450));
        let v6 = setup.only(false, true);
        assert_eq!((v6.v4, v6.v6), (None, setup.v6));
        assert_eq!(setup.only(true, true), setup);
    }
}
