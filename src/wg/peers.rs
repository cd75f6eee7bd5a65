//! Which peers a wireguard device has: each current lease's key, AllowedIPs and endpoint,
//! from the forwarding tables and the key book (pure: values in, `PeerSpec`s out). The
//! tables say which leases are current (in the network, the oldest winning a conflict);
//! the book says their keys and ports.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use super::engine::PeerSpec;
use super::layout::{Layout, Under};
use crate::control::etcd::RemoteLease;
use crate::control::lease::WireguardData;
use crate::fib::{Fib, Fib6};

/// Each wireguard lease's data by overlay subnet and the lease's address (its `PublicIP`
/// for the IPv4 subnet, its `PublicIPv6`, else `PublicIP`, for the IPv6 one): its
/// `BackendData` under the first, its `BackendV6Data` under the second. The address is
/// part of the key so that a lease losing a subnet conflict cannot put its key on the
/// winner's subnet.
pub type KeyBook = HashMap<(IpNet, IpAddr), WireguardData>;

/// The address half of a [`KeyBook`] key for an IPv6 subnet.
fn v6_owner(public_ip: Ipv4Addr, public_ipv6: Option<Ipv6Addr>) -> IpAddr {
    public_ipv6.map_or(IpAddr::V4(public_ip), IpAddr::V6)
}

/// The entries lease `l` gives the key book (none for another backend's lease or for a
/// half whose data cannot be read).
pub fn book_entries(l: &RemoteLease) -> Vec<((IpNet, IpAddr), WireguardData)> {
    if l.attrs.backend_type.as_deref() != Some("wireguard") {
        return Vec::new();
    }
    let v4 = l
        .has_ipv4()
        .then(|| l.attrs.wireguard_data(false).ok())
        .flatten()
        .map(|d| ((IpNet::V4(l.subnet), IpAddr::V4(l.attrs.public_ip)), d));
    let v6 = l
        .ipv6_subnet
        .zip(l.attrs.wireguard_data(true).ok())
        .map(|(sn6, d)| {
            let owner = v6_owner(l.attrs.public_ip, l.attrs.public_ipv6);
            ((IpNet::V6(sn6), owner), d)
        });
    v4.into_iter().chain(v6).collect()
}

/// One peer being gathered: what its subnets of each family said.
#[derive(Default)]
struct Gathered {
    allowed: Vec<IpNet>,
    endpoint4: Option<SocketAddr>,
    endpoint6: Option<SocketAddr>,
}

/// The peers of device `dev`: one per public key among the current leases of the families
/// it carries, its AllowedIPs the subnets under that key, its endpoint the lease's address
/// of the device's underlay family with the lease's port (else the device's own). A peer
/// without an address of that family is left out (it cannot be reached).
pub fn peer_specs(dev: &Layout, fib: &Fib, fib6: &Fib6, keys: &KeyBook) -> Vec<PeerSpec> {
    let mut by_key: BTreeMap<[u8; 32], Gathered> = BTreeMap::new();
    let port = |d: &WireguardData| if d.port == 0 { dev.port } else { d.port };
    let mut add = |net: IpNet, owner: IpAddr, ip4: IpAddr, ip6: Option<IpAddr>| {
        let Some(d) = keys.get(&(net, owner)) else {
            return;
        };
        let g = by_key.entry(d.public_key).or_default();
        g.allowed.push(net);
        let ep = |ip: IpAddr| Some(SocketAddr::new(ip, port(d)));
        g.endpoint4 = g
            .endpoint4
            .or_else(|| ep(ip4).filter(|e| !e.ip().is_unspecified()));
        g.endpoint6 = g.endpoint6.or_else(|| ip6.and_then(ep));
    };
    for p in fib.peers().iter().filter(|_| dev.v4) {
        let ip4 = IpAddr::V4(p.public_ip);
        add(IpNet::V4(p.subnet), ip4, ip4, None);
    }
    for p in fib6.peers().iter().filter(|_| dev.v6) {
        let owner = v6_owner(p.public_ip, p.public_ipv6);
        let ip6 = p.public_ipv6.map(IpAddr::V6);
        add(IpNet::V6(p.subnet), owner, p.public_ip.into(), ip6);
    }
    by_key
        .into_iter()
        .filter_map(|(public_key, g)| {
            let endpoint = match dev.under {
                Under::V4 => g.endpoint4,
                Under::V6 => g.endpoint6,
            }?;
            Some(PeerSpec {
                public_key,
                endpoint,
                allowed: g.allowed,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::{Peer, Peer6};

    fn dev(v4: bool, v6: bool, under: Under) -> Layout {
        Layout {
            name: "t",
            port: 51820,
            v4,
            v6,
            under,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Two peers: A dual stack (port given), B IPv4 only (port absent), C IPv6 only with no
    /// key-book entry (not a wireguard lease).
    fn tables() -> (Fib, Fib6, KeyBook) {
        let mut fib = Fib::empty("10.5.0.0/16".parse().unwrap(), 24, None);
        let mut fib6 = Fib6::empty("fd00:5::/56".parse().unwrap(), 64, None);
        let (a, b) = (
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 1, 11),
        );
        let a6 = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 10);
        fib.insert(Peer::new("10.5.1.0/24".parse().unwrap(), a, [0; 6]))
            .unwrap();
        fib.insert(Peer::new("10.5.2.0/24".parse().unwrap(), b, [0; 6]))
            .unwrap();
        let sn6: ipnet::Ipv6Net = "fd00:5:0:1::/64".parse().unwrap();
        fib6.insert(Peer6::new(sn6, a, Some(a6), IpAddr::V6(a6), [0; 6]))
            .unwrap();
        let sn6c: ipnet::Ipv6Net = "fd00:5:0:3::/64".parse().unwrap();
        fib6.insert(Peer6::new(sn6c, b, Some(a6), IpAddr::V6(a6), [0; 6]))
            .unwrap();
        let mut keys = KeyBook::new();
        let ka = WireguardData {
            public_key: [1; 32],
            port: 6000,
        };
        keys.insert(("10.5.1.0/24".parse().unwrap(), a.into()), ka);
        keys.insert(
            (IpNet::V6(sn6), a6.into()),
            WireguardData { port: 6001, ..ka },
        );
        let kb = WireguardData {
            public_key: [2; 32],
            port: 0,
        };
        keys.insert(("10.5.2.0/24".parse().unwrap(), b.into()), kb);
        // A lease from another address naming A's subnet (it lost the conflict): not used.
        let other = Ipv4Addr::new(192, 168, 1, 99);
        let kx = WireguardData {
            public_key: [9; 32],
            port: 0,
        };
        keys.insert(("10.5.1.0/24".parse().unwrap(), other.into()), kx);
        (fib, fib6, keys)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn separate_devices_one_family_each() {
        let (fib, fib6, keys) = tables();
        let v4 = peer_specs(&dev(true, false, Under::V4), &fib, &fib6, &keys);
        assert_eq!(v4.len(), 2);
        assert_eq!(
            (v4[0].public_key, v4[0].endpoint),
            ([1; 32], sa("192.168.1.10:6000"))
        );
        assert_eq!(v4[0].allowed, vec!["10.5.1.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(
            v4[1].endpoint,
            sa("192.168.1.11:51820"),
            "port 0: the device's own"
        );
        let v6 = peer_specs(&dev(false, true, Under::V6), &fib, &fib6, &keys);
        assert_eq!(v6.len(), 1, "the IPv6 subnet without a key is no peer");
        assert_eq!(v6[0].endpoint, sa("[fd99::a]:6001"));
        assert_eq!(
            v6[0].allowed,
            vec!["fd00:5:0:1::/64".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn one_device_both_families() {
        let (fib, fib6, keys) = tables();
        let over4 = peer_specs(&dev(true, true, Under::V4), &fib, &fib6, &keys);
        assert_eq!(over4.len(), 2);
        assert_eq!(
            over4[0].allowed.len(),
            2,
            "A's two subnets under its one key"
        );
        assert_eq!(over4[0].endpoint, sa("192.168.1.10:6000"));
        let over6 = peer_specs(&dev(true, true, Under::V6), &fib, &fib6, &keys);
        assert_eq!(
            over6.len(),
            1,
            "B publishes no IPv6 subnet with a key: unreachable"
        );
        assert_eq!(
            over6[0].endpoint,
            sa("[fd99::a]:6001"),
            "BackendV6Data's port"
        );
        // Only current leases: a key whose subnet left the table is no peer.
        let empty = peer_specs(
            &dev(true, true, Under::V4),
            &Fib::default(),
            &Fib6::default(),
            &keys,
        );
        assert!(empty.is_empty());
    }
}
