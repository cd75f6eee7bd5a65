//! The tunnel-GSO TAP: a TAP device through which the data planes hand the kernel whole
//! UDP-tunnel super-packets to segment (Linux ≥ 6.17; see [`crate::datapath::tunnel`]).
//!
//! Setting it up changes only what the daemon owns: a TAP named [`NAME`] with a fixed MAC
//! and no address, IPv6 off on it, and three of its own IPv4 settings — `forwarding` (the
//! kernel routes what arrives on it out of the underlay), `accept_local` (the outer source
//! is our own address) and `rp_filter` 0. With an IPv6 underlay (dual stack, IPv6 only)
//! IPv6 is on instead, without addresses of its own (`addr_gen_mode` 1, `accept_ra` 0),
//! and its IPv6 `force_forwarding` (Linux ≥ 6.17; IPv6 has no reverse-path or local-source
//! check to relax) routes what arrives out of the underlay. They vanish with the device
//! when the daemon exits. Host-wide settings are only read: a strict
//! `net.ipv4.conf.all.rp_filter` (1) wins over the device's 0, so it makes the TAP
//! unusable and the data planes segment in userspace instead (logged; set it to 2, loose,
//! to allow the TAP).
//!
//! With IPv6 outer headers a thread reads the ICMPv6 "packet too big" messages sent to our
//! underlay address ([`watch_too_big`]): the kernel cannot fragment a forwarded IPv6
//! super-packet's segments for a path narrower than they are, drops them and answers so;
//! the destination goes into the tunnel's [`NarrowPaths`], and the workers send to it the
//! userspace-segmenting way (whose socket fragments) until the re-probe. IPv4 needs no such
//! watch: the outer DF bit is clear, so the kernel fragments the segments it forwards.
//!
//! Before the data planes use it, a probe — a two-segment super-packet written through the
//! TAP to a socket on our own underlay address — shows that the kernel takes the header
//! and routes the packet. Forwarding out of the host additionally passes the FORWARD
//! chain: a DROP policy there must allow the TAP (`-i ovgso0 -j ACCEPT`); see
//! docs/operations.md.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::datapath::tunnel::{NarrowPaths, Tunnel, TunnelFrame, OUTER_LEN_V6};
use crate::host::{self, Netlink, Underlay};
use crate::offload::tso;
use crate::sys::socket::icmp6_listener;
use crate::sys::tun::{self, Device};
use crate::wire::virtio::{self, VirtioNetHdr};
use crate::wire::{checksum, icmp, ip, ipv4, tcp};

/// The TAP's name.
pub const NAME: &str = "ovgso0";
/// Its MAC: locally administered, unicast; only ever seen by this host's kernel.
const MAC: [u8; 6] = [0x02, 0x6f, 0x76, 0x67, 0x73, 0x6f];

/// `--tunnel-gso`: use the TAP when the kernel allows it, always (fail to start
/// otherwise), or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    On,
    Off,
}

/// An open, probed tunnel-GSO TAP. The device goes (with its settings) when this drops,
/// and the "packet too big" watch stops (within its read timeout).
pub struct GsoTap {
    _dev: Device,
    pub tunnel: Tunnel,
    stop: Arc<AtomicBool>,
}

impl Drop for GsoTap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl GsoTap {
    /// Opens the TAP with `queues` queues, configures it and probes it, for IPv4 outer
    /// headers (unless the underlay has no IPv4 address: an IPv6-only node) and, with
    /// `addr6` (our IPv6 underlay address), IPv6 ones. `Err` says why the kernel or the host
    /// does not allow it (the caller falls back, or stops for `--tunnel-gso on`); with both
    /// families, IPv6 not allowed is logged and leaves IPv4 in use.
    pub async fn open(
        nl: &Netlink,
        underlay: &Underlay,
        queues: usize,
        addr6: Option<Ipv6Addr>,
    ) -> Result<GsoTap, String> {
        let mut dev = Device::open(&tun::Options {
            name: NAME.into(),
            kind: tun::Kind::Tap,
            queues: queues.max(1),
            vnet_hdr: true,
            tunnel_hdr: true,
        })
        .map_err(|e| format!("cannot open TAP {NAME}: {e}"))?;
        let want = tun::TUN_F_CSUM
            | tun::TUN_F_TSO4
            | tun::TUN_F_TSO6
            | tun::TUN_F_UDP_TUNNEL_GSO
            | tun::TUN_F_UDP_TUNNEL_GSO_CSUM;
        dev.set_offload(want).map_err(|e| {
            format!(
                "the kernel refuses UDP-tunnel GSO on a TAP ({e}); it needs Linux 6.17 or later"
            )
        })?;
        let v4 = !underlay.addr.is_unspecified();
        let rp_all = host::read_conf("ipv4", "all", "rp_filter").unwrap_or_default();
        if v4 && rp_all == "1" {
            return Err(
                "net.ipv4.conf.all.rp_filter is 1 (strict), which refuses packets \
                        from our own address on the TAP; set it to 2 (loose) to allow it"
                    .into(),
            );
        }
        nl.configure_link(&dev.name, MAC, underlay.mtu)
            .await
            .map_err(|e| e.to_string())?;
        // IPv6 only where the kernel can forward it from this device alone.
        let addr6 = addr6.filter(|_| {
            let ok = host::conf_path("ipv6", &dev.name, "force_forwarding").exists();
            if !ok {
                tracing::warn!("this kernel has no per-device IPv6 forwarding (net.ipv6.conf.*.force_forwarding, Linux 6.17): super-packets to IPv6 underlay addresses are segmented in userspace");
            }
            ok
        });
        let ipv6_settings: &[(&str, &str, &str)] = match addr6 {
            None => &[("ipv6", "disable_ipv6", "1")],
            Some(_) => &[
                ("ipv6", "addr_gen_mode", "1"),
                ("ipv6", "accept_ra", "0"),
                ("ipv6", "force_forwarding", "1"),
                ("ipv6", "disable_ipv6", "0"),
            ],
        };
        for (family, key, value) in ipv6_settings.iter().copied().chain([
            ("ipv4", "forwarding", "1"),
            ("ipv4", "accept_local", "1"),
            ("ipv4", "rp_filter", "0"),
        ]) {
            host::write_conf(family, &dev.name, key, value)
                .map_err(|e| format!("cannot set net.{family}.conf.{NAME}.{key}={value}: {e}"))?;
        }
        let queues: Vec<_> = std::mem::take(&mut dev.queues)
            .into_iter()
            .map(Arc::new)
            .collect();
        let tunnel = Tunnel {
            queues,
            src: underlay.addr,
            src6: addr6,
            mac: MAC,
            on: Arc::new(AtomicBool::new(v4)),
            on6: Arc::new(AtomicBool::new(addr6.is_some())),
            narrow: Arc::default(),
        };
        if v4 {
            probe(&tunnel, IpAddr::V4(underlay.addr))?;
        }
        // IPv6 outer headers need the "packet too big" watch too: without it, super-packets
        // to a narrower IPv6 path would be lost.
        let stop = Arc::new(AtomicBool::new(false));
        let ipv6 = addr6.map(|a6| {
            probe(&tunnel, IpAddr::V6(a6)).and_then(|()| start_watch(&tunnel, a6, &stop))
        });
        match ipv6 {
            None if !v4 => return Err("no IPv4 or IPv6 underlay address to send from".into()),
            Some(Err(reason)) if !v4 => return Err(reason),
            Some(Err(reason)) => {
                tracing::warn!(%reason, "tunnel GSO with IPv6 outer headers unavailable; super-packets to IPv6 underlay addresses are segmented in userspace");
                tunnel.on6.store(false, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(GsoTap {
            _dev: dev,
            tunnel,
            stop,
        })
    }
}

/// Starts [`watch_too_big`] on our IPv6 underlay address `a6` for `t`'s narrow paths.
fn start_watch(t: &Tunnel, a6: Ipv6Addr, stop: &Arc<AtomicBool>) -> Result<(), String> {
    let sock = icmp6_listener(a6, Duration::from_secs(1))
        .map_err(|e| format!("cannot read ICMPv6 on {a6} (packet too big): {e}"))?;
    let (narrow, stop) = (t.narrow.clone(), stop.clone());
    std::thread::Builder::new()
        .name("gso-too-big".into())
        .spawn(move || watch_too_big(sock, a6, &narrow, &stop))
        .map_err(|e| format!("cannot start the packet-too-big watch: {e}"))?;
    Ok(())
}

/// Until `stop`: every ICMPv6 "packet too big" read from `sock` about a UDP datagram from
/// `src` (our underlay address) puts the datagram's destination into `narrow` (logged when
/// it was not held already). Reads wait at most the socket's timeout, so `stop` is seen.
fn watch_too_big(
    mut sock: socket2::Socket,
    src: Ipv6Addr,
    narrow: &NarrowPaths,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; icmp::MAX_V6_ERROR_LEN];
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(error = %e, "the packet-too-big watch stops: super-packets to a narrower IPv6 path would be lost");
                return;
            }
        };
        match icmp::too_big_v6(&buf[..n]) {
            Some(t) if t.src == src && narrow.report(IpAddr::V6(t.dst), Instant::now()) => {
                tracing::warn!(dst = %t.dst, mtu = t.mtu, "packet too big for the path to this destination: its super-packets are segmented in userspace until the re-probe");
            }
            _ => {}
        }
    }
}

/// Writes a two-segment UDP-tunnel super-packet through the TAP to a socket of ours on
/// `addr` (the outer header of its family) and waits (up to 1 s) for it to arrive.
fn probe(t: &Tunnel, addr: IpAddr) -> Result<(), String> {
    let sock = UdpSocket::bind((addr, 0)).map_err(|e| format!("probe socket: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| format!("probe socket: {e}"))?;
    let port = sock.local_addr().map_err(|e| e.to_string())?.port();
    const MARK: &[u8; 8] = b"ovgsoprb";
    const MSS: usize = 200;
    let (src, dst) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    // Room for either outer header.
    let at = OUTER_LEN_V6;
    let ip_at = at + MARK.len();
    let tcp_len = 20 + 2 * MSS;
    let mut buf = vec![0u8; ip_at + 20 + tcp_len];
    buf[at..ip_at].copy_from_slice(MARK);
    ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: ip::PROTO_TCP,
        payload_len: tcp_len as u16,
        ttl: 64,
        ident: 0,
    }
    .emit(&mut buf[ip_at..]);
    tcp::Repr {
        src_port: 1,
        dst_port: 2,
        seq_number: 0,
        ack_number: 0,
        flags: tcp::flags::ACK,
        window_len: 0,
    }
    .emit(&mut buf[ip_at + 20..]);
    let partial = checksum::fold(checksum::pseudo_header_v4(
        src,
        dst,
        ip::PROTO_TCP,
        tcp_len as u16,
    ));
    tcp::Packet::new_unchecked(&mut buf[ip_at + 20..]).set_checksum(partial);
    let vh = VirtioNetHdr {
        flags: virtio::F_NEEDS_CSUM,
        gso_type: virtio::GSO_TCPV4,
        hdr_len: 40,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    let shape = tso::gso_shape(&vh, &buf[ip_at..])
        .ok()
        .flatten()
        .ok_or("probe packet malformed")?;
    let f = TunnelFrame {
        at,
        end: buf.len(),
        inner_ip: MARK.len(),
        shape,
        vh,
    };
    let tx = t.for_worker(0);
    let sent = tx.send(&mut buf, &f, &[addr], port, 49152);
    match sent {
        Some(s) if s.calls == 1 => {}
        Some(_) => return Err("the probe write through the TAP failed".into()),
        None => return Err("the kernel refused the UDP-tunnel GSO header".into()),
    }
    let mut got = [0u8; 2048];
    match sock.recv(&mut got) {
        Ok(n) if got[..n].starts_with(MARK) => Ok(()),
        Ok(_) => Err("the probe arrived altered".into()),
        Err(e) => Err(format!(
            "the probe written through the TAP never arrived ({e}): check that the kernel \
             routes from {NAME} (forwarding, accept_local, rp_filter)"
        )),
    }
}
