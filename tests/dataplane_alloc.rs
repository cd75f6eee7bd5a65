//! Proof that the data plane's worker loops allocate nothing per packet in the steady state:
//! two real data planes (TUN + UDP sockets, offloads on) in two network namespaces carry an
//! iperf3 TCP stream (IPv4; IPv6 over the IPv4 underlay; IPv6 over an IPv6 underlay) and
//! pings, and a counting global allocator sees no allocation while traffic flows, with
//! super-packets segmented in userspace and with them handed whole to the kernel (tunnel
//! GSO). A separate test binary, so the allocator counts only this process.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use overlayd::backend::{Encap, Sockets};
use overlayd::fib::{self, Fib, Fib6, Peer, Peer6};
use overlayd::gso_tap::GsoTap;
use overlayd::host::Netlink;
use overlayd::l3::{Router, RouterConfig};
use overlayd::sys::netns::run_in_netns;
use overlayd::sys::socket::UnderlaySocket;
use overlayd::sys::tun::{self, Device};

#[global_allocator]
static A: Counting = Counting;

const NET: &str = "10.244.0.0/16";
const NET6: &str = "fd00:10::/56";

/// The overlay address of node `i` in the IPv6 network: its /64's network address.
fn addr6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0, u16::from(i), 0, 0, 0, 0)
}

fn mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, i]
}

/// What the iperf3 stream is and which underlay carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    V4,
    V6OverV4,
    V6OverV6,
}

/// One node: a TUN device and a UDP socket opened inside `ns`, and its data plane; with
/// `tunnel`, also the tunnel-GSO TAP (kept alive by the returned value).
fn node(
    host: &Host,
    me: u8,
    peer_ip: Ipv4Addr,
    peer: u8,
    tunnel: bool,
    stream: Stream,
) -> (Router, Option<GsoTap>) {
    let ns = host.name().to_string();
    let ip = host.ip;
    if stream == Stream::V6OverV6 {
        add_underlay_ipv6(host, usize::from(me) - 1);
    }
    let tap = tunnel.then(|| {
        run_in_netns(&ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let nl = Netlink::new().expect("netlink");
                let underlay = nl.underlay(Some("eth0")).await.expect("underlay");
                GsoTap::open(&nl, &underlay, 1, underlay.addr6)
                    .await
                    .expect("tunnel-GSO TAP")
            })
        })
        .expect("enter namespace")
    });
    let (mut dev, sock, sock6) = run_in_netns(&ns, move || {
        let mut dev = Device::open(&tun::Options {
            name: "flannel.1".into(),
            kind: tun::Kind::Tun,
            queues: 1,
            vnet_hdr: true,
            tunnel_hdr: false,
        })
        .expect("open tun");
        dev.set_offload(tun::TUN_F_CSUM | tun::TUN_F_TSO4 | tun::TUN_F_TSO6 | tun::TUN_F_TSO_ECN)
            .expect("offloads");
        let sock = UnderlaySocket::udp(SocketAddrV4::new(ip, 8472), 4 << 20).expect("udp socket");
        let sock6 = (stream == Stream::V6OverV6).then(|| {
            UnderlaySocket::udp((host_ip6(usize::from(me) - 1), 8472), 4 << 20)
                .expect("udp socket (IPv6)")
        });
        (dev, sock, sock6)
    })
    .expect("enter namespace");
    host.ip(&format!("addr add 10.244.{me}.0/32 dev flannel.1"));
    host.ip("link set flannel.1 mtu 1450 up");
    host.ip(&format!("route add {NET} dev flannel.1 src 10.244.{me}.0"));
    host.ip(&format!("-6 addr add {}/128 dev flannel.1", addr6(me)));
    host.ip(&format!(
        "-6 route add {NET6} dev flannel.1 src {}",
        addr6(me)
    ));
    if stream == Stream::V6OverV6 {
        // IPv6 packets get the 20 bytes the longer outer header takes.
        host.sysctl("net.ipv6.conf.flannel/1.mtu", "1430");
    }
    let sock = Arc::new(sock);
    let sock6 = sock6.map(Arc::new);
    let gro = sock.enable_gro() && sock6.as_ref().is_none_or(|s| s.enable_gro());
    let gso = sock.probe_gso() && sock6.as_ref().is_none_or(|s| s.probe_gso());
    assert!(gro && gso, "this kernel has UDP GSO and GRO");
    let shared = fib::shared();
    let (table, _) = Fib::new(
        NET.parse().unwrap(),
        24,
        Some(format!("10.244.{me}.0/24").parse().unwrap()),
        vec![Peer::new(
            format!("10.244.{peer}.0/24").parse().unwrap(),
            peer_ip,
            mac(peer),
        )],
    );
    shared.store(Arc::new(table));
    let shared6 = fib::shared6();
    let (table6, _) = Fib6::new(
        NET6.parse().unwrap(),
        64,
        Some(format!("{}/64", addr6(me)).parse().unwrap()),
        vec![match stream {
            Stream::V6OverV6 => {
                let ip6 = host_ip6(usize::from(peer) - 1);
                Peer6::new(
                    format!("{}/64", addr6(peer)).parse().unwrap(),
                    peer_ip,
                    Some(ip6),
                    IpAddr::V6(ip6),
                    mac(peer + 100),
                )
            }
            _ => Peer6::new(
                format!("{}/64", addr6(peer)).parse().unwrap(),
                peer_ip,
                None,
                IpAddr::V4(peer_ip),
                mac(peer),
            ),
        }],
    );
    shared6.store(Arc::new(table6));
    let cfg = RouterConfig {
        encap: Encap::Vxlan {
            vni: 1,
            local_mac: mac(me),
        },
        encap6: Encap::Vxlan {
            vni: 1,
            local_mac: mac(me + 100),
        },
        port: 8472,
        tun_addr: Ipv4Addr::new(10, 244, me, 0),
        vnet_hdr: true,
        gso,
        gro,
        local_mac: mac(me),
        busy_poll: overlayd::datapath::DEFAULT_BUSY_POLL,
        tunnel: tap.as_ref().map(|t| t.tunnel.clone()),
        mtu: 1450,
        pin_to: Vec::new(),
    };
    let queues = dev.queues.drain(..).map(Arc::new).collect();
    std::mem::forget(dev); // the queues keep the device; it goes with the namespace
    let v4 = Sockets {
        send: vec![sock.clone()],
        recv: vec![sock],
    };
    let v6 = sock6
        .map(|s| Sockets {
            send: vec![s.clone()],
            recv: vec![s],
        })
        .unwrap_or_default();
    let dp = Router::start(cfg, queues, v4, v6, shared, shared6).expect("start workers");
    (dp, tap)
}

#[test]
fn netns_worker_loops_do_not_allocate_per_packet() {
    if skip_unless_root("netns_worker_loops_do_not_allocate_per_packet") {
        return;
    }
    no_allocation_while_traffic_flows(false, Stream::V4);
}

/// The same with super-packets handed whole to the kernel through the tunnel-GSO TAP.
#[test]
fn netns_tunnel_gso_worker_loops_do_not_allocate_per_packet() {
    if skip_unless_root("netns_tunnel_gso_worker_loops_do_not_allocate_per_packet") {
        return;
    }
    no_allocation_while_traffic_flows(true, Stream::V4);
}

/// An IPv6 TCP stream (TSO6 super-packets from the TUN, GRO6 coalescing on receive), over
/// the IPv4 underlay, segmented in userspace.
#[test]
fn netns_ipv6_worker_loops_do_not_allocate_per_packet() {
    if skip_unless_root("netns_ipv6_worker_loops_do_not_allocate_per_packet") {
        return;
    }
    no_allocation_while_traffic_flows(false, Stream::V6OverV4);
}

/// The same IPv6 stream handed whole to the kernel: inner TCPV6 behind an IPv4 outer
/// header through the tunnel-GSO TAP.
#[test]
fn netns_ipv6_tunnel_gso_worker_loops_do_not_allocate_per_packet() {
    if skip_unless_root("netns_ipv6_tunnel_gso_worker_loops_do_not_allocate_per_packet") {
        return;
    }
    no_allocation_while_traffic_flows(true, Stream::V6OverV4);
}

/// An IPv6 stream over an IPv6 underlay (sockaddr_in6 on every send and receive, the
/// IPv6 socket's own VtepMAC), segmented in userspace.
#[test]
fn netns_ipv6_underlay_worker_loops_do_not_allocate_per_packet() {
    if skip_unless_root("netns_ipv6_underlay_worker_loops_do_not_allocate_per_packet") {
        return;
    }
    no_allocation_while_traffic_flows(false, Stream::V6OverV6);
}

/// The same with the IPv6 underlay's super-packets handed whole to the kernel: IPv6
/// outer headers through the tunnel-GSO TAP.
#[test]
fn netns_ipv6_underlay_tunnel_gso_worker_loops_do_not_allocate_per_packet() {
    if skip_unless_root("netns_ipv6_underlay_tunnel_gso_worker_loops_do_not_allocate_per_packet") {
        return;
    }
    no_allocation_while_traffic_flows(true, Stream::V6OverV6);
}

fn no_allocation_while_traffic_flows(tunnel: bool, stream: Stream) {
    let topo = Topology::new(2);
    let (h1, h2) = (topo.host(0), topo.host(1));
    let (d1, _t1) = node(h1, 1, h2.ip, 2, tunnel, stream);
    let (d2, _t2) = node(h2, 2, h1.ip, 1, tunnel, stream);
    let target = match stream {
        Stream::V4 => IpAddr::V4(Ipv4Addr::new(10, 244, 2, 0)),
        _ => IpAddr::V6(addr6(2)),
    };
    assert!(
        ping_until(h1, target, Duration::from_secs(10)),
        "overlay up"
    );
    let mut server = h2
        .command("iperf3")
        .args(["-s", "-1", "-B", &target.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut client = h1
        .command("timeout")
        .args(["20", "iperf3", "-c", &target.to_string(), "-t", "4"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Warm-up: first batches may size buffers; then measure a quiet window in which only
    // the workers run in this process (the test thread just sleeps).
    std::thread::sleep(Duration::from_millis(1000));
    let before = allocations();
    let tx_before = d1.totals().tx_packets;
    std::thread::sleep(Duration::from_millis(2000));
    let after = allocations();
    let tx_after = d1.totals().tx_packets;
    let tunnel_writes = d1.totals().tx_tunnel_gso;
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
    let moved = tx_after - tx_before;
    assert!(
        moved > 10_000,
        "traffic flowed during the window: {moved} datagrams"
    );
    assert_eq!(
        after - before,
        0,
        "allocations while {moved} datagrams moved through the workers"
    );
    assert_eq!(
        tunnel_writes > 0,
        tunnel,
        "the tunnel-GSO path was taken exactly when set up ({tunnel_writes} writes)"
    );
    eprintln!(
        "{moved} datagrams forwarded in 2 s with 0 heap allocations (tunnel GSO: {tunnel}, {stream:?})"
    );
    d1.stop();
    d2.stop();
}
