//! The L2 data plane: worker threads moving Ethernet frames between TAP devices and the
//! underlay, with MAC learning, head-end replication, ARP suppression and VLAN↔VNI
//! trunking. No lock and no heap allocation per frame.
//!
//! Transmit, one thread per TAP (an access port, or the trunk): read a frame (a TSO
//! super-frame when offloads are on), find its network (the port's, or the trunk's VLAN
//! map; the tag is removed), answer an ARP request locally when the answer is known,
//! look the destination MAC up in the [`fdb`](super::fdb) (a live entry whose node is still
//! a member: unicast to it; else flood to every member), encapsulate (VXLAN, or GRE
//! 0x6558 with the NVGRE key) and send, segmenting in userspace and sending with UDP GSO
//! where possible, exactly as the L3 path does.
//!
//! Receive, one thread per underlay socket: `recvmmsg`, decapsulate through checked views,
//! map the VNI (or VSID) to a network, accept only frames from that network's members,
//! learn source MAC → sender (and, from ARP, IP → MAC), and write the frame into the
//! network's TAP (re-tagged on the trunk). Everything refused is counted by reason.

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::config::{L2Backend, L2NetworkConfig};
use super::fdb::{self, Learned, Table};
use crate::dataplane::send_layout;
use crate::drop::DropReason;
use crate::offload::gro::Coalescer;
use crate::offload::tso;
use crate::sys::socket::{Msg, RecvBatch, UnderlaySocket, MAX_BATCH};
use crate::sys::tun::Queue;
use crate::wire::{arp, ether, flow, gre, ipv4, virtio, vxlan};

/// Room kept in front of every frame read from a TAP for the encapsulation header.
const HEADROOM: usize = 64;
/// Largest frame a TAP hands over (a TSO super-frame, a VLAN tag, the virtio header).
const MAX_READ: usize = 65535 + 18 + virtio::LEN;
/// Encapsulation header: VXLAN (8), or GRE with a key (4 + 4).
const ENCAP_LEN: usize = 8;
/// Bytes of segment slots per transmit.
const SEG_BUF: usize = 256 * 1024;
/// Slots of the MAC and IP learning tables.
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

use crate::counters::{bump, NetStats};

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
    /// (network, MAC) → node address.
    pub macs: Table,
    /// (network, IPv4) → MAC, learned from ARP for suppression.
    pub ips: Table,
    pub drops: [AtomicU64; DropReason::COUNT],
    epoch: Instant,
}

impl Shared {
    /// Tables age entries by the smallest `AgeingSecs` of the attached networks.
    pub fn new(nets: Vec<Network>) -> Self {
        let ageing = nets.iter().map(|n| n.cfg.ageing_secs).min().unwrap_or(300);
        Self {
            nets,
            macs: Table::new(TABLE_SLOTS, ageing),
            ips: Table::new(TABLE_SLOTS, ageing),
            drops: Default::default(),
            epoch: Instant::now(),
        }
    }

    /// The table clock: seconds since start, wrapping at 16 bits.
    pub fn now(&self) -> u16 {
        self.epoch.elapsed().as_secs() as u16
    }

    fn dropped(&self, r: DropReason, n: u64) {
        bump(&self.drops[r as usize], n);
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
            self.macs
                .forget(|k, v| fdb::key_net(k, true) == net && v == p);
        }
    }

    /// Live learned MACs of network `net`.
    pub fn fdb_entries(&self, net: u16) -> usize {
        self.macs
            .count(self.now(), |k| fdb::key_net(k, true) == net)
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
pub struct Config {
    /// TAPs were opened with a virtio-net header (and offloads on).
    pub vnet_hdr: bool,
    /// Busy-poll window after traffic, µs (0 = block at once), as `--busy-poll-us`.
    pub busy_poll_us: u32,
    /// UDP GSO usable on the vxlan send sockets.
    pub gso: bool,
    /// Receiving vxlan socket (bound to the networks' port) and the send pool.
    pub vxlan_recv: Option<Arc<UnderlaySocket>>,
    pub vxlan_send: Vec<Arc<UnderlaySocket>>,
    /// The raw GRE socket (sends and receives).
    pub gre: Option<Arc<UnderlaySocket>>,
}

/// Where frames of each network are written: port index, and the VLAN tag on a trunk.
fn delivery<'a>(kinds: impl IntoIterator<Item = &'a PortKind>, nets: usize) -> Delivery {
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
type Delivery = Vec<Option<(usize, Option<u16>)>>;

/// Running L2 workers.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// One transmit worker per port, one receive worker per underlay socket.
    pub fn start(cfg: Config, ports: Vec<Port>, shared: Arc<Shared>) -> io::Result<Dataplane> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let deliver = Arc::new(delivery(ports.iter().map(|p| &p.kind), shared.nets.len()));
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
        // Worker i carries port i's transmit side and socket i's receive side: with one
        // network (the common case) a request and its reply meet in one thread, which the
        // busy-poll window then catches without a wakeup (as on the L3 path).
        for i in 0..ports.len().max(socks.len()) {
            let tx = ports
                .get(i)
                .map(|p| TxWorker::new(cfg.clone(), p.clone(), shared.clone()));
            let rx = socks.get(i).map(|(sock, backend)| {
                RxWorker::new(
                    cfg.clone(),
                    sock.clone(),
                    *backend,
                    ports.clone(),
                    deliver.clone(),
                    shared.clone(),
                )
            });
            let (stop, busy) = (stop.clone(), Duration::from_micros(cfg.busy_poll_us.into()));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("l2dp{i}"))
                    .spawn(move || run_worker(tx, rx, busy, &stop))?,
            );
        }
        Ok(Dataplane { stop, threads })
    }

    /// Stops the workers and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One L2 worker: polls its TAP and/or socket and drains whichever is readable, with the
/// same busy-poll window as the L3 workers ([`crate::dataplane::poll_loop`]).
fn run_worker(
    mut tx: Option<TxWorker>,
    mut rx: Option<RxWorker>,
    busy: Duration,
    stop: &AtomicBool,
) {
    let q = tx.as_ref().map(|w| w.port.queue.clone());
    let sock = rx.as_ref().map(|w| w.sock.clone());
    crate::dataplane::poll_loop(
        q.as_ref().map(|q| q.as_fd()),
        sock.as_ref().map(|s| s.as_fd()),
        busy,
        stop,
        |tx_ready, rx_ready| {
            let mut worked = false;
            if tx_ready {
                if let Some(w) = tx.as_mut() {
                    worked |= w.drain();
                }
            }
            if rx_ready {
                if let Some(w) = rx.as_mut() {
                    worked |= w.drain();
                }
            }
            worked
        },
    );
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

/// Writes the encapsulation header of `net` into `hdr[..ENCAP_LEN]`.
fn emit_encap(cfg: &L2NetworkConfig, hdr: &mut [u8]) {
    match cfg.backend {
        L2Backend::Vxlan => vxlan::Repr { vni: cfg.vni }.emit(hdr),
        L2Backend::Gre => gre::Repr {
            protocol: ether::ETHERTYPE_TEB,
            checksum: false,
            // NVGRE: VSID in the top 24 bits, FlowID 0 (as a Linux gretap with key VNI<<8).
            key: Some(cfg.vni << 8),
            seq: None,
        }
        .emit(hdr),
    }
}

/// The 802.1Q tag (TPID, then PCP/DEI 0 and `vid`) restored on a trunk.
fn vlan_tag(vid: u16) -> [u8; 4] {
    let [a, b] = ether::ETHERTYPE_VLAN.to_be_bytes();
    let [c, d] = vid.to_be_bytes();
    [a, b, c, d]
}

/// Writes a frame to a port: with the virtio header the device expects, and the VLAN tag
/// restored between the addresses and the EtherType on a trunk.
fn write_frame(q: &Queue, vnet: bool, vid: Option<u16>, frame: &[u8]) -> io::Result<usize> {
    const ZERO: [u8; virtio::LEN] = [0; virtio::LEN];
    let h: &[u8] = if vnet { &ZERO } else { &[] };
    match vid {
        None if vnet => q.write_vectored(&[IoSlice::new(h), IoSlice::new(frame)]),
        None => q.write(frame),
        Some(vid) => {
            let tag = vlan_tag(vid);
            q.write_vectored(&[
                IoSlice::new(h),
                IoSlice::new(&frame[..12]),
                IoSlice::new(&tag),
                IoSlice::new(&frame[12..]),
            ])
        }
    }
}

struct TxWorker {
    cfg: Config,
    port: Port,
    shared: Arc<Shared>,
    read_buf: Vec<u8>,
    seg_buf: Vec<u8>,
    arp_buf: [u8; 64],
    /// UDP GSO for the vxlan socket: on unless `--no-offload`, cleared if the kernel refuses.
    gso: AtomicBool,
}

impl TxWorker {
    fn new(cfg: Config, port: Port, shared: Arc<Shared>) -> Self {
        Self {
            gso: AtomicBool::new(cfg.gso),
            cfg,
            port,
            shared,
            read_buf: vec![0; HEADROOM + MAX_READ],
            seg_buf: vec![0; SEG_BUF],
            arp_buf: [0; 64],
        }
    }

    /// Forwards up to a batch of frames from the TAP; whether there was any.
    fn drain(&mut self) -> bool {
        let mut worked = false;
        for _ in 0..MAX_BATCH {
            let n = match self.port.queue.read(&mut self.read_buf[HEADROOM..]) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    self.shared.dropped(DropReason::IoError, 1);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    break;
                }
            };
            worked = true;
            self.forward(n);
        }
        worked
    }

    /// Forwards the `n` bytes just read at `read_buf[HEADROOM..]`.
    fn forward(&mut self, n: usize) {
        let sh = &*self.shared;
        let (mut hdr, mut start) = if self.cfg.vnet_hdr {
            match virtio::VirtioNetHdr::parse(&self.read_buf[HEADROOM..HEADROOM + n]) {
                Some(h) => (h, HEADROOM + virtio::LEN),
                None => return sh.dropped(DropReason::Truncated, 1),
            }
        } else {
            (virtio::VirtioNetHdr::default(), HEADROOM)
        };
        let end = HEADROOM + n;
        if end - start < ether::HEADER_LEN {
            return sh.dropped(DropReason::Truncated, 1);
        }
        let ethertype = |b: &[u8], at: usize| u16::from_be_bytes([b[at + 12], b[at + 13]]);
        let (net, vid) = match &self.port.kind {
            PortKind::Access { net } => (*net, None),
            PortKind::Trunk { vid_to_net } => {
                if ethertype(&self.read_buf, start) != ether::ETHERTYPE_VLAN
                    || end - start < ether::HEADER_LEN + 4
                {
                    return sh.dropped(DropReason::UnmappedVlan, 1);
                }
                let tci =
                    u16::from_be_bytes([self.read_buf[start + 14], self.read_buf[start + 15]]);
                let vid = tci & 0x0fff;
                let net = vid_to_net[vid as usize];
                if net == u16::MAX {
                    return sh.dropped(DropReason::UnmappedVlan, 1);
                }
                // Remove the tag: move the addresses over it.
                self.read_buf.copy_within(start..start + 12, start + 4);
                start += 4;
                hdr.csum_start = hdr.csum_start.saturating_sub(4);
                hdr.hdr_len = hdr.hdr_len.saturating_sub(4);
                (net, Some(vid))
            }
        };
        let network = &sh.nets[net as usize];
        let frame = &self.read_buf[start..end];
        let dst: [u8; 6] = frame[..6].try_into().unwrap_or([0; 6]);
        let et = ethertype(frame, 0);

        if network.cfg.arp_suppression && et == ether::ETHERTYPE_ARP {
            if let Some(len) = suppress_arp(sh, net, frame, &mut self.arp_buf) {
                if write_frame(
                    &self.port.queue,
                    self.cfg.vnet_hdr,
                    vid,
                    &self.arp_buf[..len],
                )
                .is_ok()
                {
                    bump(&network.stats.arp_suppressed, 1);
                }
                return;
            }
        }

        let members = network.members.load();
        let now = sh.now();
        let unicast_to = if dst[0] & 1 == 0 {
            sh.macs
                .lookup(fdb::mac_key(net, dst), now)
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
        let (sock, port) = match network.cfg.backend {
            L2Backend::Vxlan => {
                let ip_part = frame.get(ether::HEADER_LEN..).unwrap_or(&[]);
                let i = flow::hash(ip_part) as usize % self.cfg.vxlan_send.len().max(1);
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

        let frames: u64;
        if hdr.gso_kind() == virtio::GSO_NONE && !hdr.needs_csum() {
            // One frame as it is: encapsulate in place.
            emit_encap(&network.cfg, &mut self.read_buf[start - ENCAP_LEN..start]);
            let dgram = &self.read_buf[start - ENCAP_LEN..end];
            send_to_all(sock, dgram, 0, dsts, port, sh);
            frames = 1;
            bump(
                &network.stats.tx_bytes,
                (end - start) as u64 * dsts.len() as u64,
            );
        } else {
            // A super-frame (or a frame whose checksum is left to us): segment the IP
            // packet after the Ethernet header, then give every segment the encapsulation
            // header and a copy of the Ethernet header.
            if !matches!(et, ether::ETHERTYPE_IPV4 | ether::ETHERTYPE_IPV6) {
                return sh.dropped(DropReason::BadInner, 1);
            }
            let mut eth = [0u8; ether::HEADER_LEN];
            eth.copy_from_slice(&frame[..ether::HEADER_LEN]);
            hdr.csum_start = hdr.csum_start.saturating_sub(ether::HEADER_LEN as u16);
            hdr.hdr_len = hdr.hdr_len.saturating_sub(ether::HEADER_LEN as u16);
            let hl = ENCAP_LEN + ether::HEADER_LEN;
            let layout = match tso::segment(
                &hdr,
                &self.read_buf[start + ether::HEADER_LEN..end],
                hl,
                &mut self.seg_buf,
            ) {
                Ok(l) => l,
                Err(e) => return sh.dropped(e.drop_reason(), 1),
            };
            for i in 0..layout.count {
                let d = layout.datagram(i);
                emit_encap(
                    &network.cfg,
                    &mut self.seg_buf[d.start..d.start + ENCAP_LEN],
                );
                self.seg_buf[d.start + ENCAP_LEN..d.start + hl].copy_from_slice(&eth);
            }
            let gso = (network.cfg.backend == L2Backend::Vxlan).then_some(&self.gso);
            for dst in dsts {
                let dst = SocketAddrV4::new(*dst, port);
                let sent = send_layout(sock, &self.seg_buf, &layout, dst, gso);
                if sent.dropped > 0 {
                    sh.dropped(DropReason::IoError, sent.dropped);
                }
            }
            frames = layout.count as u64;
            let bytes = (layout.out_len() - ENCAP_LEN * layout.count) as u64;
            bump(&network.stats.tx_bytes, bytes * dsts.len() as u64);
        }
        if unicast_to.is_some() {
            bump(&network.stats.tx_unicast, frames);
        } else {
            bump(&network.stats.tx_flood, frames);
            bump(&network.stats.flood_copies, frames * dsts.len() as u64);
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

/// Sends one datagram to every address of `dsts` (head-end replication), in `sendmmsg`
/// batches.
fn send_to_all(
    sock: &UnderlaySocket,
    dgram: &[u8],
    segment: u16,
    dsts: &[Ipv4Addr],
    port: u16,
    sh: &Shared,
) {
    let mut msgs = [Msg {
        buf: dgram,
        dst: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        segment,
    }; MAX_BATCH];
    for chunk in dsts.chunks(MAX_BATCH) {
        for (m, ip) in msgs.iter_mut().zip(chunk) {
            m.dst = SocketAddrV4::new(*ip, port);
        }
        match sock.send_batch(&msgs[..chunk.len()]) {
            Ok(sent) if sent < chunk.len() => {
                sh.dropped(DropReason::IoError, (chunk.len() - sent) as u64)
            }
            Ok(_) => {}
            Err(_) => sh.dropped(DropReason::IoError, chunk.len() as u64),
        }
    }
}

struct RxWorker {
    cfg: Config,
    sock: Arc<UnderlaySocket>,
    backend: L2Backend,
    ports: Vec<Port>,
    deliver: Arc<Delivery>,
    shared: Arc<Shared>,
    batch: RecvBatch,
    /// TCP coalescing into super-frames (TAPs with a virtio header only).
    gro: Option<Gro>,
    /// Where partial checksums are finished on the plain path.
    scratch: Vec<u8>,
}

/// One coalescer for the worker: consecutive frames of one network with one Ethernet
/// header are coalesced; a change of either flushes first, so what leaves always carries
/// the header its segments arrived with.
struct Gro {
    coal: Coalescer,
    cur: Option<(u16, [u8; ether::HEADER_LEN])>,
}

impl Gro {
    fn flush(&mut self, sh: &Shared, ports: &[Port], deliver: &Delivery) {
        if let Some((net, eth)) = self.cur.take() {
            self.coal
                .flush(&mut |p| emit_coalesced(sh, ports, deliver, net, &eth, p));
        }
    }

    /// Offers a frame: IP frames are coalesced, anything else leaves after what is held.
    fn push(&mut self, sh: &Shared, ports: &[Port], deliver: &Delivery, net: u16, frame: &[u8]) {
        let et = u16::from_be_bytes([frame[12], frame[13]]);
        if !matches!(et, ether::ETHERTYPE_IPV4 | ether::ETHERTYPE_IPV6) {
            self.flush(sh, ports, deliver);
            return deliver_frame(sh, ports, deliver, true, net, frame);
        }
        let mut eth = [0u8; ether::HEADER_LEN];
        eth.copy_from_slice(&frame[..ether::HEADER_LEN]);
        if self.cur != Some((net, eth)) {
            self.flush(sh, ports, deliver);
            self.cur = Some((net, eth));
        }
        let st = &sh.nets[net as usize].stats;
        bump(&st.rx_frames, 1);
        bump(&st.rx_bytes, frame.len() as u64);
        self.coal.push(&frame[ether::HEADER_LEN..], &mut |p| {
            emit_coalesced(sh, ports, deliver, net, &eth, p)
        });
    }
}

/// Writes what the coalescer emitted (virtio header + IP packet) as a frame: the Ethernet
/// header (and VLAN tag on a trunk) goes back in front, and the virtio offsets move by
/// their length.
fn emit_coalesced(
    sh: &Shared,
    ports: &[Port],
    deliver: &Delivery,
    net: u16,
    eth: &[u8; ether::HEADER_LEN],
    p: &[u8],
) {
    let Some(h) = virtio::VirtioNetHdr::parse(p) else {
        return sh.dropped(DropReason::Truncated, 1);
    };
    write_parts_with(sh, ports, deliver, net, eth, &p[virtio::LEN..], h);
}

impl RxWorker {
    fn new(
        cfg: Config,
        sock: Arc<UnderlaySocket>,
        backend: L2Backend,
        ports: Vec<Port>,
        deliver: Arc<Delivery>,
        shared: Arc<Shared>,
    ) -> Self {
        let cfg_vnet = cfg.vnet_hdr;
        Self {
            cfg,
            sock,
            backend,
            ports,
            deliver,
            shared,
            // A kernel VXLAN peer over veth hands over whole tunnel-GSO super-frames
            // (up to 64 KiB) even without UDP GRO: every buffer must hold one.
            batch: RecvBatch::new(16, 65536 + 256),
            gro: cfg_vnet.then(|| Gro {
                coal: Coalescer::new(),
                cur: None,
            }),
            scratch: vec![0; SEG_BUF],
        }
    }

    /// Receives and delivers up to 16 batches; whether there was anything.
    fn drain(&mut self) -> bool {
        let mut worked = false;
        {
            for _ in 0..16 {
                let n = match self.sock.recv_batch(&mut self.batch) {
                    Ok(n) => n,
                    Err(e) if would_block(&e) => break,
                    Err(_) => {
                        self.shared.dropped(DropReason::IoError, 1);
                        break;
                    }
                };
                worked = true;
                let now = self.shared.now();
                let RxWorker {
                    cfg,
                    sock,
                    backend,
                    ports,
                    deliver,
                    shared,
                    batch,
                    gro,
                    scratch,
                } = self;
                for i in 0..n {
                    let (data, seg, from) = batch.get(i);
                    // With UDP GRO the kernel hands over runs of datagrams, `seg` bytes
                    // each; a kernel VXLAN peer's whole tunnel-GSO frame comes as one
                    // buffer longer than `seg` whose inner packet covers it: keep it whole.
                    let chunk = if seg == 0 || (data.len() > seg && covers_whole(data)) {
                        data.len().max(1)
                    } else {
                        seg
                    };
                    for d in data.chunks(chunk) {
                        let inb = match classify(shared, *backend, d, *from.ip(), sock.is_raw()) {
                            Ok(Some(i)) => i,
                            Ok(None) => continue,
                            Err(r) => {
                                shared.dropped(r, 1);
                                continue;
                            }
                        };
                        learn(shared, &inb, now);
                        let mtu = shared.nets[inb.net as usize].mtu as usize;
                        let (frame, partial) = trim_and_check(inb.frame, mtu);
                        match (gro.as_mut(), partial) {
                            (Some(g), None) => g.push(shared, ports, deliver, inb.net, frame),
                            (None, None) => {
                                deliver_frame(shared, ports, deliver, cfg.vnet_hdr, inb.net, frame)
                            }
                            (Some(g), Some(h)) => {
                                // Keep the flow's order: what is held leaves first.
                                g.flush(shared, ports, deliver);
                                write_with_hdr(shared, ports, deliver, inb.net, frame, h);
                            }
                            (None, Some(h)) => finish_and_deliver(
                                shared, ports, deliver, inb.net, frame, &h, scratch,
                            ),
                        }
                    }
                }
                if let Some(g) = gro.as_mut() {
                    g.flush(shared, ports, deliver);
                }
            }
        }
        worked
    }
}

/// Whether a received VXLAN datagram holds exactly one Ethernet frame whose IPv4/IPv6
/// packet covers the rest of the buffer (a peer kernel's whole tunnel-GSO frame).
fn covers_whole(data: &[u8]) -> bool {
    const OFF: usize = vxlan::HEADER_LEN + ether::HEADER_LEN;
    let (Some(et), Some(ip)) = (data.get(OFF - 2..OFF), data.get(OFF..)) else {
        return false;
    };
    let version = match et {
        [0x08, 0x00] => 4,
        [0x86, 0xdd] => 6,
        _ => return false,
    };
    ip.first().map(|b| b >> 4) == Some(version) && crate::wire::ip::len_covers(ip)
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
    let (net, frame) = match backend {
        L2Backend::Vxlan => {
            let v = vxlan::Packet::new_checked(payload)?;
            let vni = vxlan::Repr::parse(&v)?.vni;
            let net = sh.by_vni(backend, vni).ok_or(DropReason::WrongVni)?;
            (net, &payload[vxlan::HEADER_LEN..])
        }
        L2Backend::Gre => {
            let g = gre::Packet::new_checked(payload)?;
            if g.protocol() != ether::ETHERTYPE_TEB {
                return Ok(None);
            }
            let r = gre::Repr::parse(&g)?;
            let key = r.key.ok_or(DropReason::WrongVni)?;
            let net = sh.by_vni(backend, key >> 8).ok_or(DropReason::WrongVni)?;
            (net, &payload[g.header_len()..])
        }
    };
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
pub fn learn(sh: &Shared, inb: &Inbound<'_>, now: u16) {
    let network = &sh.nets[inb.net as usize];
    let src: [u8; 6] = inb.frame[6..12].try_into().unwrap_or([0; 6]);
    match sh.macs.learn(
        fdb::mac_key(inb.net, src),
        u64::from(u32::from(inb.sender)),
        now,
    ) {
        Learned::New => bump(&network.stats.learned, 1),
        Learned::Moved(_) => bump(&network.stats.moves, 1),
        Learned::Refreshed => {}
        Learned::Full => bump(&network.stats.fdb_full, 1),
    }
    let et = u16::from_be_bytes([inb.frame[12], inb.frame[13]]);
    if network.cfg.arp_suppression && et == ether::ETHERTYPE_ARP {
        if let Some(r) = inb
            .frame
            .get(ether::HEADER_LEN..)
            .and_then(|b| arp::Packet::new_checked(b).ok())
            .and_then(|p| arp::Repr::parse(&p).ok())
        {
            if r.sender_mac.0 == src && !r.sender_ip.is_unspecified() {
                sh.ips.learn(
                    fdb::ip_key(inb.net, r.sender_ip.octets()),
                    fdb::mac_payload(src),
                    now,
                );
            }
        }
    }
}

/// Writes a frame whose checksum the kernel must finish (virtio header `h`, offsets
/// relative to the IP packet), counted as received.
fn write_with_hdr(
    sh: &Shared,
    ports: &[Port],
    deliver: &Delivery,
    net: u16,
    frame: &[u8],
    h: virtio::VirtioNetHdr,
) {
    let mut eth = [0u8; ether::HEADER_LEN];
    eth.copy_from_slice(&frame[..ether::HEADER_LEN]);
    let st = &sh.nets[net as usize].stats;
    bump(&st.rx_frames, 1);
    bump(&st.rx_bytes, frame.len() as u64);
    write_parts_with(
        sh,
        ports,
        deliver,
        net,
        &eth,
        &frame[ether::HEADER_LEN..],
        h,
    );
}

/// Writes virtio header + Ethernet header (+ tag) + IP packet, moving the virtio offsets
/// (relative to the IP packet) by what goes in front of it.
fn write_parts_with(
    sh: &Shared,
    ports: &[Port],
    deliver: &Delivery,
    net: u16,
    eth: &[u8; ether::HEADER_LEN],
    ip: &[u8],
    mut h: virtio::VirtioNetHdr,
) {
    let Some((pi, vid)) = deliver[net as usize] else {
        return sh.dropped(DropReason::NoRoute, 1);
    };
    let shift = (ether::HEADER_LEN + if vid.is_some() { 4 } else { 0 }) as u16;
    if h.needs_csum() {
        h.csum_start += shift;
    }
    if h.gso_kind() != virtio::GSO_NONE {
        h.hdr_len += shift;
    }
    let mut hb = [0u8; virtio::LEN];
    h.emit(&mut hb);
    let q = &ports[pi].queue;
    let res = match vid {
        None => q.write_vectored(&[IoSlice::new(&hb), IoSlice::new(eth), IoSlice::new(ip)]),
        Some(vid) => {
            let tag = vlan_tag(vid);
            q.write_vectored(&[
                IoSlice::new(&hb),
                IoSlice::new(&eth[..12]),
                IoSlice::new(&tag),
                IoSlice::new(&eth[12..]),
                IoSlice::new(ip),
            ])
        }
    };
    if res.is_err() {
        sh.dropped(DropReason::IoError, 1);
    }
}

/// Trims Ethernet padding after an IPv4 packet and recognises a transport checksum left
/// partial by a sending kernel with checksum offload (a kernel VXLAN peer over veth): such
/// a frame gets the virtio header that makes our kernel finish it. A whole TCP
/// super-frame (longer than the port's `mtu`, as a kernel peer's tunnel GSO hands it over)
/// also gets a segment size that fits the MTU.
pub fn trim_and_check(frame: &[u8], mtu: usize) -> (&[u8], Option<virtio::VirtioNetHdr>) {
    let et = u16::from_be_bytes([frame[12], frame[13]]);
    if et != ether::ETHERTYPE_IPV4 || frame.len() < ether::HEADER_LEN + 20 {
        return (frame, None);
    }
    let ip = &frame[ether::HEADER_LEN..];
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let frame = if total >= 20 && total < ip.len() {
        &frame[..ether::HEADER_LEN + total]
    } else {
        frame
    };
    let ip = &frame[ether::HEADER_LEN..];
    let gso = if ip.len() > mtu && ip[9] == 6 {
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let tcp = ip
            .get(ihl + 12)
            .map(|b| (b >> 4) as usize * 4)
            .unwrap_or(20);
        mtu.saturating_sub(ihl + tcp).max(1)
    } else {
        0
    };
    (frame, crate::offload::partial_checksum_hdr(ip, gso))
}

/// Plain path: finishes a partial checksum (segmenting a super-frame) in `scratch` and
/// writes the frame(s).
fn finish_and_deliver(
    sh: &Shared,
    ports: &[Port],
    deliver: &Delivery,
    net: u16,
    frame: &[u8],
    h: &virtio::VirtioNetHdr,
    scratch: &mut [u8],
) {
    const EH: usize = ether::HEADER_LEN;
    match tso::segment(h, &frame[EH..], EH, scratch) {
        Ok(l) => {
            for i in 0..l.count {
                let d = l.datagram(i);
                scratch[d.start..d.start + EH].copy_from_slice(&frame[..EH]);
                deliver_frame(sh, ports, deliver, false, net, &scratch[d]);
            }
        }
        Err(e) => sh.dropped(e.drop_reason(), 1),
    }
}

/// Writes one accepted frame into its network's port.
fn deliver_frame(
    sh: &Shared,
    ports: &[Port],
    deliver: &Delivery,
    vnet: bool,
    net: u16,
    frame: &[u8],
) {
    let Some((pi, vid)) = deliver[net as usize] else {
        return sh.dropped(DropReason::NoRoute, 1);
    };
    match write_frame(&ports[pi].queue, vnet, vid, frame) {
        Ok(_) => {
            let st = &sh.nets[net as usize].stats;
            bump(&st.rx_frames, 1);
            bump(&st.rx_bytes, frame.len() as u64);
        }
        Err(_) => sh.dropped(DropReason::IoError, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            sh.macs.lookup(fdb::mac_key(0, M1), now),
            Some(u64::from(u32::from(PEER)))
        );
        assert_eq!(sh.macs.lookup(fdb::mac_key(1, M1), 1), None);
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
        assert_eq!(sh.macs.lookup(fdb::mac_key(0, M1), now), None);
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
        let d = delivery(kinds.iter(), 3);
        assert_eq!(
            d,
            vec![Some((0, Some(10))), Some((0, Some(20))), Some((1, None))]
        );
    }
}
