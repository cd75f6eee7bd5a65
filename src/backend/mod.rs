//! Backends, one module each: [`udp_tunnel`] (flannel's `udp`), [`vxlan_tunnel`]
//! (flannel's `vxlan`, RFC 7348), [`gre_tunnel`] (RFC 2784/2890, overlayd's own) and
//! [`wireguard`] (flannel's `wireguard`, whose protocol is `crate::wg`'s). The
//! `_tunnel` names keep them apart from the header views `wire::{udp, vxlan, gre}`, so no
//! import needs renaming. Each holds everything that makes it what it
//! is: its wire format (encapsulate, checked decapsulate, the L2 header where it carries L2
//! networks), its device name, what it puts into our lease and how it reads a peer's, and
//! the underlay sockets it opens.
//!
//! [`Backend`] is what the daemon asks of the configured one; [`Encap`] is what the data
//! path asks (pure, per packet).

pub mod encap;
pub mod gre_tunnel;
pub mod udp_tunnel;
pub mod vxlan_tunnel;
pub mod wireguard;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

pub use encap::{Decapsulated, Encap};

use crate::control::config::{BackendConfig, BackendKind, WireguardMode};
use crate::control::lease::{GreData, LeaseAttrs, VxlanData};
use crate::sys::socket::UnderlaySocket;
use crate::sys::steer;

/// Kernel buffer size of every underlay socket.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// An underlay socket that could not be opened, and where.
#[derive(Debug, thiserror::Error)]
#[error("cannot open underlay socket on {addr}: {source}")]
pub struct SocketError {
    pub addr: String,
    pub source: std::io::Error,
}

impl SocketError {
    fn at(addr: SocketAddr) -> impl Fn(std::io::Error) -> SocketError {
        move |source| SocketError {
            addr: addr.to_string(),
            source,
        }
    }
}

/// `--steer`: how a packet's worker is chosen, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Steer {
    /// By flow: the TUN's automatic flow steering picks the transmit queue, the kernel's
    /// outer hash (or the inner-flow program, udp) the receive socket; workers unpinned.
    #[default]
    Flow,
    /// By CPU: the packet goes to the queue and socket `cpu % n` of the CPU it is on,
    /// whose worker is pinned there, so every wakeup is local.
    Cpu,
}

impl Steer {
    pub fn name(self) -> &'static str {
        match self {
            Steer::Flow => "flow",
            Steer::Cpu => "cpu",
        }
    }
}

/// `queues` UDP sockets bound to `addr`:`port`, one per receive worker. `SO_REUSEPORT`
/// spreads datagrams over them by the kernel's hash of the outer addresses and ports —
/// enough for vxlan, whose outer source port follows the inner flow (`inner_ip_at` None).
/// flannel's udp format sends everything from its one port, so there (`inner_ip_at` =
/// where the inner IP packet starts in the payload) the spread is by the inner flow
/// ([`steer`]; when the kernel refuses that, by the outer hash, and a warning says so).
/// With [`Steer::Cpu`] the group picks the socket of the receiving CPU instead, for
/// every backend (refused by the kernel: an error).
fn udp_sockets(
    (addr, port): (IpAddr, u16),
    queues: usize,
    inner_ip_at: Option<usize>,
    by: Steer,
) -> Result<Vec<Arc<UnderlaySocket>>, SocketError> {
    let bind = SocketAddr::new(addr, port);
    let socks = (0..queues.max(1))
        .map(|_| {
            UnderlaySocket::udp(bind, SOCKET_BUFFER)
                .map(Arc::new)
                .map_err(SocketError::at(bind))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if by == Steer::Cpu && socks.len() > 1 {
        steer::steer_by_cpu(&*socks[0], socks.len()).map_err(SocketError::at(bind))?;
    } else if let Some(at) = inner_ip_at.filter(|_| socks.len() > 1) {
        if let Err(e) = steer::steer_by_inner_flow(&*socks[0], at, socks.len()) {
            tracing::warn!(
                "{bind}: cannot spread received flows over the workers by inner flow ({e}); \
                 the kernel's outer-port hash decides"
            );
        }
    }
    Ok(socks)
}

/// A backend's underlay sockets of one address family: the ones transmit picks from, and
/// one per receive worker. Empty when the family is not used.
#[derive(Debug, Clone, Default)]
pub struct Sockets {
    pub send: Vec<Arc<UnderlaySocket>>,
    pub recv: Vec<Arc<UnderlaySocket>>,
}

impl Sockets {
    /// Every socket, send and receive (some are both).
    pub fn all(&self) -> impl Iterator<Item = &Arc<UnderlaySocket>> {
        self.send.iter().chain(&self.recv)
    }
}

/// The configured routed backend, with what this node derives from it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub kind: BackendKind,
    /// VXLAN VNI or GRE key (unused by udp and wireguard).
    pub vni: u32,
    /// UDP port of udp and vxlan, wireguard's `ListenPort` (0 for gre).
    pub port: u16,
    /// The port of our IPv6 sockets and `BackendV6Data`: `port`, except wireguard's
    /// `separate` mode, whose IPv6 device listens on `ListenPortV6`.
    pub port_v6: u16,
    /// Our VTEP MAC (vxlan), stable across restarts.
    pub vtep_mac: [u8; 6],
    /// Our public key (wireguard), which our lease publishes: see
    /// [`Backend::with_public_key`]; all zero until then.
    pub public_key: [u8; 32],
    /// The per-packet encapsulation; `None` for wireguard, which seals packets itself.
    pub encap: Option<Encap>,
}

impl Backend {
    /// The backend `cfg` describes, for the node at `public_ip`.
    pub fn new(cfg: &BackendConfig, public_ip: Ipv4Addr) -> Backend {
        let vni = cfg.vni;
        let vtep_mac = vxlan_tunnel::stable_vtep_mac(public_ip, vni);
        let encap = match cfg.kind {
            BackendKind::Udp => Some(Encap::Udp),
            BackendKind::Vxlan => Some(Encap::Vxlan {
                vni,
                local_mac: vtep_mac,
            }),
            BackendKind::Gre => Some(Encap::Gre {
                key: Some(vni),
                checksum: cfg.checksum,
                sequence: cfg.sequence,
            }),
            BackendKind::Wireguard => None,
        };
        let (port, port_v6) = match (cfg.kind, &cfg.wireguard) {
            (BackendKind::Gre, _) => (0, 0),
            (_, Some(wg)) if wg.mode == WireguardMode::Separate => (cfg.port, wg.port_v6),
            _ => (cfg.port, cfg.port),
        };
        Backend {
            kind: cfg.kind,
            vni,
            port,
            port_v6,
            vtep_mac,
            public_key: [0; 32],
            encap,
        }
    }

    /// The same backend with our wireguard public key, for our lease.
    pub fn with_public_key(self, public_key: [u8; 32]) -> Backend {
        Backend { public_key, ..self }
    }

    /// The overlay device's name (wireguard's IPv4 one): flannel's where flannel has the
    /// backend.
    pub fn device_name(&self) -> String {
        match self.kind {
            BackendKind::Udp => udp_tunnel::DEVICE.to_string(),
            BackendKind::Vxlan => vxlan_tunnel::device_name(self.vni),
            BackendKind::Gre => gre_tunnel::device_name(self.vni),
            BackendKind::Wireguard => wireguard::DEVICE.to_string(),
        }
    }

    /// The inner MTU on an IPv4 underlay of `underlay_mtu` bytes.
    pub fn inner_mtu(&self, underlay_mtu: u32) -> u32 {
        let overhead = self
            .encap
            .map_or(wireguard::OVERHEAD, |e| e.overhead() as u32);
        underlay_mtu.saturating_sub(overhead)
    }

    /// The inner MTU on an IPv6 underlay of `underlay_mtu` bytes: 20 bytes less, for the
    /// longer outer header (flannel's `flannel-v6.<VNI>` device gets 1430 on a 1500 link);
    /// wireguard's is the same on both (flanneld counts the IPv6 header for both).
    pub fn inner_mtu_v6(&self, underlay_mtu: u32) -> u32 {
        let overhead = self
            .encap
            .map_or(wireguard::OVERHEAD, |e| e.overhead_v6() as u32);
        underlay_mtu.saturating_sub(overhead)
    }

    /// The encapsulation on the IPv6 underlay: vxlan with our IPv6 VtepMAC (the one in
    /// `BackendV6Data`, derived from `public_ipv6`) as the local MAC; the same as on IPv4
    /// for udp and gre; none for wireguard.
    pub fn encap6(&self, public_ipv6: Ipv6Addr) -> Option<Encap> {
        match self.encap? {
            Encap::Vxlan { vni, .. } => Some(Encap::Vxlan {
                vni,
                local_mac: vxlan_tunnel::stable_vtep_mac_v6(public_ipv6, vni),
            }),
            e => Some(e),
        }
    }

    /// What an IPv6-only node's lease says about it, as flannel writes it: `PublicIP`
    /// 0.0.0.0, no `BackendData` (flannel has no IPv4 device then), `PublicIPv6` and the
    /// backend's `BackendV6Data` (see [`Self::lease_v6_data`]).
    pub fn lease_attrs_v6_only(&self, public_ipv6: Ipv6Addr) -> LeaseAttrs {
        LeaseAttrs {
            backend_data: None,
            ..self.lease_attrs(Ipv4Addr::UNSPECIFIED)
        }
        .with_ipv6(public_ipv6, self.lease_v6_data(public_ipv6))
    }

    /// What our lease says about us, as flannel writes it for this backend.
    pub fn lease_attrs(&self, public_ip: Ipv4Addr) -> LeaseAttrs {
        match self.kind {
            BackendKind::Udp => udp_tunnel::lease_attrs(public_ip),
            BackendKind::Vxlan => vxlan_tunnel::lease_attrs(public_ip, self.vni, self.vtep_mac),
            BackendKind::Gre => gre_tunnel::lease_attrs(public_ip, self.vni),
            BackendKind::Wireguard => wireguard::lease_attrs(public_ip, self.public_key, self.port),
        }
    }

    /// Our lease's `BackendV6Data` when we publish `public_ipv6` (dual stack), as flannel's
    /// vxlan backend writes it for its `flannel-v6.<VNI>` device: vxlan `{VNI, VtepMAC}`
    /// (a MAC of its own, see [`vxlan_tunnel::stable_vtep_mac_v6`]), gre `{VNI}`, wireguard
    /// `{PublicKey, Port}` (`port_v6`), udp nothing (flannel's udp backend has no backend
    /// data).
    pub fn lease_v6_data(&self, public_ipv6: Ipv6Addr) -> Option<serde_json::Value> {
        match self.kind {
            BackendKind::Udp => None,
            BackendKind::Wireguard => Some(wireguard::lease_data(self.public_key, self.port_v6)),
            BackendKind::Vxlan => Some(
                VxlanData {
                    vni: self.vni,
                    vtep_mac: vxlan_tunnel::stable_vtep_mac_v6(public_ipv6, self.vni),
                }
                .to_value(),
            ),
            BackendKind::Gre => Some(GreData { vni: self.vni }.to_value()),
        }
    }

    /// Reads a peer's lease: `Ok(Some(mac))` for a peer of this backend (the MAC is its
    /// VtepMAC for vxlan, zero otherwise), `Ok(None)` for a lease that is not ours to
    /// carry (another backend, another VNI), `Err` for one of ours whose data is invalid.
    pub fn peer_mac(&self, attrs: &LeaseAttrs) -> Result<Option<[u8; 6]>, String> {
        match self.kind {
            BackendKind::Udp => Ok(udp_tunnel::is_peer(attrs).then_some([0; 6])),
            BackendKind::Vxlan => vxlan_tunnel::peer_mac(attrs, self.vni),
            BackendKind::Gre => Ok(gre_tunnel::is_peer(attrs).then_some([0; 6])),
            BackendKind::Wireguard => wireguard::peer(attrs, false),
        }
    }

    /// Reads the IPv6 side of a peer's lease (one that names an IPv6 subnet), as
    /// [`Self::peer_mac`] reads the IPv4 side: `Ok(Some(mac))` for a peer of this backend —
    /// vxlan: the VtepMAC of its `BackendV6Data` (flannel's `flannel-v6.<VNI>` device), on
    /// our VNI; zero for udp and gre — `Ok(None)` for a lease that is not ours to carry,
    /// `Err` for one of ours whose IPv6 data is invalid (flannel skips such a lease).
    pub fn peer_v6(&self, attrs: &LeaseAttrs) -> Result<Option<[u8; 6]>, String> {
        match self.kind {
            BackendKind::Udp => Ok(udp_tunnel::is_peer(attrs).then_some([0; 6])),
            BackendKind::Wireguard => wireguard::peer(attrs, true),
            BackendKind::Vxlan => vxlan_tunnel::peer_mac_v6(attrs, self.vni),
            BackendKind::Gre => Ok(gre_tunnel::is_peer(attrs).then_some([0; 6])),
        }
    }

    /// How this node reaches the IPv6 side of a peer's lease: the underlay address its IPv6
    /// packets go to and the VTEP MAC (vxlan; zero otherwise) of the peer's device on that
    /// underlay — the inner Ethernet addresses are those of the devices a frame travels
    /// between, as between flannel's `flannel.<VNI>` (IPv4 underlay, `BackendData`) and
    /// `flannel-v6.<VNI>` (IPv6 underlay, `BackendV6Data`).
    ///
    /// As flannel's vxlan backend does, IPv6 goes over the IPv6 underlay, to `PublicIPv6`,
    /// whenever this node has one (`v6_underlay`) and the lease names one; on every backend,
    /// so that one rule holds. Otherwise over IPv4 to `PublicIP` (a peer that publishes no
    /// `PublicIPv6`, or a node whose interface has no global IPv6 address). `Ok(None)` when
    /// the lease is not ours to carry (see [`Self::peer_v6`]) or names no address this node
    /// can reach; `Err` when its backend data is invalid.
    pub fn ipv6_route(
        &self,
        attrs: &LeaseAttrs,
        v6_underlay: bool,
    ) -> Result<Option<(IpAddr, [u8; 6])>, String> {
        let Some(mac6) = self.peer_v6(attrs)? else {
            return Ok(None);
        };
        if let (true, Some(ip6)) = (v6_underlay, attrs.public_ipv6) {
            return Ok(Some((IpAddr::V6(ip6), mac6)));
        }
        if attrs.public_ip.is_unspecified() {
            return Ok(None);
        }
        Ok(self
            .peer_mac(attrs)?
            .map(|mac| (IpAddr::V4(attrs.public_ip), mac)))
    }

    /// Opens the underlay sockets on `addr` (IPv4 or IPv6) for `queues` receive workers,
    /// steered `by` flow or CPU (wireguard: one device's, on `port` or, IPv6, `port_v6`;
    /// gre: its one raw socket either way).
    pub fn sockets(&self, addr: IpAddr, queues: usize, by: Steer) -> Result<Sockets, SocketError> {
        match self.kind {
            BackendKind::Udp => udp_tunnel::sockets((addr, self.port), queues, by),
            BackendKind::Vxlan => vxlan_tunnel::sockets((addr, self.port), queues, by),
            BackendKind::Gre => gre_tunnel::sockets(addr),
            BackendKind::Wireguard => {
                let port = if addr.is_ipv4() {
                    self.port
                } else {
                    self.port_v6
                };
                udp_tunnel::sockets((addr, port), queues, by)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(kind: BackendKind) -> Backend {
        let mut cfg = BackendConfig::new(kind);
        cfg.vni = 7;
        Backend::new(&cfg, Ipv4Addr::new(192, 168, 77, 1))
    }

    #[test]
    fn names_overheads_and_ports() {
        let [u, v, g] = BackendKind::ALL.map(backend);
        assert_eq!(
            (u.device_name(), v.device_name(), g.device_name()),
            ("flannel0".into(), "flannel.7".into(), "ovgre.7".into())
        );
        assert_eq!(
            (u.inner_mtu(1500), v.inner_mtu(1500), g.inner_mtu(1500)),
            (1472, 1450, 1472)
        );
        assert_eq!((u.port, v.port, g.port), (8285, 8472, 0));
        assert_eq!(
            v.vtep_mac,
            vxlan_tunnel::stable_vtep_mac(Ipv4Addr::new(192, 168, 77, 1), 7)
        );
    }

    #[test]
    fn each_backend_reads_only_its_own_leases() {
        let ip = Ipv4Addr::new(192, 168, 77, 2);
        let all = BackendKind::ALL.map(backend);
        for me in &all {
            for other in &all {
                let mac = me.peer_mac(&other.lease_attrs(ip));
                if me.kind == other.kind {
                    assert!(matches!(mac, Ok(Some(_))), "{:?} reads its own", me.kind);
                } else {
                    assert_eq!(mac, Ok(None), "{:?} ignores {:?}", me.kind, other.kind);
                }
            }
        }
        assert_eq!(
            all[1].peer_mac(&all[1].lease_attrs(ip)),
            Ok(Some(all[1].vtep_mac)),
            "a vxlan peer's VtepMAC"
        );
    }

    #[test]
    fn each_backend_reads_the_ipv6_side_of_its_own_leases() {
        let ip = Ipv4Addr::new(192, 168, 77, 2);
        let ip6: Ipv6Addr = "fd00:77::2".parse().unwrap();
        let all = BackendKind::ALL.map(backend);
        for me in &all {
            for other in &all {
                let attrs = other
                    .lease_attrs(ip)
                    .with_ipv6(ip6, other.lease_v6_data(ip6));
                let mac = me.peer_v6(&attrs);
                if me.kind == other.kind {
                    assert!(matches!(mac, Ok(Some(_))), "{:?} reads its own", me.kind);
                } else {
                    assert_eq!(mac, Ok(None), "{:?} ignores {:?}", me.kind, other.kind);
                }
            }
        }
        let v = &all[1];
        let attrs = v.lease_attrs(ip).with_ipv6(ip6, v.lease_v6_data(ip6));
        assert_eq!(
            v.peer_v6(&attrs),
            Ok(Some(vxlan_tunnel::stable_vtep_mac_v6(ip6, 7))),
            "the MAC of BackendV6Data, not of BackendData"
        );
        // A vxlan lease without BackendV6Data has no usable IPv6 side.
        assert!(v.peer_v6(&v.lease_attrs(ip)).is_err());
        assert!(v.ipv6_route(&v.lease_attrs(ip), true).is_err());
        // Over the IPv6 underlay to PublicIPv6 with the MAC of the peer's IPv6 device, as
        // flannel; without an IPv6 underlay, over IPv4 to PublicIP with its IPv4 device's.
        assert_eq!(
            v.ipv6_route(&attrs, true),
            Ok(Some((
                IpAddr::V6(ip6),
                vxlan_tunnel::stable_vtep_mac_v6(ip6, 7)
            )))
        );
        assert_eq!(
            v.ipv6_route(&attrs, false),
            Ok(Some((IpAddr::V4(ip), v.vtep_mac)))
        );
        // An IPv6-only node (PublicIP 0.0.0.0), as flannel writes it.
        let only6 = v.lease_attrs_v6_only(ip6);
        assert_eq!(
            only6.to_json(),
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:77::2","BackendType":"vxlan","BackendV6Data":{{"VNI":7,"VtepMAC":"{}"}}}}"#,
                crate::control::lease::format_mac(&vxlan_tunnel::stable_vtep_mac_v6(ip6, 7))
            )
        );
        assert_eq!(v.ipv6_route(&only6, false), Ok(None), "not over IPv4");
        assert_eq!(
            v.ipv6_route(&only6, true),
            Ok(Some((
                IpAddr::V6(ip6),
                vxlan_tunnel::stable_vtep_mac_v6(ip6, 7)
            )))
        );
        // A peer that publishes no PublicIPv6 is reached over IPv4.
        let mut no6 = attrs.clone();
        no6.public_ipv6 = None;
        assert_eq!(
            v.ipv6_route(&no6, true),
            Ok(Some((IpAddr::V4(ip), v.vtep_mac)))
        );
    }

    #[test]
    fn wireguard_is_its_own_backend() {
        let mut cfg = BackendConfig::new(BackendKind::Wireguard);
        let b = Backend::new(&cfg, Ipv4Addr::new(192, 168, 77, 1)).with_public_key([9; 32]);
        assert_eq!(b.encap, None, "wireguard seals packets itself");
        assert_eq!(b.encap6("fd00::1".parse().unwrap()), None);
        assert_eq!(b.device_name(), "flannel-wg");
        assert_eq!((b.inner_mtu(1500), b.inner_mtu_v6(1500)), (1420, 1420));
        assert_eq!(
            (b.port, b.port_v6),
            (51820, 51821),
            "separate: ListenPortV6"
        );
        let ip = Ipv4Addr::new(192, 168, 77, 2);
        let attrs = b.lease_attrs(ip).with_ipv6(
            "fd00::2".parse().unwrap(),
            b.lease_v6_data("fd00::2".parse().unwrap()),
        );
        let (d4, d6) = (attrs.wireguard_data(false), attrs.wireguard_data(true));
        assert_eq!((d4.unwrap().port, d6.unwrap().port), (51820, 51821));
        assert_eq!(b.peer_mac(&attrs), Ok(Some([0; 6])));
        assert_eq!(b.peer_v6(&attrs), Ok(Some([0; 6])));
        for other in BackendKind::ALL.map(backend) {
            assert_eq!(b.peer_mac(&other.lease_attrs(ip)), Ok(None));
            assert_eq!(other.peer_mac(&attrs), Ok(None), "{:?}", other.kind);
        }
        cfg.wireguard.as_mut().unwrap().mode = WireguardMode::Ipv6;
        let b = Backend::new(&cfg, Ipv4Addr::new(192, 168, 77, 1));
        assert_eq!(b.port_v6, 51820, "one device: ListenPort for both");
    }
}
