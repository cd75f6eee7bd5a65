//! Host network setup through rtnetlink: find the underlay interface (and its IPv4 and
//! IPv6 addresses), and give the overlay device its address, MTU and the route for the whole
//! network; add and remove the direct routes of flannel's `DirectRouting`. Never runs `ip`.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressScope,
};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::constants::RTMGRP_IPV4_ROUTE;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::sys::packet::NextHop;

/// Errors from host setup; each names what was being looked for or changed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("netlink request for {what} failed: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("no interface named or addressed {0:?} (give --iface a name such as eth0 or one of this host's addresses)")]
    NoSuchInterface(String),
    #[error("interface {0} has no IPv4 address (give --public-ip or choose another --iface)")]
    NoAddress(String),
    #[error("no default route (IPv4 or IPv6) to pick the underlay interface from (give --iface)")]
    NoDefaultRoute,
    #[error("no route to {0} to pick the underlay interface by (--iface-can-reach): give an address this host can reach, or --iface")]
    Unreachable(IpAddr),
    #[error("no interface IPv4 address or name matches --iface-regex {0}: give a pattern that matches one (e.g. '^eth[0-9]+$'), or --iface")]
    NoMatch(String),
    #[error("cannot set {what}: {source}")]
    Conf {
        what: String,
        source: std::io::Error,
    },
    #[error("a route for {network} already goes through {device}, not through the overlay device {ours}; overlayd replaces only a route through its own device: remove that route (`ip route del {network}`) or choose a {key} in the network config that does not collide with it")]
    ForeignRoute {
        network: IpNet,
        /// The other route's device: its name, else `link #<index>`, or a description of a
        /// route without a single output device.
        device: String,
        ours: String,
        /// The network config's key that gave `network` (`Network` or `IPv6Network`).
        key: &'static str,
    },
}

/// The interface overlay traffic leaves through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    /// Its first IPv4 address (or the one `--iface` named); 0.0.0.0 on an interface that
    /// has only IPv6 (an IPv6-only node).
    pub addr: Ipv4Addr,
    /// Its preferred global IPv6 address (see [`pick_ipv6`]), or the one `--iface` named.
    pub addr6: Option<Ipv6Addr>,
    pub mtu: u32,
}

/// One IPv6 address of an interface, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6AddrInfo {
    pub addr: Ipv6Addr,
    /// `RT_SCOPE_UNIVERSE` (global, including ULAs).
    pub global: bool,
    /// `IFA_F_PERMANENT`: configured by hand, not by SLAAC/DHCP.
    pub permanent: bool,
    /// `IFA_F_TEMPORARY`: an RFC 8981 privacy address.
    pub temporary: bool,
    /// `IFA_F_DEPRECATED`: its preferred lifetime is over.
    pub deprecated: bool,
    /// `IFA_F_DADFAILED`: duplicate address detection failed; unusable.
    pub dad_failed: bool,
    /// `IFA_F_TENTATIVE`: duplicate address detection still running.
    pub tentative: bool,
}

/// The address to publish as `PublicIPv6` among an interface's IPv6 addresses (kernel order):
/// global scope only (a link-local address cannot be reached from other links), neither
/// deprecated nor failed DAD, in flannel's order of preference (`compareAddrs` in
/// pkg/ip/iface.go: manually configured before auto-configured, non-temporary before
/// temporary), then an address past DAD before a tentative one, then kernel order. flannel also
/// accepts a link-local address when there is no global one; overlayd does not.
pub fn pick_ipv6(addrs: &[Ipv6AddrInfo]) -> Option<Ipv6Addr> {
    addrs
        .iter()
        .filter(|a| a.global && !a.deprecated && !a.dad_failed)
        .min_by_key(|a| (!a.permanent, a.temporary, a.tentative))
        .map(|a| a.addr)
}

/// The /proc path of a per-device setting of the current network namespace:
/// `net.<family>.conf.<dev>.<key>` (`dev` may be `all`; device names may hold dots, which
/// is why this is a path and not a dotted key).
pub fn conf_path(family: &str, dev: &str, key: &str) -> std::path::PathBuf {
    format!("/proc/sys/net/{family}/conf/{dev}/{key}").into()
}

/// Reads a per-device setting (see [`conf_path`]).
pub fn read_conf(family: &str, dev: &str, key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(conf_path(family, dev, key))?
        .trim()
        .to_string())
}

/// Writes a per-device setting (see [`conf_path`]).
pub fn write_conf(family: &str, dev: &str, key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(conf_path(family, dev, key), value)
}

/// The main routing table (`RT_TABLE_MAIN`), where the overlay routes go.
const MAIN_TABLE: u32 = 254;

/// flanneld's `--iface-regex` over `links` (name and IPv4 addresses, in index order): for
/// each pattern in turn, the first address whose text it matches, else the first name; the
/// loopback interface and addresses left out. What `--iface` would be given.
pub fn pick_by_regex(
    patterns: &[regex::Regex],
    links: &[(String, Vec<Ipv4Addr>)],
) -> Option<String> {
    let usable = || links.iter().filter(|(name, _)| name != "lo");
    patterns.iter().find_map(|re| {
        usable()
            .flat_map(|(_, addrs)| addrs)
            .find(|a| !a.is_loopback() && re.is_match(&a.to_string()))
            .map(Ipv4Addr::to_string)
            .or_else(|| {
                usable()
                    .find(|(n, _)| re.is_match(n))
                    .map(|(n, _)| n.clone())
            })
    })
}

/// Whether `r` is a main-table route for exactly the prefix `network` (same family, address
/// and length).
pub fn is_main_route_for(r: &RouteMessage, network: IpNet) -> bool {
    let want = match network {
        IpNet::V4(n) => RouteAddress::Inet(n.network()),
        IpNet::V6(n) => RouteAddress::Inet6(n.network()),
    };
    table_of(r) == MAIN_TABLE
        && r.header.destination_prefix_length == network.prefix_len()
        && r.attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(d) if *d == want))
}

/// The single output device of route `r`; `None` for one without (a blackhole, unreachable
/// or multipath route).
pub fn oif_of(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// Whether a route for a network may be replaced by one through device `ours`, given the
/// output devices of the main-table routes for exactly that network ([`oif_of`]): yes when
/// there is none or all go through `ours`; otherwise `Err` with the device of the first that
/// does not (`None`: a route without a single device), which must not be replaced.
pub fn claim_route(existing: &[Option<u32>], ours: u32) -> Result<(), Option<u32>> {
    match existing.iter().find(|oif| **oif != Some(ours)) {
        Some(other) => Err(*other),
        None => Ok(()),
    }
}

/// The routing protocol number on overlayd's direct routes (`ip route show proto 111`): it
/// tells them apart from every other route, also after a crash, and is no well-known one.
pub const DIRECT_PROTO: u8 = 111;

/// A direct route (flannel's `DirectRouting`): a peer's subnet through its public address,
/// on whichever link the kernel reaches that address by. Both of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DirectRoute {
    subnet: IpNet,
    via: IpAddr,
}

impl DirectRoute {
    /// `subnet` via `via`; `None` when their families differ.
    pub fn new(subnet: impl Into<IpNet>, via: impl Into<IpAddr>) -> Option<Self> {
        let (subnet, via) = (subnet.into().trunc(), via.into());
        (subnet.addr().is_ipv4() == via.is_ipv4()).then_some(DirectRoute { subnet, via })
    }

    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    pub fn via(&self) -> IpAddr {
        self.via
    }
}

impl std::fmt::Display for DirectRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.subnet, self.via)
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// `r` as one of our direct routes: a main-table route with [`DIRECT_PROTO`], a destination
/// and a gateway of its own family.
pub fn direct_route_of(r: &RouteMessage) -> Option<DirectRoute> {
    if r.header.protocol != RouteProtocol::Other(DIRECT_PROTO) || table_of(r) != MAIN_TABLE {
        return None;
    }
    let mut dst = None;
    let mut via = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => via = route_addr(g),
            _ => {}
        }
    }
    DirectRoute::new(
        IpNet::new(dst?, r.header.destination_prefix_length).ok()?,
        via?,
    )
}

/// The gateway of the kernel's unicast route `r`: `Some(None)` when the destination is on a
/// link of this host, `Some(Some(gw))` through a router, `None` for a route that is not
/// plain unicast or whose next hop is not a plain address (`RTA_VIA`).
fn unicast_gateway(r: &RouteMessage) -> Option<Option<&RouteAddress>> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut gateway = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Gateway(g) => gateway = Some(g),
            RouteAttribute::Via(_) => return None,
            _ => {}
        }
    }
    Some(gateway)
}

/// Whether the kernel's answer `r` to "the route to an address" says the address is on a
/// link of this host: a unicast route without a gateway (flannel's `ip.DirectRouting`).
pub fn is_on_link(r: &RouteMessage) -> bool {
    matches!(unicast_gateway(r), Some(None))
}

/// The source address in the kernel's answer to "the route to an address".
fn pref_source_of(r: &RouteMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::PrefSource(s) => route_addr(s),
        _ => None,
    })
}

/// Where the kernel's route `r` toward `dst` leaves: its device and the neighbour that
/// takes the packet there (the gateway, or `dst` itself on a shared link). None for a
/// route that is not plain unicast over an IPv4 next hop.
pub fn hop_of(r: &RouteMessage, dst: Ipv4Addr) -> Option<(u32, Ipv4Addr)> {
    let via = match unicast_gateway(r)? {
        None => dst,
        Some(RouteAddress::Inet(g)) => *g,
        Some(_) => return None,
    };
    Some((oif_of(r)?, via))
}

/// A neighbour entry the kernel holds, with an Ethernet address that may be sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// Stale: usable, but to be revalidated.
    pub stale: bool,
}

/// A neighbour entry whose MAC may be sent to, as the kernel itself does: reachable,
/// delay, probe, permanent, or stale. Entries without an Ethernet address (incomplete,
/// failed, noarp) give none.
pub fn usable_neighbour(m: &NeighbourMessage) -> Option<Neighbour> {
    let stale = match m.header.state {
        NeighbourState::Reachable
        | NeighbourState::Delay
        | NeighbourState::Probe
        | NeighbourState::Permanent => false,
        NeighbourState::Stale => true,
        _ => return None,
    };
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(*v4),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(&l[..]).ok(),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: m.header.ifindex,
        ip: ip?,
        mac: mac?,
        stale,
    })
}

/// The next hops the kernel knows toward some destinations.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NextHops {
    /// Each destination with a usable neighbour entry, and its next hop.
    pub hops: Vec<(Ipv4Addr, NextHop)>,
    /// The stale entries among those used (device, address): to be revalidated.
    pub stale: Vec<(u32, Ipv4Addr)>,
}

/// Each destination's next hop (`via`: destination, its route's device and neighbour)
/// whose neighbour entry is usable, and the stale entries among those used.
pub fn plan_hops(via: &[(Ipv4Addr, (u32, Ipv4Addr))], neighbours: &[Neighbour]) -> NextHops {
    let mut hops = Vec::new();
    let mut stale = Vec::new();
    for &(dst, (ifindex, hop)) in via {
        let Some(n) = neighbours
            .iter()
            .find(|n| n.ifindex == ifindex && n.ip == hop)
        else {
            continue;
        };
        hops.push((
            dst,
            NextHop {
                ifindex,
                mac: n.mac,
            },
        ));
        if n.stale && !stale.contains(&(ifindex, hop)) {
            stale.push((ifindex, hop));
        }
    }
    NextHops { hops, stale }
}

/// Answers the kernel gave about routes, kept until `ttl` has passed or the host's routes
/// changed (a count of changes, from [`RouteWatch`], moved), then asked again.
pub struct RouteMemo<K, V> {
    answers: HashMap<K, V>,
    since: Instant,
    changes: u64,
    ttl: Duration,
}

impl<K: Eq + Hash, V> RouteMemo<K, V> {
    pub fn new(ttl: Duration) -> Self {
        RouteMemo {
            answers: HashMap::new(),
            since: Instant::now(),
            changes: 0,
            ttl,
        }
    }

    /// Forgets every answer when they are older than the ttl or when `changes` differs
    /// from the count they were given under.
    pub fn refresh(&mut self, changes: u64) {
        if changes != self.changes || self.since.elapsed() >= self.ttl {
            self.answers.clear();
            self.since = Instant::now();
            self.changes = changes;
        }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.answers.get(k)
    }

    pub fn insert(&mut self, k: K, v: V) {
        self.answers.insert(k, v);
    }
}

fn table_of(r: &RouteMessage) -> u32 {
    // A table above 255 is only in RTA_TABLE; the header then says RT_TABLE_UNSPEC.
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// A netlink connection, driven by a task on the current tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// Counts the changes to the host's IPv4 routes, as the kernel announces them
/// (`RTMGRP_IPV4_ROUTE`), from tasks of its own that stop when it is dropped.
pub struct RouteWatch {
    changes: Arc<AtomicU64>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl RouteWatch {
    pub fn start() -> Result<Self, HostError> {
        let (mut conn, _, mut messages) = rtnetlink::new_connection()?;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_IPV4_ROUTE))?;
        let changes = Arc::new(AtomicU64::new(0));
        let counted = changes.clone();
        let count = tokio::spawn(async move {
            while messages.next().await.is_some() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(RouteWatch {
            changes,
            tasks: [tokio::spawn(conn), count],
        })
    }

    /// How many route changes were announced so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> HostError {
    let what = what.into();
    move |source| HostError::Netlink { what, source }
}

impl Netlink {
    pub fn new() -> Result<Self, HostError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Index, name and MTU of the link `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<(u32, u32)>, HostError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some((l.header.index, mtu_of(&l.attributes)))),
            Ok(None) => Ok(None),
            // The kernel answers ENODEV for a name filter that matches nothing.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(format!("link {name}"))(e)),
        }
    }

    /// The kind of link `name` as the kernel names it ("tun", "vxlan", ...; empty when it
    /// reports none), or `None` when there is no such link.
    pub async fn link_kind(&self, name: &str) -> Result<Option<String>, HostError> {
        use netlink_packet_route::link::LinkInfo;
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some(
                l.attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                            LinkInfo::Kind(k) => Some(k.to_string()),
                            _ => None,
                        }),
                        _ => None,
                    })
                    .unwrap_or_default(),
            )),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(format!("link {name}"))(e)),
        }
    }

    async fn link_by_index(&self, index: u32) -> Result<(String, u32), HostError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let l = links
            .try_next()
            .await
            .map_err(nl(format!("link #{index}")))?
            .ok_or_else(|| HostError::NoSuchInterface(format!("#{index}")))?;
        Ok((name_of(&l.attributes), mtu_of(&l.attributes)))
    }

    /// IPv4 addresses on the link `index`, in kernel order.
    async fn addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr)>, HostError> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let mut s = req.execute();
        let mut out = Vec::new();
        while let Some(a) = s.try_next().await.map_err(nl("addresses"))? {
            for attr in &a.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                    out.push((a.header.index, *ip));
                }
            }
        }
        Ok(out)
    }

    /// Every link's name and IPv4 addresses, in index order (for [`pick_by_regex`]).
    pub async fn links_with_addrs(&self) -> Result<Vec<(String, Vec<Ipv4Addr>)>, HostError> {
        let mut links = self.handle.link().get().execute();
        let mut out: Vec<(u32, String, Vec<Ipv4Addr>)> = Vec::new();
        while let Some(l) = links.try_next().await.map_err(nl("links"))? {
            out.push((l.header.index, name_of(&l.attributes), Vec::new()));
        }
        for (index, ip) in self.addrs(None).await? {
            if let Some(l) = out.iter_mut().find(|l| l.0 == index) {
                l.2.push(ip);
            }
        }
        out.sort_by_key(|l| l.0);
        Ok(out.into_iter().map(|(_, n, a)| (n, a)).collect())
    }

    /// IPv6 addresses on the link `index` (all links when `None`), in kernel order.
    pub async fn ipv6_addrs(
        &self,
        index: Option<u32>,
    ) -> Result<Vec<(u32, Ipv6AddrInfo)>, HostError> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let mut s = req.execute();
        let mut out = Vec::new();
        while let Some(a) = s.try_next().await.map_err(nl("addresses"))? {
            let mut addr = None;
            let mut flags = AddressFlags::from_bits_retain(u32::from(a.header.flags.bits()));
            for attr in &a.attributes {
                match attr {
                    // IFA_LOCAL only exists for point-to-point peers; IFA_ADDRESS is the address.
                    AddressAttribute::Address(IpAddr::V6(ip)) => addr = Some(*ip),
                    AddressAttribute::Flags(f) => flags = *f,
                    _ => {}
                }
            }
            if let Some(addr) = addr {
                out.push((
                    a.header.index,
                    Ipv6AddrInfo {
                        addr,
                        global: a.header.scope == AddressScope::Universe,
                        permanent: flags.contains(AddressFlags::Permanent),
                        // IFA_F_TEMPORARY shares its bit with IFA_F_SECONDARY.
                        temporary: flags.contains(AddressFlags::Secondary),
                        deprecated: flags.contains(AddressFlags::Deprecated),
                        dad_failed: flags.contains(AddressFlags::Dadfailed),
                        tentative: flags.contains(AddressFlags::Tentative),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Resolves `--iface` (a name, an IPv4 or IPv6 address, or absent = the default route's
    /// interface, IPv4's or else IPv6's) to the interface, its first IPv4 address (or the
    /// one named; 0.0.0.0 when it has none but has a global IPv6 address) and its preferred
    /// global IPv6 address (or the one named).
    pub async fn underlay(&self, iface: Option<&str>) -> Result<Underlay, HostError> {
        let named6 = iface.and_then(|s| s.parse::<Ipv6Addr>().ok());
        let index = match iface {
            Some(s) => match (s.parse::<Ipv4Addr>(), named6) {
                (Ok(ip), _) => self
                    .addrs(None)
                    .await?
                    .into_iter()
                    .find(|(_, a)| *a == ip)
                    .map(|(i, _)| i)
                    .ok_or_else(|| HostError::NoSuchInterface(s.to_string()))?,
                (Err(_), Some(ip6)) => self
                    .ipv6_addrs(None)
                    .await?
                    .into_iter()
                    .find(|(_, a)| a.addr == ip6)
                    .map(|(i, _)| i)
                    .ok_or_else(|| HostError::NoSuchInterface(s.to_string()))?,
                (Err(_), None) => {
                    self.link(s)
                        .await?
                        .ok_or_else(|| HostError::NoSuchInterface(s.to_string()))?
                        .0
                }
            },
            None => self.default_route_oif().await?,
        };
        let (name, mtu) = self.link_by_index(index).await?;
        let addr = match iface.and_then(|s| s.parse::<Ipv4Addr>().ok()) {
            Some(ip) => Some(ip),
            None => self.addrs(Some(index)).await?.first().map(|(_, a)| *a),
        };
        let addr6 = match named6 {
            Some(a) => Some(a),
            None => {
                let infos: Vec<Ipv6AddrInfo> = self
                    .ipv6_addrs(Some(index))
                    .await?
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect();
                pick_ipv6(&infos)
            }
        };
        let addr = match (addr, addr6) {
            (Some(a), _) => a,
            (None, Some(_)) => Ipv4Addr::UNSPECIFIED,
            (None, None) => return Err(HostError::NoAddress(name)),
        };
        Ok(Underlay {
            name,
            index,
            addr,
            addr6,
            mtu,
        })
    }

    /// The interface of the main table's IPv4 default route, else of its IPv6 one.
    async fn default_route_oif(&self) -> Result<u32, HostError> {
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new().build();
        for req in [v4, v6] {
            let mut routes = self.handle.route().get(req).execute();
            let mut found = None;
            while let Some(r) = routes.try_next().await.map_err(nl("routes"))? {
                // Read to the end of the dump, as in `has_route`.
                if found.is_some()
                    || r.header.destination_prefix_length != 0
                    || r.header.table != 254
                {
                    continue;
                }
                found = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
            }
            if let Some(oif) = found {
                return Ok(oif);
            }
        }
        Err(HostError::NoDefaultRoute)
    }

    /// Sets the overlay device's MTU, address (`addr/32`), brings it up and routes `network`
    /// through it. Idempotent: re-running it after the device was recreated is the repair.
    /// A route for exactly `network` is replaced only when it goes through this device; one
    /// through another device is left alone and refused ([`HostError::ForeignRoute`]).
    pub async fn configure_overlay(
        &self,
        name: &str,
        addr: Ipv4Addr,
        mtu: u32,
        network: Ipv4Net,
    ) -> Result<u32, HostError> {
        let index = self.link_up(name, mtu).await?;
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), 32)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("address {addr}/32 on {name}")))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(network.network(), network.prefix_len())
            .output_interface(index)
            .pref_source(addr)
            .scope(RouteScope::Link)
            .build();
        self.claim_route(network.into(), index, name).await?;
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("route {network} dev {name}")))?;
        Ok(index)
    }

    /// The IPv6 side of the overlay device, as flanneld sets up its `flannel-v6.<VNI>`
    /// device: address `addr/128` (the IPv6 subnet's network address) and a route for the
    /// whole IPv6 network through the device, from that address. IPv6 is turned on for the
    /// device (its own setting). With `ipv6_mtu`, the device's IPv6 MTU is set below its link
    /// MTU (IPv6 packets that cross an IPv6 underlay carry 20 bytes more of outer header);
    /// the device must be up already ([`Self::configure_overlay`] or [`Self::link_up`]).
    /// Idempotent, and refusing another device's route, like [`Self::configure_overlay`].
    pub async fn configure_overlay6(
        &self,
        name: &str,
        addr: Ipv6Addr,
        network: Ipv6Net,
        ipv6_mtu: Option<u32>,
    ) -> Result<u32, HostError> {
        let (index, _) = self
            .link(name)
            .await?
            .ok_or_else(|| HostError::NoSuchInterface(name.to_string()))?;
        // Written only when it differs: a device with IPv6 on is left untouched.
        if read_conf("ipv6", name, "disable_ipv6").is_ok_and(|v| v != "0") {
            write_conf("ipv6", name, "disable_ipv6", "0").map_err(|e| HostError::Conf {
                what: format!("net.ipv6.conf.{name}.disable_ipv6=0"),
                source: e,
            })?;
        }
        if let Some(mtu) = ipv6_mtu {
            write_conf("ipv6", name, "mtu", &mtu.to_string()).map_err(|e| HostError::Conf {
                what: format!("net.ipv6.conf.{name}.mtu={mtu}"),
                source: e,
            })?;
        }
        // Without duplicate address detection: the address is usable at once (a tentative
        // one is refused as the route's source), as a device without neighbours needs.
        let mut req = self
            .handle
            .address()
            .add(index, IpAddr::V6(addr), 128)
            .replace();
        req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        req.execute()
            .await
            .map_err(nl(format!("address {addr}/128 on {name}")))?;
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(network.network(), network.prefix_len())
            .output_interface(index)
            .pref_source(addr)
            .build();
        self.claim_route(network.into(), index, name).await?;
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("route {network} dev {name}")))?;
        Ok(index)
    }

    /// Sets a link's MTU and brings it up (the overlay device of an IPv6-only node, which
    /// has no IPv4 address to give it).
    pub async fn link_up(&self, name: &str, mtu: u32) -> Result<u32, HostError> {
        let (index, _) = self
            .link(name)
            .await?
            .ok_or_else(|| HostError::NoSuchInterface(name.to_string()))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {name} up with mtu {mtu}")))?;
        Ok(index)
    }

    /// Sets an L2 TAP's MTU and brings it up; with `bridge`, enslaves it to that bridge,
    /// creating the bridge (up) when it does not exist yet.
    pub async fn configure_tap(
        &self,
        name: &str,
        mtu: u32,
        bridge: Option<&str>,
    ) -> Result<u32, HostError> {
        let (index, _) = self
            .link(name)
            .await?
            .ok_or_else(|| HostError::NoSuchInterface(name.to_string()))?;
        let mut msg = LinkUnspec::new_with_index(index).mtu(mtu).up();
        if let Some(br) = bridge {
            let bi = match self.link(br).await? {
                Some((i, _)) => i,
                None => {
                    self.handle
                        .link()
                        .add(rtnetlink::LinkBridge::new(br).up().build())
                        .execute()
                        .await
                        .map_err(nl(format!("create bridge {br}")))?;
                    self.link(br)
                        .await?
                        .ok_or_else(|| HostError::NoSuchInterface(br.to_string()))?
                        .0
                }
            };
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(bi).up().build())
                .execute()
                .await
                .map_err(nl(format!("set bridge {br} up")))?;
            msg = msg.controller(bi);
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(nl(format!(
                "set {name} up with mtu {mtu}{}",
                bridge
                    .map(|b| format!(" on bridge {b}"))
                    .unwrap_or_default()
            )))?;
        Ok(index)
    }

    /// Sets a link's MAC address and MTU and brings it up (the tunnel-GSO TAP).
    pub async fn configure_link(
        &self,
        name: &str,
        mac: [u8; 6],
        mtu: u32,
    ) -> Result<(), HostError> {
        let (index, _) = self
            .link(name)
            .await?
            .ok_or_else(|| HostError::NoSuchInterface(name.to_string()))?;
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .mtu(mtu)
            .up();
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(nl(format!("set {name} address, mtu {mtu} and up")))
    }

    /// Whether the route for `network` (IPv4 or IPv6) through link `index` is still present.
    pub async fn has_route(
        &self,
        network: impl Into<IpNet>,
        index: u32,
    ) -> Result<bool, HostError> {
        let oifs = self.routes_for(network.into()).await?;
        Ok(oifs.contains(&Some(index)))
    }

    /// The output devices ([`oif_of`]) of the main-table routes for exactly `network`.
    async fn routes_for(&self, network: IpNet) -> Result<Vec<Option<u32>>, HostError> {
        let request = match network {
            IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut out = Vec::new();
        let mut routes = self.handle.route().get(request).execute();
        // Read to the end of the dump: dropping the stream early leaves netlink-proto with
        // responses it cannot deliver (and a warning per message).
        while let Some(r) = routes.try_next().await.map_err(nl("routes"))? {
            if is_main_route_for(&r, network) {
                out.push(oif_of(&r));
            }
        }
        Ok(out)
    }

    /// The kernel's answer to "the route to `ip`" (`ip route get`): none when it has no
    /// route there.
    async fn route_to(&self, ip: IpAddr) -> Result<Vec<RouteMessage>, HostError> {
        let host = if ip.is_ipv4() { 32 } else { 128 };
        let request = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, host)
            .expect("a host prefix of the address's own family")
            .build();
        let mut answers = self.handle.route().get(request).execute();
        let mut found = Vec::new();
        loop {
            match answers.try_next().await {
                Ok(Some(r)) => found.push(r),
                Ok(None) => return Ok(found),
                Err(rtnetlink::Error::NetlinkError(e))
                    if [-libc::ENETUNREACH, -libc::EHOSTUNREACH].contains(&e.raw_code()) =>
                {
                    return Ok(Vec::new())
                }
                Err(e) => return Err(nl(format!("the route to {ip}"))(e)),
            }
        }
    }

    /// The device and neighbour through which the kernel's one route to `dst` leaves
    /// ([`hop_of`]); none when it has no such route.
    pub async fn hop_toward(&self, dst: Ipv4Addr) -> Result<Option<(u32, Ipv4Addr)>, HostError> {
        Ok(match self.route_to(IpAddr::V4(dst)).await?.as_slice() {
            [r] => hop_of(r, dst),
            _ => None,
        })
    }

    /// The usable entries of the kernel's IPv4 neighbour table ([`usable_neighbour`]).
    pub async fn usable_neighbours(&self) -> Result<Vec<Neighbour>, HostError> {
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let mut neighbours = Vec::new();
        while let Some(m) = dump
            .try_next()
            .await
            .map_err(nl("the IPv4 neighbour table"))?
        {
            neighbours.extend(usable_neighbour(&m));
        }
        Ok(neighbours)
    }

    /// Asks the kernel to revalidate a stale neighbour entry (`NTF_USE`: as if a packet were
    /// sent to it; it probes the cached address and keeps the entry or marks it failed).
    pub async fn nudge_neighbour(&self, ifindex: u32, ip: Ipv4Addr) -> Result<(), HostError> {
        self.handle
            .neighbours()
            .add(ifindex, IpAddr::V4(ip))
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("revalidating the neighbour {ip}")))
    }

    /// Whether `ip` is on a link of this host: the kernel's one route to it has no gateway.
    /// An address the kernel has no route to is not.
    pub async fn on_link(&self, ip: IpAddr) -> Result<bool, HostError> {
        Ok(matches!(self.route_to(ip).await?.as_slice(), [r] if is_on_link(r)))
    }

    /// The source address the kernel picks to reach `ip` (flanneld's `--iface-can-reach`:
    /// the underlay is the interface holding it).
    pub async fn source_toward(&self, ip: IpAddr) -> Result<IpAddr, HostError> {
        let answers = self.route_to(ip).await?;
        answers
            .iter()
            .find_map(pref_source_of)
            .ok_or(HostError::Unreachable(ip))
    }

    /// Adds the blackhole route for `subnet` ([`blackhole_message`]) unless it is there;
    /// whether it was added.
    pub async fn ensure_blackhole(&self, subnet: IpNet) -> Result<bool, HostError> {
        match self
            .handle
            .route()
            .add(blackhole_message(subnet))
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(false),
            Err(e) => Err(nl(format!("blackhole route {subnet}"))(e)),
        }
    }

    /// Removes the blackhole route for `subnet`; one already gone is no error.
    pub async fn del_blackhole(&self, subnet: IpNet) -> Result<(), HostError> {
        match self
            .handle
            .route()
            .del(blackhole_message(subnet))
            .execute()
            .await
        {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            other => other.map_err(nl(format!("delete blackhole route {subnet}"))),
        }
    }

    /// Every direct route of ours ([`direct_route_of`]) in the main table, both families.
    pub async fn direct_routes(&self) -> Result<Vec<DirectRoute>, HostError> {
        let mut out = Vec::new();
        for request in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut routes = self.handle.route().get(request).execute();
            // Read to the end of the dump (see `routes_for`).
            while let Some(r) = routes.try_next().await.map_err(nl("routes"))? {
                out.extend(direct_route_of(&r));
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) the direct route `r` in the main table, with [`DIRECT_PROTO`].
    pub async fn add_direct_route(&self, r: DirectRoute) -> Result<(), HostError> {
        let msg = direct_message(r);
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add route {r}")))
    }

    /// Removes the direct route `r`; one already gone is no error.
    pub async fn del_direct_route(&self, r: DirectRoute) -> Result<(), HostError> {
        match self.handle.route().del(direct_message(r)).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            other => other.map_err(nl(format!("delete route {r}"))),
        }
    }

    /// Refuses to route `network` through device `name` (link `index`) when a main-table
    /// route for exactly that prefix goes through another device: replacing it could take
    /// over the host's default route or a LAN's. Absent or through `index`: Ok.
    async fn claim_route(&self, network: IpNet, index: u32, name: &str) -> Result<(), HostError> {
        let Err(other) = claim_route(&self.routes_for(network).await?, index) else {
            return Ok(());
        };
        let device = match other {
            Some(i) => match self.link_by_index(i).await {
                Ok((n, _)) if !n.is_empty() => n,
                _ => format!("link #{i}"),
            },
            None => "no single device (a blackhole, unreachable or multipath route)".into(),
        };
        Err(HostError::ForeignRoute {
            network,
            device,
            ours: name.to_string(),
            key: match network {
                IpNet::V4(_) => "Network",
                IpNet::V6(_) => "IPv6Network",
            },
        })
    }
}

/// The metric of `--ip-blackhole-route`'s route: above any route the kernel or a CNI bridge
/// gives the same prefix (0), so that it only catches what no one else routes.
pub const BLACKHOLE_METRIC: u32 = 4000;

/// The main-table blackhole route for `subnet`, with [`DIRECT_PROTO`] and
/// [`BLACKHOLE_METRIC`].
fn blackhole_message(subnet: IpNet) -> RouteMessage {
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(subnet.network(), subnet.prefix_len())
        .expect("a prefix of the address's own family")
        .kind(RouteType::BlackHole)
        .protocol(RouteProtocol::Other(DIRECT_PROTO))
        .priority(BLACKHOLE_METRIC)
        .build()
}

/// The main-table message for direct route `r`.
fn direct_message(r: DirectRoute) -> RouteMessage {
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.subnet.network(), r.subnet.prefix_len())
        .and_then(|b| b.gateway(r.via))
        .expect("DirectRoute::new keeps subnet and gateway in one family")
        .protocol(RouteProtocol::Other(DIRECT_PROTO))
        .build()
}

/// A link's name (empty when the kernel gave none).
fn name_of(attrs: &[LinkAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn mtu_of(attrs: &[LinkAttribute]) -> u32 {
    attrs
        .iter()
        .find_map(|a| {
            if let LinkAttribute::Mtu(m) = a {
                Some(*m)
            } else {
                None
            }
        })
        .unwrap_or(1500)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(addr: &str) -> Ipv6AddrInfo {
        Ipv6AddrInfo {
            addr: addr.parse().unwrap(),
            global: true,
            permanent: true,
            temporary: false,
            deprecated: false,
            dad_failed: false,
            tentative: false,
        }
    }

    #[test]
    fn ipv6_pick_order() {
        let ll = Ipv6AddrInfo {
            global: false,
            ..info("fe80::1")
        };
        let slaac = Ipv6AddrInfo {
            permanent: false,
            ..info("2001:db8::aa")
        };
        let temp = Ipv6AddrInfo {
            permanent: false,
            temporary: true,
            ..info("2001:db8::bb")
        };
        let manual = info("fd00:77::1");
        let old = Ipv6AddrInfo {
            deprecated: true,
            ..info("fd00:77::2")
        };
        let dup = Ipv6AddrInfo {
            dad_failed: true,
            ..info("fd00:77::3")
        };
        let fresh = Ipv6AddrInfo {
            tentative: true,
            ..info("fd00:77::4")
        };
        let pick = |v: &[Ipv6AddrInfo]| pick_ipv6(v).map(|a| a.to_string());
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&[ll]), None, "link-local is not published");
        assert_eq!(pick(&[old, dup]), None);
        assert_eq!(pick(&[ll, temp, slaac]).as_deref(), Some("2001:db8::aa"));
        assert_eq!(pick(&[temp]).as_deref(), Some("2001:db8::bb"));
        assert_eq!(
            pick(&[ll, temp, slaac, old, manual]).as_deref(),
            Some("fd00:77::1")
        );
        assert_eq!(pick(&[fresh, slaac]).as_deref(), Some("fd00:77::4"));
        assert_eq!(pick(&[fresh, manual]).as_deref(), Some("fd00:77::1"));
        // Kernel order breaks ties.
        assert_eq!(
            pick(&[info("fd00::9"), info("fd00::8")]).as_deref(),
            Some("fd00::9")
        );
    }

    fn route4(dst: &str, oif: Option<u32>) -> RouteMessage {
        let net: Ipv4Net = dst.parse().unwrap();
        let b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len());
        match oif {
            Some(i) => b.output_interface(i).build(),
            None => b.build(),
        }
    }

    fn route(oif: u32, gateway: Option<Ipv4Addr>) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.kind = RouteType::Unicast;
        r.attributes.push(RouteAttribute::Oif(oif));
        if let Some(g) = gateway {
            r.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(g)));
        }
        r
    }

    fn neighbour(
        ifindex: u32,
        ip: Ipv4Addr,
        mac: &[u8],
        state: NeighbourState,
    ) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = ifindex;
        m.header.state = state;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m
    }

    #[test]
    fn a_routes_next_hop_is_its_gateway_or_the_destination_on_the_link() {
        let dst: Ipv4Addr = "192.168.77.2".parse().unwrap();
        let gw: Ipv4Addr = "192.168.77.254".parse().unwrap();
        assert_eq!(hop_of(&route(3, None), dst), Some((3, dst)));
        assert_eq!(hop_of(&route(3, Some(gw)), dst), Some((3, gw)));
        let mut local = route(3, None);
        local.header.kind = RouteType::Local;
        assert_eq!(hop_of(&local, dst), None, "not a unicast route");
        let mut no_dev = route(3, None);
        no_dev.attributes.clear();
        assert_eq!(hop_of(&no_dev, dst), None, "no device");
    }

    #[test]
    fn neighbour_entries_with_an_ethernet_address_are_usable_stale_ones_marked() {
        let ip: Ipv4Addr = "192.168.77.2".parse().unwrap();
        let mac = [2, 0, 0, 0, 0, 2];
        for (state, want) in [
            (NeighbourState::Reachable, Some(false)),
            (NeighbourState::Permanent, Some(false)),
            (NeighbourState::Delay, Some(false)),
            (NeighbourState::Probe, Some(false)),
            (NeighbourState::Stale, Some(true)),
            (NeighbourState::Incomplete, None),
            (NeighbourState::Failed, None),
            (NeighbourState::Noarp, None),
        ] {
            let got = usable_neighbour(&neighbour(3, ip, &mac, state));
            let entry = |stale| Neighbour {
                ifindex: 3,
                ip,
                mac,
                stale,
            };
            assert_eq!(got, want.map(entry), "{state:?}");
        }
        let short = neighbour(3, ip, &[1, 2, 3], NeighbourState::Reachable);
        assert_eq!(usable_neighbour(&short), None, "not an Ethernet address");
    }

    #[test]
    fn next_hops_pair_each_destination_with_its_neighbours_address() {
        let a: Ipv4Addr = "192.168.77.2".parse().unwrap();
        let b: Ipv4Addr = "10.0.0.9".parse().unwrap();
        let c: Ipv4Addr = "10.0.0.10".parse().unwrap();
        let gw: Ipv4Addr = "192.168.77.254".parse().unwrap();
        let (ma, mg) = ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 0xfe]);
        // a on the link (reachable); b and c behind one gateway (stale); a's entry on
        // another device does not count.
        let via = [(a, (3, a)), (b, (3, gw)), (c, (3, gw))];
        let entry = |ifindex, ip, mac, stale| Neighbour {
            ifindex,
            ip,
            mac,
            stale,
        };
        let neighbours = [
            entry(4, a, [9; 6], false),
            entry(3, a, ma, false),
            entry(3, gw, mg, true),
        ];
        let found = plan_hops(&via, &neighbours);
        let hop = |mac| NextHop { ifindex: 3, mac };
        assert_eq!(found.hops, vec![(a, hop(ma)), (b, hop(mg)), (c, hop(mg))]);
        assert_eq!(found.stale, vec![(3, gw)], "the stale gateway once");
        // Unknown to the neighbour table: no next hop (the raw socket sends, the kernel
        // resolves).
        assert_eq!(plan_hops(&via, &[]), NextHops::default());
    }

    #[test]
    fn route_answers_are_kept_until_the_routes_change_or_they_age() {
        let mut memo = RouteMemo::new(Duration::from_secs(3600));
        memo.refresh(5);
        memo.insert(1, "a");
        memo.refresh(5);
        assert_eq!(memo.get(&1), Some(&"a"), "no change announced: kept");
        memo.refresh(6);
        assert_eq!(memo.get(&1), None, "a route changed: asked again");
        let mut aged = RouteMemo::new(Duration::ZERO);
        aged.insert(1, "a");
        aged.refresh(0);
        assert_eq!(aged.get(&1), None, "past its time: asked again");
    }

    #[test]
    fn a_gateway_given_as_via_or_over_ipv6_has_no_ipv4_next_hop() {
        let dst: Ipv4Addr = "192.168.77.2".parse().unwrap();
        let mut v6 = route(3, None);
        v6.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(
                "fe80::1".parse().unwrap(),
            )));
        assert_eq!(hop_of(&v6, dst), None);
        assert!(!is_on_link(&v6));
        let mut via = route(3, None);
        via.attributes.push(RouteAttribute::Via(
            netlink_packet_route::route::RouteVia::Inet6("fe80::1".parse().unwrap()),
        ));
        assert_eq!(hop_of(&via, dst), None);
        assert!(!is_on_link(&via), "RTA_VIA is a gateway too");
    }

    #[test]
    fn our_direct_routes_are_told_by_protocol_table_and_gateway() {
        let r = DirectRoute::new(
            "10.244.3.0/24".parse::<IpNet>().unwrap(),
            "192.168.77.3".parse::<IpAddr>().unwrap(),
        )
        .unwrap();
        let msg = direct_message(r);
        assert_eq!(direct_route_of(&msg), Some(r));
        let r6 = DirectRoute::new(
            "fd10:0:0:3::/64".parse::<IpNet>().unwrap(),
            "fd77::3".parse::<IpAddr>().unwrap(),
        )
        .unwrap();
        assert_eq!(direct_route_of(&direct_message(r6)), Some(r6));
        // Another protocol (an operator's static route), another table, no gateway: not ours.
        let mut other = msg.clone();
        other.header.protocol = RouteProtocol::Static;
        assert_eq!(direct_route_of(&other), None);
        let mut table = msg.clone();
        table
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        table.header.table = 100;
        assert_eq!(direct_route_of(&table), None);
        let mut no_gw = msg.clone();
        no_gw
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Gateway(_)));
        assert_eq!(direct_route_of(&no_gw), None);
    }

    #[test]
    fn iface_regex_tries_addresses_then_names_pattern_by_pattern() {
        let re = |p: &str| regex::Regex::new(p).unwrap();
        let ip = |a: &str| a.parse::<Ipv4Addr>().unwrap();
        let links = vec![
            ("lo".to_owned(), vec![ip("127.0.0.1")]),
            ("eth0".to_owned(), vec![ip("192.168.1.5")]),
            ("ens5".to_owned(), vec![ip("10.0.0.7"), ip("10.0.1.7")]),
            ("wg0".to_owned(), vec![]),
        ];
        let pick =
            |ps: &[&str]| pick_by_regex(&ps.iter().map(|p| re(p)).collect::<Vec<_>>(), &links);
        assert_eq!(pick(&[r"^10\.0\.1\."]).as_deref(), Some("10.0.1.7"));
        // An address match wins over a name match for the same pattern (flanneld's order).
        assert_eq!(pick(&["5"]).as_deref(), Some("192.168.1.5"));
        assert_eq!(pick(&["^ens"]).as_deref(), Some("ens5"));
        // Patterns in order: the first that matches anything decides.
        assert_eq!(pick(&["^bond", "^wg"]).as_deref(), Some("wg0"));
        // Loopback never: not by address, not by name.
        assert_eq!(pick(&["^127\\.", "^lo$"]), None);
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn on_a_link_means_unicast_without_a_gateway() {
        let link = route4("192.168.77.0/24", Some(2));
        assert!(is_on_link(&link));
        let mut gw = link.clone();
        gw.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(
                "192.168.77.254".parse().unwrap(),
            )));
        assert!(!is_on_link(&gw), "through a router");
        let mut local = link.clone();
        local.header.kind = RouteType::Local;
        assert!(!is_on_link(&local), "our own address");
    }

    #[test]
    fn a_main_route_for_exactly_the_prefix() {
        let net: IpNet = "10.244.0.0/16".parse().unwrap();
        assert!(is_main_route_for(&route4("10.244.0.0/16", Some(3)), net));
        assert!(!is_main_route_for(&route4("10.244.0.0/24", Some(3)), net));
        assert!(!is_main_route_for(&route4("10.245.0.0/16", Some(3)), net));
        assert!(!is_main_route_for(
            &route4("10.244.0.0/16", Some(3)),
            "fd00::/16".parse().unwrap()
        ));
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix("fd00:244::".parse().unwrap(), 48)
            .output_interface(3)
            .build();
        assert!(is_main_route_for(&v6, "fd00:244::/48".parse().unwrap()));
        let mut other_table = route4("10.244.0.0/16", Some(3));
        other_table.header.table = 100;
        assert!(!is_main_route_for(&other_table, net));
        // A table number only in RTA_TABLE counts over the header's.
        let mut big_table = route4("10.244.0.0/16", Some(3));
        big_table.attributes.push(RouteAttribute::Table(1000));
        assert!(!is_main_route_for(&big_table, net));
        assert_eq!(oif_of(&route4("10.244.0.0/16", Some(7))), Some(7));
        assert_eq!(oif_of(&route4("10.244.0.0/16", None)), None);
        // The default route is a route for 0.0.0.0/0 like any other.
        assert!(is_main_route_for(
            &route4("0.0.0.0/0", Some(2)),
            "0.0.0.0/0".parse().unwrap()
        ));
    }

    #[test]
    fn only_an_absent_route_or_our_own_is_replaced() {
        assert_eq!(claim_route(&[], 5), Ok(()));
        assert_eq!(claim_route(&[Some(5)], 5), Ok(()));
        assert_eq!(claim_route(&[Some(2)], 5), Err(Some(2)));
        assert_eq!(
            claim_route(&[None], 5),
            Err(None),
            "a blackhole is not ours"
        );
        assert_eq!(
            claim_route(&[Some(5), Some(9)], 5),
            Err(Some(9)),
            "ours beside another device's (another metric): still refused"
        );
    }

    #[test]
    fn the_refusal_names_the_route_the_device_and_the_way_out() {
        let e = HostError::ForeignRoute {
            network: "0.0.0.0/0".parse().unwrap(),
            device: "eth0".into(),
            ours: "flannel.1".into(),
            key: "Network",
        }
        .to_string();
        for part in [
            "0.0.0.0/0",
            "eth0",
            "flannel.1",
            "ip route del 0.0.0.0/0",
            "Network",
        ] {
            assert!(e.contains(part), "{part:?} missing from {e:?}");
        }
    }
}
