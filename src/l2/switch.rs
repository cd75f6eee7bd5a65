//! The L2 data plane: worker threads moving Ethernet frames between TAP devices and the
//! underlay, with MAC learning, head-end replication, ARP suppression and VLAN↔VNI
//! trunking, on the shared [`datapath`](crate::datapath). No lock and no heap allocation
//! per frame.
//!
//! What is L2-specific lives here, and only that. Transmit, per TAP (an access port, or the
//! trunk): find the frame's network (the port's, or the trunk's VLAN map; the tag is
//! removed), answer an ARP request locally when the answer is known, look the destination
//! MAC up in the [`fdb`](super::fdb) (a live entry whose node is still a member: unicast to
//! it; else flood to every member), and hand the frame to the shared transmit path with
//! the network's encapsulation (VXLAN, or GRE 0x6558 with the NVGRE key) and its Ethernet
//! header as the link header repeated in front of every segment.
//!
//! Receive, per underlay socket: decapsulate through checked views, map the VNI (or VSID)
//! to a network, accept only frames from that network's members, learn source MAC → sender
//! (and, from ARP, IP → MAC), and deliver the frame into the network's TAP (re-tagged on
//! the trunk) through the shared delivery (coalescing, partial checksums). Everything
//! refused is counted by reason.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::config::{L2Backend, L2NetworkConfig};
use super::fdb::{self, Learned, Table};
use crate::backend;
use crate::counters::{bump, count_drop, ControlStats, DropCounters, NetStats};
use crate::datapath::recv::{self, Delivery, Link, Target};
use crate::datapath::send::{Outgoing, TxPath};
use crate::datapath::tunnel::Tunnel;
use crate::datapath::{would_block, BusyPoll, Side, Turn, Workers};
use crate::drop::DropReason;
use crate::sys::socket::{RecvBatch, UnderlaySocket, MAX_BATCH};
use crate::sys::tun::Queue;
use crate::wire::{arp, ether, flow, ipv4, virtio, vxlan};

/// Encapsulation header: VXLAN (8), or GRE with a key (4 + 4).
const ENCAP_LEN: usize = 8;
/// Slots of the MAC and IP learning tables, shared out among the attached networks: each
/// network has tables of its own ([`fdb::quota`]), so learning in one cannot fill another's.
pub const TABLE_SLOTS: usize = 1 << 16;

/// The nodes of one network other than this one, sorted: where floods go and whom frames
/// are accepted from. Replaced whole (an atomically swapped snapshot) on every change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Members {
    ips: Vec<Ipv4Addr>,
}

impl Members {
    pub fn new(mut ips: Vec<Ipv4Addr>) -> Self {
        ips.sort();
        ips.dedup();
        Self { ips }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.ips.binary_search(&ip).is_ok()
    }

    pub fn ips(&self) -> &[Ipv4Addr] {
        &self.ips
    }
}

/// One attached network.
#[derive(Debug)]
pub struct Network {
    pub name: String,
    pub cfg: L2NetworkConfig,
    /// MTU of the network's port: a received super-frame is cut to fit it.
    pub mtu: u32,
    pub members: ArcSwap<Members>,
    pub stats: NetStats,
}

impl Network {
    pub fn new(name: String, cfg: L2NetworkConfig, mtu: u32) -> Self {
        Self {
            name,
            cfg,
            mtu,
            members: ArcSwap::from_pointee(Members::default()),
            stats: NetStats::default(),
        }
    }
}

/// State shared by every L2 worker and the control plane.
#[derive(Debug)]
pub struct Shared {
    pub nets: Vec<Network>,
    /// Per network (indexed as `nets`): (network, MAC) → node address.
    pub macs: Vec<Table>,
    /// Per network: (network, IPv4) → MAC, learned from ARP for suppression.
    pub ips: Vec<Table>,
    pub drops: DropCounters,
    /// etcd errors, watch restarts and relists of the L2 membership loop.
    pub control: Arc<ControlStats>,
    epoch: Instant,
}

impl Shared {
    /// Each network gets its own learning tables of [`fdb::quota`] slots, ageing entries by
    /// its own `AgeingSecs`.
    pub fn new(nets: Vec<Network>) -> Self {
        let slots = fdb::quota(TABLE_SLOTS, nets.len());
        let tables = || -> Vec<Table> {
            nets.iter()
                .map(|n| Table::new(slots, n.cfg.ageing_secs))
                .collect()
        };
        let (macs, ips) = (tables(), tables());
        Self {
            nets,
            macs,
            ips,
            drops: Default::default(),
            control: Arc::default(),
            epoch: Instant::now(),
        }
    }

    /// The table clock: seconds since start (`u32`: wraps after 136 years, not hours).
    pub fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn dropped(&self, r: DropReason, n: u64) {
        count_drop(&self.drops, r, n);
    }

    /// The network carried with `vni` on `backend`.
    pub fn by_vni(&self, backend: L2Backend, vni: u32) -> Option<u16> {
        self.nets
            .iter()
            .position(|n| n.cfg.backend == backend && n.cfg.vni == vni)
            .map(|i| i as u16)
    }

    /// Replaces network `net`'s members; forgets the MACs learned behind nodes that left.
    pub fn set_members(&self, net: u16, members: Members) {
        let n = &self.nets[net as usize];
        let old = n.members.swap(Arc::new(members));
        let now = n.members.load();
        for gone in old.ips().iter().filter(|ip| !now.contains(**ip)) {
            let p = u64::from(u32::from(*gone));
            self.macs[net as usize].forget(|_, v| v == p);
        }
    }

    /// Live learned MACs of network `net`.
    pub fn fdb_entries(&self, net: u16) -> usize {
        self.macs[net as usize].count(self.now(), |_| true)
    }
}

/// How a TAP attaches networks.
#[derive(Debug, Clone)]
pub enum PortKind {
    /// One network, untagged frames.
    Access { net: u16 },
    /// 802.1Q-tagged frames; `vid_to_net[vid]` (u16::MAX = unmapped).
    Trunk { vid_to_net: Arc<[u16; 4096]> },
}

/// A TAP queue and what it carries.
#[derive(Debug, Clone)]
pub struct Port {
    pub queue: Arc<Queue>,
    pub kind: PortKind,
}

/// The sockets and settings the workers share.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// TAPs were opened with a virtio-net header (and offloads on).
    pub vnet_hdr: bool,
    /// Busy-poll after traffic, as `--busy-poll-us`.
    pub busy_poll: BusyPoll,
    /// UDP GSO usable on the vxlan send sockets.
    pub gso: bool,
    /// Receiving vxlan socket (bound to the networks' port) and the send pool.
    pub vxlan_recv: Option<Arc<UnderlaySocket>>,
    pub vxlan_send: Vec<Arc<UnderlaySocket>>,
    /// The raw GRE socket (sends and receives).
    pub gre: Option<Arc<UnderlaySocket>>,
    /// The tunnel-GSO TAP: vxlan super-frames go to the kernel whole.
    pub tunnel: Option<Tunnel>,
}

/// Where frames of each network are written: port index, and the VLAN tag on a trunk.
fn port_map<'a>(kinds: impl IntoIterator<Item = &'a PortKind>, nets: usize) -> PortMap {
    let mut d = vec![None; nets];
    for (pi, kind) in kinds.into_iter().enumerate() {
        match kind {
            PortKind::Access { net } => d[*net as usize] = Some((pi, None)),
            PortKind::Trunk { vid_to_net } => {
                for (vid, net) in vid_to_net.iter().enumerate() {
                    if *net != u16::MAX {
                        d[*net as usize] = Some((pi, Some(vid as u16)));
                    }
                }
            }
        }
    }
    d
}

/// Per network: the port its frames are written to, and the VLAN tag on a trunk.
type PortMap = Vec<Option<(usize, Option<u16>)>>;

/// Running L2 workers (stopped when dropped).
pub struct Switch {
    workers: Workers,
}

impl Switch {
    /// Worker `i` carries port `i`'s transmit side and underlay socket `i`'s receive side:
    /// with one network (the common case) a request and its reply meet in one thread,
    /// which the busy-poll window then catches without a wakeup (as on the L3 path).
    pub fn start(
        cfg: SwitchConfig,
        ports: Vec<Port>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Switch> {
        let map = Arc::new(port_map(ports.iter().map(|p| &p.kind), shared.nets.len()));
        let socks: Vec<(Arc<UnderlaySocket>, L2Backend)> = [
            cfg.vxlan_recv.clone().map(|s| (s, L2Backend::Vxlan)),
            cfg.gre.clone().map(|s| (s, L2Backend::Gre)),
        ]
        .into_iter()
        .flatten()
        .collect();
        for p in &ports {
            p.queue.set_nonblocking()?;
        }
        let queues: Vec<Arc<Queue>> = ports.iter().map(|p| p.queue.clone()).collect();
        let pairs = (0..ports.len().max(socks.len()))
            .map(|i| {
                let tx = ports.get(i).map(|p| SwitchTx {
                    path: TxPath::new(cfg.gso, cfg.tunnel.as_ref().map(|t| t.for_worker(i))),
                    cfg: cfg.clone(),
                    port: p.clone(),
                    shared: shared.clone(),
                    arp_buf: [0; 64],
                });
                let rx = socks.get(i).map(|(sock, backend)| SwitchRx {
                    sock: sock.clone(),
                    backend: *backend,
                    queues: queues.clone(),
                    map: map.clone(),
                    shared: shared.clone(),
                    // A kernel VXLAN peer over veth hands over whole tunnel-GSO super-frames
                    // (up to 64 KiB) even without UDP GRO: every buffer must hold one.
                    batch: RecvBatch::new(16, 65536 + 256),
                    delivery: Delivery::new(cfg.vnet_hdr),
                });
                (tx, rx)
            })
            .collect();
        Ok(Switch {
            workers: Workers::spawn("l2dp", pairs, cfg.busy_poll, &[])?,
        })
    }

    /// Stops the workers and waits for them.
    pub fn stop(self) {
        self.workers.stop();
    }
}

/// Writes the encapsulation header of `net` into `hdr[..ENCAP_LEN]`.
fn emit_encap(cfg: &L2NetworkConfig, hdr: &mut [u8]) {
    match cfg.backend {
        L2Backend::Vxlan => backend::vxlan_tunnel::emit_l2(cfg.vni, hdr),
        L2Backend::Gre => backend::gre_tunnel::emit_l2(cfg.vni, hdr),
    }
}

struct SwitchTx {
    cfg: SwitchConfig,
    port: Port,
    shared: Arc<Shared>,
    path: TxPath,
    arp_buf: [u8; 64],
}

impl Side for SwitchTx {
    fn pollable(&self) -> Arc<dyn AsFd + Send + Sync> {
        self.port.queue.clone()
    }

    /// Forwards up to a batch of frames from the TAP.
    fn drain(&mut self) -> Turn {
        let mut turn = Turn::default();
        for _ in 0..MAX_BATCH {
            let n = match self.path.read(&self.port.queue) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    self.shared.dropped(DropReason::IoError, 1);
                    std::thread::sleep(Duration::from_millis(20));
                    break;
                }
            };
            turn.add(1, n);
            self.forward(n);
        }
        turn
    }
}

impl SwitchTx {
    /// Forwards the `n` bytes just read.
    fn forward(&mut self, n: usize) {
        let sh = &*self.shared;
        let Some((mut vh, mut start, end)) = self.path.frame(n, self.cfg.vnet_hdr) else {
            return sh.dropped(DropReason::Truncated, 1);
        };
        if ether::Frame::new_checked(&self.path.buf[start..end]).is_err() {
            return sh.dropped(DropReason::Truncated, 1);
        }
        let (net, vid) = match &self.port.kind {
            PortKind::Access { net } => (*net, None),
            PortKind::Trunk { vid_to_net } => {
                // Remove the tag (the addresses move over it); untagged: no network.
                let Some(tag) = ether::remove_vlan_tag(&mut self.path.buf[start..end]) else {
                    return sh.dropped(DropReason::UnmappedVlan, 1);
                };
                let net = vid_to_net[usize::from(tag.vid)];
                if net == u16::MAX {
                    return sh.dropped(DropReason::UnmappedVlan, 1);
                }
                start += ether::VLAN_TAG_LEN;
                vh.csum_start = vh.csum_start.saturating_sub(ether::VLAN_TAG_LEN as u16);
                vh.hdr_len = vh.hdr_len.saturating_sub(ether::VLAN_TAG_LEN as u16);
                if end - start < ether::HEADER_LEN {
                    return sh.dropped(DropReason::Truncated, 1);
                }
                (net, Some(tag.vid))
            }
        };
        let network = &sh.nets[net as usize];
        let frame = ether::Frame::new_unchecked(&self.path.buf[start..end]);
        let dst = frame.dst_addr();

        if network.cfg.arp_suppression && frame.ethertype() == ether::ETHERTYPE_ARP {
            if let Some(len) = suppress_arp(sh, net, frame.into_inner(), &mut self.arp_buf) {
                let (hdr, body) = self.arp_buf[..len].split_at(ether::HEADER_LEN);
                let link = Link::Eth {
                    hdr: hdr.try_into().unwrap_or([0; ether::HEADER_LEN]),
                    vid,
                };
                let vh = virtio::VirtioNetHdr::default();
                let vh = self.cfg.vnet_hdr.then_some(&vh);
                if recv::write_packet(&self.port.queue, vh, &link, body).is_ok() {
                    bump(&network.stats.arp_suppressed, 1);
                }
                return;
            }
        }

        let members = network.members.load();
        let unicast_to = if dst.is_unicast() {
            sh.macs[net as usize]
                .lookup(fdb::mac_key(net, dst.0), sh.now())
                .map(|p| Ipv4Addr::from(p as u32))
                .filter(|ip| members.contains(*ip))
        } else {
            None
        };
        let dsts: &[Ipv4Addr] = match &unicast_to {
            Some(ip) => std::slice::from_ref(ip),
            None => members.ips(),
        };
        if dsts.is_empty() {
            return sh.dropped(DropReason::NoRoute, 1);
        }
        let hash = flow::hash(frame.payload());
        let (sock, port) = match network.cfg.backend {
            L2Backend::Vxlan => {
                let i = hash as usize % self.cfg.vxlan_send.len().max(1);
                match self.cfg.vxlan_send.get(i) {
                    Some(s) => (s, network.cfg.port),
                    None => return sh.dropped(DropReason::IoError, 1),
                }
            }
            L2Backend::Gre => match &self.cfg.gre {
                Some(s) => (s, 0),
                None => return sh.dropped(DropReason::IoError, 1),
            },
        };
        let out = Outgoing {
            vh,
            start,
            end,
            link: ether::HEADER_LEN,
            encap: ENCAP_LEN,
            flow: hash,
        };
        let mut fill = |d: &mut [u8]| {
            emit_encap(&network.cfg, &mut d[..ENCAP_LEN]);
            Ok(())
        };
        let sent = match self.path.send(&out, &mut fill, sock, dsts, port) {
            Ok(s) => s,
            Err((r, n)) => return sh.dropped(r, n),
        };
        if sent.dropped > 0 {
            sh.dropped(DropReason::IoError, sent.dropped);
        }
        // Frames per destination (segments of a super-frame), and copies in all.
        let copies = sent.packets + sent.dropped;
        let frames = copies / dsts.len() as u64;
        bump(
            &network.stats.tx_bytes,
            sent.bytes - ENCAP_LEN as u64 * sent.packets,
        );
        bump(&network.stats.tx_tunnel_gso, sent.tunnel_writes);
        bump(&network.stats.tx_offload_fallbacks, sent.fallbacks);
        if unicast_to.is_some() {
            bump(&network.stats.tx_unicast, frames);
        } else {
            bump(&network.stats.tx_flood, frames);
            bump(&network.stats.flood_copies, copies);
        }
    }
}

/// Answers an ARP request for an IP learned in network `net` with the learned MAC: writes
/// the reply frame into `out` and returns its length.
fn suppress_arp(sh: &Shared, net: u16, frame: &[u8], out: &mut [u8; 64]) -> Option<usize> {
    let body = frame.get(ether::HEADER_LEN..)?;
    let req = arp::Repr::parse(&arp::Packet::new_checked(body).ok()?).ok()?;
    if req.operation != arp::OP_REQUEST
        || !req.sender_mac.is_unicast()
        || req.sender_ip == req.target_ip
        || req.sender_ip.is_unspecified()
    {
        return None;
    }
    let mac = fdb::payload_mac(
        sh.ips
            .get(net as usize)?
            .lookup(fdb::ip_key(net, req.target_ip.octets()), sh.now())?,
    );
    ether::emit(out, req.sender_mac.0, mac, ether::ETHERTYPE_ARP);
    arp::Repr {
        operation: arp::OP_REPLY,
        sender_mac: ether::MacAddr(mac),
        sender_ip: req.target_ip,
        target_mac: req.sender_mac,
        target_ip: req.sender_ip,
    }
    .emit(&mut out[ether::HEADER_LEN..]);
    Some(arp::FRAME_LEN)
}

struct SwitchRx {
    sock: Arc<UnderlaySocket>,
    backend: L2Backend,
    /// Every port's queue, indexed as `map` says.
    queues: Vec<Arc<Queue>>,
    map: Arc<PortMap>,
    shared: Arc<Shared>,
    batch: RecvBatch,
    delivery: Delivery,
}

impl Side for SwitchRx {
    fn pollable(&self) -> Arc<dyn AsFd + Send + Sync> {
        self.sock.clone()
    }

    /// Receives and delivers up to [`recv::MAX_BATCHES`] batches.
    fn drain(&mut self) -> Turn {
        recv::drain(self)
    }
}

impl recv::Receive for SwitchRx {
    fn receive(&mut self) -> io::Result<usize> {
        self.sock.recv_batch(&mut self.batch)
    }

    fn capacity(&self) -> usize {
        self.batch.capacity()
    }

    fn largest(&self, n: usize) -> usize {
        self.batch.largest(n)
    }

    fn handle(&mut self, i: usize) {
        self.handle_message(i);
    }

    fn failed(&mut self) {
        self.shared.dropped(DropReason::IoError, 1);
    }

    fn flush(&mut self) {
        self.delivery.flush(&self.queues, &self.shared.drops);
    }
}

impl SwitchRx {
    fn handle_message(&mut self, i: usize) {
        let sh = &*self.shared;
        let now = sh.now();
        let raw = self.sock.is_raw();
        let (data, seg, from) = self.batch.get(i);
        // With UDP GRO the kernel hands over runs of datagrams, `seg` bytes each; a kernel
        // VXLAN peer's whole tunnel-GSO frame comes as one buffer longer than `seg` whose
        // inner packet covers it: it is kept whole.
        let inner_at = vxlan::HEADER_LEN + ether::HEADER_LEN;
        let split = recv::split(data, seg, (!raw).then_some(inner_at));
        for d in data.chunks(split.chunk) {
            let inb = match classify(sh, self.backend, d, *from.ip(), raw) {
                Ok(Some(i)) => i,
                Ok(None) => continue,
                Err(r) => {
                    sh.dropped(r, 1);
                    continue;
                }
            };
            learn(sh, &inb, now);
            let network = &sh.nets[inb.net as usize];
            let Some((queue, vid)) = self.map[inb.net as usize] else {
                sh.dropped(DropReason::NoRoute, 1);
                continue;
            };
            let (frame, partial) = trim_and_check(inb.frame, network.mtu as usize);
            bump(&network.stats.rx_frames, 1);
            if recv::unmerged_partial(seg, &frame[ether::HEADER_LEN..], partial.as_ref()) {
                bump(&network.stats.rx_unmerged_partial, 1);
            }
            bump(&network.stats.rx_bytes, frame.len() as u64);
            let (hdr, body) = frame.split_at(ether::HEADER_LEN);
            let t = Target {
                queue,
                link: Link::Eth {
                    hdr: hdr.try_into().unwrap_or([0; ether::HEADER_LEN]),
                    vid,
                },
            };
            let et = ether::Frame::new_unchecked(frame).ethertype();
            if matches!(et, ether::ETHERTYPE_IPV4 | ether::ETHERTYPE_IPV6) {
                self.delivery.ip(&self.queues, t, body, partial, &sh.drops);
            } else {
                self.delivery.other(&self.queues, t, body, &sh.drops);
            }
        }
    }
}

/// What one received datagram carries, once checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Inbound<'a> {
    pub net: u16,
    pub sender: Ipv4Addr,
    pub frame: &'a [u8],
}

/// Checks one datagram from the underlay: outer header (raw GRE), encapsulation, network
/// by VNI, membership of the sender, inner Ethernet header. `Ok(None)` for GRE traffic that
/// is not Ethernet (the L3 gre backend's, on the same raw socket).
pub fn classify<'a>(
    sh: &Shared,
    backend: L2Backend,
    data: &'a [u8],
    from: Ipv4Addr,
    raw: bool,
) -> Result<Option<Inbound<'a>>, DropReason> {
    let (sender, payload) = if raw {
        ipv4::outer_payload(data)?
    } else {
        (from, data)
    };
    let (vni, frame) = match backend {
        L2Backend::Vxlan => backend::vxlan_tunnel::decapsulate_l2(payload)?,
        L2Backend::Gre => match backend::gre_tunnel::decapsulate_l2(payload)? {
            Some(x) => x,
            None => return Ok(None),
        },
    };
    let net = sh.by_vni(backend, vni).ok_or(DropReason::WrongVni)?;
    if !sh.nets[net as usize].members.load().contains(sender) {
        return Err(DropReason::UnknownSender);
    }
    let f = ether::Frame::new_checked(frame)?;
    let src = f.src_addr();
    if !src.is_unicast() || src.0 == [0; 6] {
        return Err(DropReason::BadInner);
    }
    Ok(Some(Inbound { net, sender, frame }))
}

/// Learns from an accepted frame: its source MAC lives behind `sender`; from ARP, the
/// sender IP has the sender MAC.
pub fn learn(sh: &Shared, inb: &Inbound<'_>, now: u32) {
    let network = &sh.nets[inb.net as usize];
    let src: [u8; 6] = inb.frame[6..12].try_into().unwrap_or([0; 6]);
    match sh.macs[inb.net as usize].learn(
        fdb::mac_key(inb.net, src),
        u64::from(u32::from(inb.sender)),
        now,
    ) {
        Learned::New => bump(&network.stats.learned, 1),
        Learned::Moved(_) => bump(&network.stats.moves, 1),
        Learned::Refreshed => {}
        Learned::Full => bump(&network.stats.fdb_full, 1),
        Learned::Pinned => bump(&network.stats.moves_pinned, 1),
    }
    let et = ether::Frame::new_unchecked(inb.frame).ethertype();
    if network.cfg.arp_suppression && et == ether::ETHERTYPE_ARP {
        if let Some(r) = inb
            .frame
            .get(ether::HEADER_LEN..)
            .and_then(|b| arp::Packet::new_checked(b).ok())
            .and_then(|p| arp::Repr::parse(&p).ok())
        {
            if r.sender_mac.0 == src && !r.sender_ip.is_unspecified() {
                sh.ips[inb.net as usize].learn(
                    fdb::ip_key(inb.net, r.sender_ip.octets()),
                    fdb::mac_payload(src),
                    now,
                );
            }
        }
    }
}

/// Trims Ethernet padding after an IPv4 packet and recognises a transport checksum left
/// partial by a sending kernel with checksum offload (a kernel VXLAN peer over veth): such
/// a frame gets the virtio header that makes our kernel finish it. A whole TCP
/// super-frame (longer than the port's `mtu`, as a kernel peer's tunnel GSO hands it over)
/// also gets a segment size that fits the MTU.
pub fn trim_and_check(frame: &[u8], mtu: usize) -> (&[u8], Option<virtio::VirtioNetHdr>) {
    let f = ether::Frame::new_unchecked(frame);
    if f.ethertype() != ether::ETHERTYPE_IPV4 {
        return (frame, None);
    }
    let Ok(ip) = ipv4::Packet::new_checked(f.payload()) else {
        return (frame, None);
    };
    // Checked: the total length lies within the buffer; what follows it is padding.
    let frame = &frame[..ether::HEADER_LEN + usize::from(ip.total_len())];
    let ip = &frame[ether::HEADER_LEN..];
    let gso = if ip.len() > mtu {
        crate::offload::tcp_mss_for_mtu(ip, mtu)
    } else {
        0
    };
    (frame, crate::offload::partial_checksum_hdr(ip, gso))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::gre;
    use std::sync::atomic::Ordering;

    const M1: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const M2: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn cfg(vni: u32, backend: L2Backend) -> L2NetworkConfig {
        L2NetworkConfig {
            vni,
            backend,
            port: 4789,
            arp_suppression: true,
            ageing_secs: 300,
        }
    }

    fn shared() -> Shared {
        let sh = Shared::new(vec![
            Network::new("a".into(), cfg(100, L2Backend::Vxlan), 1450),
            Network::new("b".into(), cfg(200, L2Backend::Vxlan), 1450),
            Network::new("g".into(), cfg(100, L2Backend::Gre), 1458),
        ]);
        for i in 0..3 {
            sh.set_members(i, Members::new(vec![PEER]));
        }
        sh
    }

    fn frame(dst: [u8; 6], src: [u8; 6], et: u16, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        ether::emit(&mut f, dst, src, et);
        f.extend_from_slice(body);
        f
    }

    fn vxlan_dgram(vni: u32, f: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 8];
        vxlan::Repr { vni }.emit(&mut d);
        d.extend_from_slice(f);
        d
    }

    #[test]
    fn vni_picks_the_network_and_members_are_required() {
        let sh = shared();
        let f = frame(M2, M1, ether::ETHERTYPE_IPV4, &[0; 20]);
        let d = vxlan_dgram(200, &f);
        let i = classify(&sh, L2Backend::Vxlan, &d, PEER, false)
            .unwrap()
            .unwrap();
        assert_eq!(i.net, 1);
        assert_eq!(i.frame, &f[..]);
        assert_eq!(
            classify(&sh, L2Backend::Vxlan, &vxlan_dgram(300, &f), PEER, false),
            Err(DropReason::WrongVni)
        );
        assert_eq!(
            classify(&sh, L2Backend::Vxlan, &d, Ipv4Addr::new(10, 0, 0, 9), false),
            Err(DropReason::UnknownSender)
        );
        // Multicast or zero source MAC, short frames.
        let bad = vxlan_dgram(100, &frame(M2, [1, 0, 0, 0, 0, 1], 0x0800, &[]));
        assert_eq!(
            classify(&sh, L2Backend::Vxlan, &bad, PEER, false),
            Err(DropReason::BadInner)
        );
        assert_eq!(
            classify(
                &sh,
                L2Backend::Vxlan,
                &vxlan_dgram(100, &[0; 10]),
                PEER,
                false
            ),
            Err(DropReason::Truncated)
        );
    }

    #[test]
    fn gre_teb_with_nvgre_key() {
        let sh = shared();
        let f = frame(M2, M1, ether::ETHERTYPE_IPV4, &[0; 20]);
        let mut g = vec![0u8; 8];
        gre::Repr {
            protocol: ether::ETHERTYPE_TEB,
            checksum: false,
            key: Some(100 << 8 | 0x5a),
            seq: None,
        }
        .emit(&mut g);
        g.extend_from_slice(&f);
        // As a raw socket reads it: with the outer IPv4 header.
        let mut pkt = vec![0u8; 20];
        ipv4::Repr {
            src_addr: PEER,
            dst_addr: Ipv4Addr::new(10, 0, 0, 1),
            protocol: crate::wire::ip::PROTO_GRE,
            payload_len: g.len() as u16,
            ttl: 64,
            ident: 0,
        }
        .emit(&mut pkt);
        pkt.extend_from_slice(&g);
        let i = classify(&sh, L2Backend::Gre, &pkt, Ipv4Addr::UNSPECIFIED, true)
            .unwrap()
            .unwrap();
        assert_eq!((i.net, i.sender), (2, PEER));
        // L3 GRE (IPv4 inside) on the same socket is not ours: ignored, not counted.
        pkt[20 + 2..20 + 4].copy_from_slice(&ether::ETHERTYPE_IPV4.to_be_bytes());
        assert_eq!(
            classify(&sh, L2Backend::Gre, &pkt, Ipv4Addr::UNSPECIFIED, true),
            Ok(None)
        );
    }

    #[test]
    fn emitted_headers_parse_back() {
        let mut h = [0u8; ENCAP_LEN];
        emit_encap(&cfg(16_777_215, L2Backend::Gre), &mut h);
        let g = gre::Packet::new_checked(&h[..]).unwrap();
        assert_eq!(g.protocol(), ether::ETHERTYPE_TEB);
        assert_eq!(g.key(), Some(0xffff_ff00));
        assert_eq!(g.header_len(), ENCAP_LEN);
        emit_encap(&cfg(4096, L2Backend::Vxlan), &mut h);
        let v = vxlan::Packet::new_checked(&h[..]).unwrap();
        assert_eq!(vxlan::Repr::parse(&v).unwrap().vni, 4096);
    }

    #[test]
    fn learning_moves_and_arp_suppression() {
        let sh = shared();
        // An ARP request from M1 (10.50.0.1) seen arriving from PEER in network 0.
        let mut body = [0u8; 28];
        arp::Repr {
            operation: arp::OP_REQUEST,
            sender_mac: ether::MacAddr(M1),
            sender_ip: Ipv4Addr::new(10, 50, 0, 1),
            target_mac: ether::MacAddr([0; 6]),
            target_ip: Ipv4Addr::new(10, 50, 0, 2),
        }
        .emit(&mut body);
        let f = frame([0xff; 6], M1, ether::ETHERTYPE_ARP, &body);
        let inb = Inbound {
            net: 0,
            sender: PEER,
            frame: &f,
        };
        let now = sh.now();
        learn(&sh, &inb, now);
        assert_eq!(
            sh.macs[0].lookup(fdb::mac_key(0, M1), now),
            Some(u64::from(u32::from(PEER)))
        );
        assert_eq!(sh.macs[1].lookup(fdb::mac_key(1, M1), 1), None);
        assert_eq!(sh.nets[0].stats.learned.load(Ordering::Relaxed), 1);
        // A local request for 10.50.0.1 is now answered with M1.
        let mut req = [0u8; 28];
        arp::Repr {
            operation: arp::OP_REQUEST,
            sender_mac: ether::MacAddr(M2),
            sender_ip: Ipv4Addr::new(10, 50, 0, 2),
            target_mac: ether::MacAddr([0; 6]),
            target_ip: Ipv4Addr::new(10, 50, 0, 1),
        }
        .emit(&mut req);
        let q = frame([0xff; 6], M2, ether::ETHERTYPE_ARP, &req);
        let mut out = [0u8; 64];
        let n = suppress_arp(&sh, 0, &q, &mut out).unwrap();
        let reply = arp::Repr::parse(&arp::Packet::new_checked(&out[14..n]).unwrap()).unwrap();
        assert_eq!(reply.operation, arp::OP_REPLY);
        assert_eq!(reply.sender_mac.0, M1);
        assert_eq!(&out[..6], &M2);
        // Not in the other network.
        assert_eq!(suppress_arp(&sh, 1, &q, &mut out), None);
        // M1 moves behind another node.
        let other = Ipv4Addr::new(10, 0, 0, 3);
        sh.set_members(0, Members::new(vec![PEER, other]));
        learn(
            &sh,
            &Inbound {
                net: 0,
                sender: other,
                frame: &f,
            },
            now,
        );
        assert_eq!(sh.nets[0].stats.moves.load(Ordering::Relaxed), 1);
        // The node leaves: what was learned behind it is forgotten.
        sh.set_members(0, Members::new(vec![PEER]));
        assert_eq!(sh.macs[0].lookup(fdb::mac_key(0, M1), now), None);
    }

    /// 100 000 random source MACs in network a: a's table fills (counted there), b's
    /// learned MAC stays and b still learns: its frames stay unicast.
    #[test]
    fn random_macs_in_one_network_leave_another_alone() {
        let sh = shared();
        let now = sh.now();
        let learn_from = |net: u16, dst: [u8; 6], src: [u8; 6]| {
            let f = frame(dst, src, ether::ETHERTYPE_IPV4, &[0; 20]);
            let inb = Inbound {
                net,
                sender: PEER,
                frame: &f,
            };
            learn(&sh, &inb, now);
        };
        learn_from(1, M2, M1);
        for i in 0..100_000u32 {
            let m = i.to_be_bytes();
            learn_from(0, M2, [2, 0xaa, m[0], m[1], m[2], m[3]]);
        }
        let full = |n: usize| sh.nets[n].stats.fdb_full.load(Ordering::Relaxed);
        assert!(
            full(0) > 0 && full(1) == 0,
            "full: a {}, b {}",
            full(0),
            full(1)
        );
        assert!(sh.fdb_entries(0) <= fdb::quota(TABLE_SLOTS, 3));
        assert_eq!(sh.fdb_entries(1), 1);
        assert!(sh.macs[1].lookup(fdb::mac_key(1, M1), now).is_some());
        learn_from(1, M1, M2);
        assert_eq!(sh.fdb_entries(1), 2);
    }

    /// An Ethernet frame carrying IPv4/TCP with `payload` bytes whose TCP checksum is left
    /// partial (the pseudo-header sum), as a kernel with checksum offload sends it.
    fn partial_tcp_frame(payload: usize, pad: usize) -> Vec<u8> {
        use crate::wire::checksum;
        let (src, dst) = (Ipv4Addr::new(10, 50, 0, 2), Ipv4Addr::new(10, 50, 0, 1));
        let mut ip = vec![0u8; 20 + 20 + payload];
        ipv4::Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: 6,
            payload_len: (20 + payload) as u16,
            ttl: 64,
            ident: 0,
        }
        .emit(&mut ip);
        ip[20 + 12] = 5 << 4;
        ip[20 + 13] = 0x10;
        let pseudo = checksum::fold(checksum::pseudo_header_v4(
            src,
            dst,
            6,
            (20 + payload) as u16,
        ));
        ip[20 + 16..20 + 18].copy_from_slice(&pseudo.to_be_bytes());
        let mut f = frame(M1, M2, ether::ETHERTYPE_IPV4, &ip);
        f.extend(std::iter::repeat_n(0, pad));
        f
    }

    #[test]
    fn partial_checksums_and_super_frames_are_recognised() {
        // A small ACK padded to Ethernet's minimum: trimmed, checksum to be finished.
        let f = partial_tcp_frame(0, 6);
        let (t, h) = trim_and_check(&f, 1450);
        assert_eq!(t.len(), f.len() - 6);
        let h = h.unwrap();
        assert!(h.needs_csum());
        assert_eq!(h.gso_kind(), virtio::GSO_NONE);
        // A 20000-byte super-frame: cut to the MTU (1450 - 20 - 20 = 1410 per segment).
        let f = partial_tcp_frame(20_000, 0);
        let h = trim_and_check(&f, 1450).1.unwrap();
        assert_eq!(h.gso_kind(), virtio::GSO_TCPV4);
        assert_eq!(h.gso_size, 1410);
        // A finished checksum or a non-IP frame: left alone.
        let arp = frame(M1, M2, ether::ETHERTYPE_ARP, &[0; 28]);
        assert_eq!(trim_and_check(&arp, 1450), (&arp[..], None));
    }

    #[test]
    fn delivery_map_covers_access_and_trunk() {
        let mut v = [u16::MAX; 4096];
        v[10] = 0;
        v[20] = 1;
        let kinds = [
            PortKind::Trunk {
                vid_to_net: Arc::new(v),
            },
            PortKind::Access { net: 2 },
        ];
        let d = port_map(kinds.iter(), 3);
        assert_eq!(
            d,
            vec![Some((0, Some(10))), Some((0, Some(20))), Some((1, None))]
        );
    }
}
