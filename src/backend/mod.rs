//! Backends, one module each: [`udp`] (flannel's), [`vxlan`] (flannel's, RFC 7348) and
//! [`gre`] (RFC 2784/2890, overlayd's own). Each holds everything that makes it what it
//! is: its wire format (encapsulate, checked decapsulate, the L2 header where it carries L2
//! networks), its device name, what it puts into our lease and how it reads a peer's, and
//! the underlay sockets it opens.
//!
//! [`Backend`] is what the daemon asks of the configured one; [`Encap`] is what the data
//! path asks (pure, per packet).

pub mod encap;
pub mod gre;
pub mod udp;
pub mod vxlan;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

pub use encap::{Decapsulated, Encap};

use crate::control::config::{BackendConfig, BackendKind};
use crate::control::lease::LeaseAttrs;
use crate::sys::socket::UnderlaySocket;

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
    fn at(addr: SocketAddrV4) -> impl Fn(std::io::Error) -> SocketError {
        move |source| SocketError {
            addr: addr.to_string(),
            source,
        }
    }
}

/// A backend's underlay sockets: the ones transmit picks from, and one per receive
/// worker.
#[derive(Debug, Clone)]
pub struct Sockets {
    pub send: Vec<Arc<UnderlaySocket>>,
    pub recv: Vec<Arc<UnderlaySocket>>,
}

/// The configured routed backend, with what this node derives from it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub kind: BackendKind,
    /// VXLAN VNI or GRE key (unused by udp).
    pub vni: u32,
    /// UDP port of udp and vxlan (0 for gre).
    pub port: u16,
    /// Our VTEP MAC (vxlan), stable across restarts.
    pub vtep_mac: [u8; 6],
    /// The per-packet encapsulation.
    pub encap: Encap,
}

impl Backend {
    /// The backend `cfg` describes, for the node at `public_ip`.
    pub fn new(cfg: &BackendConfig, public_ip: Ipv4Addr) -> Backend {
        let vni = cfg.vni;
        let vtep_mac = vxlan::stable_vtep_mac(public_ip, vni);
        let encap = match cfg.kind {
            BackendKind::Udp => Encap::Udp,
            BackendKind::Vxlan => Encap::Vxlan {
                vni,
                local_mac: vtep_mac,
            },
            BackendKind::Gre => Encap::Gre {
                key: Some(vni),
                checksum: cfg.checksum,
                sequence: cfg.sequence,
            },
        };
        let port = match cfg.kind {
            BackendKind::Gre => 0,
            _ => cfg.port,
        };
        Backend {
            kind: cfg.kind,
            vni,
            port,
            vtep_mac,
            encap,
        }
    }

    /// The overlay device's name: flannel's where flannel has the backend.
    pub fn device_name(&self) -> String {
        match self.kind {
            BackendKind::Udp => udp::DEVICE.to_string(),
            BackendKind::Vxlan => vxlan::device_name(self.vni),
            BackendKind::Gre => gre::device_name(self.vni),
        }
    }

    /// The inner MTU on an underlay of `underlay_mtu` bytes.
    pub fn inner_mtu(&self, underlay_mtu: u32) -> u32 {
        underlay_mtu.saturating_sub(self.encap.overhead() as u32)
    }

    /// What our lease says about us, as flannel writes it for this backend.
    pub fn lease_attrs(&self, public_ip: Ipv4Addr) -> LeaseAttrs {
        match self.kind {
            BackendKind::Udp => udp::lease_attrs(public_ip),
            BackendKind::Vxlan => vxlan::lease_attrs(public_ip, self.vni, self.vtep_mac),
            BackendKind::Gre => gre::lease_attrs(public_ip, self.vni),
        }
    }

    /// Reads a peer's lease: `Ok(Some(mac))` for a peer of this backend (the MAC is its
    /// VtepMAC for vxlan, zero otherwise), `Ok(None)` for a lease that is not ours to
    /// carry (another backend, another VNI), `Err` for one of ours whose data is invalid.
    pub fn peer_mac(&self, attrs: &LeaseAttrs) -> Result<Option<[u8; 6]>, String> {
        match self.kind {
            BackendKind::Udp => Ok(udp::is_peer(attrs).then_some([0; 6])),
            BackendKind::Vxlan => vxlan::peer_mac(attrs, self.vni),
            BackendKind::Gre => Ok(gre::is_peer(attrs).then_some([0; 6])),
        }
    }

    /// Opens the underlay sockets on `addr` for `queues` receive workers.
    pub fn sockets(&self, addr: Ipv4Addr, queues: usize) -> Result<Sockets, SocketError> {
        match self.kind {
            BackendKind::Udp => udp::sockets(addr, self.port, queues),
            BackendKind::Vxlan => vxlan::sockets(addr, self.port, queues),
            BackendKind::Gre => gre::sockets(addr),
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
            vxlan::stable_vtep_mac(Ipv4Addr::new(192, 168, 77, 1), 7)
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
}
