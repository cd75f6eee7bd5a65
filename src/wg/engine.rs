//! The WireGuard protocol engine of the wireguard backend, pure: a peer table (public key →
//! boringtun `Tunn`, AllowedIPs, endpoint, counters) built from leases, the routing of
//! incoming datagrams to a peer, encryption toward the peer owning an inner destination,
//! the AllowedIPs check after decryption, and the timers. Bytes in, bytes out through
//! [`Io`]; no socket, no device. The segments of one super-packet are sealed together
//! ([`Engine::seal`]) into datagrams at one stride, the buffer one UDP GSO send takes.
//!
//! The protocol itself (Noise_IKpsk2 handshakes, transport keys, the replay window, rekey
//! and reject timers, keepalives, cookie replies under load) is boringtun's `noise` module.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::offload::tso::Layout;

/// Handshake messages per second (all peers together) above which initiations must carry
/// a valid cookie (WireGuard's "under load"), as boringtun's own device sets it.
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// The largest WireGuard message overhead: a data message adds 32 bytes; a handshake
/// initiation is 148 bytes. Output buffers need `inner + OVERHEAD` and at least 148.
pub const OVERHEAD: usize = 32;

/// The first byte of a transport data message (type 4, little-endian).
const DATA_MESSAGE: u8 = 4;
/// The largest message boringtun may write for an outgoing packet (a handshake initiation):
/// what an output buffer needs beyond the last datagram of [`Engine::seal`].
pub const HANDSHAKE_INIT_LEN: usize = 148;

/// Why an incoming datagram or an outgoing packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum WgDrop {
    /// Not a WireGuard message of a valid type and length.
    Malformed = 0,
    /// A handshake whose MAC or encryption does not verify, or a data message whose
    /// authentication tag does not (tampered, or keys that do not match).
    BadMac,
    /// A data message counter already seen or too old for the replay window.
    Replay,
    /// A handshake initiation from a key that holds no current lease.
    UnknownKey,
    /// A message for a session index no peer of ours has.
    UnknownIndex,
    /// A handshake refused because we are under load (a cookie reply is sent instead when
    /// the sender's address is known).
    UnderLoad,
    /// Decrypted, but the inner source lies outside the sender's AllowedIPs.
    NotAllowed,
    /// An outgoing packet whose destination no peer's AllowedIPs hold.
    NoRoute,
    /// Anything else boringtun refused (wrong state, expired connection).
    Other,
}

impl WgDrop {
    /// Number of reasons.
    pub const COUNT: usize = 9;
    /// Every reason in index order.
    pub const ALL: [WgDrop; Self::COUNT] = [
        WgDrop::Malformed,
        WgDrop::BadMac,
        WgDrop::Replay,
        WgDrop::UnknownKey,
        WgDrop::UnknownIndex,
        WgDrop::UnderLoad,
        WgDrop::NotAllowed,
        WgDrop::NoRoute,
        WgDrop::Other,
    ];

    /// The label used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WgDrop::Malformed => "malformed",
            WgDrop::BadMac => "bad_mac",
            WgDrop::Replay => "replay",
            WgDrop::UnknownKey => "unknown_key",
            WgDrop::UnknownIndex => "unknown_index",
            WgDrop::UnderLoad => "under_load",
            WgDrop::NotAllowed => "not_allowed",
            WgDrop::NoRoute => "no_route",
            WgDrop::Other => "other",
        }
    }

    fn of(e: &WireGuardError) -> WgDrop {
        match e {
            WireGuardError::InvalidPacket | WireGuardError::IncorrectPacketLength => {
                WgDrop::Malformed
            }
            WireGuardError::InvalidMac
            | WireGuardError::InvalidAeadTag
            | WireGuardError::WrongKey
            | WireGuardError::InvalidTai64nTimestamp
            | WireGuardError::WrongTai64nTimestamp => WgDrop::BadMac,
            WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => WgDrop::Replay,
            WireGuardError::WrongIndex | WireGuardError::NoCurrentSession => WgDrop::UnknownIndex,
            WireGuardError::UnderLoad => WgDrop::UnderLoad,
            _ => WgDrop::Other,
        }
    }
}

/// The engine's counters, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct Stats {
    /// Packets decrypted and handed to the device.
    pub rx_packets: AtomicU64,
    /// Packets encrypted and sent to a peer.
    pub tx_packets: AtomicU64,
    /// Drops by [`WgDrop`] index.
    pub drops: [AtomicU64; WgDrop::COUNT],
    /// Handshakes completed, as seen at the timer turn after each.
    pub handshakes: AtomicU64,
    /// Each peer's figures at the last timer turn (written by [`Engine::tick`], never per
    /// packet).
    pub peers: Mutex<Vec<PeerFigures>>,
}

/// One peer's figures, as boringtun counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFigures {
    pub public_key: [u8; 32],
    pub endpoint: SocketAddr,
    /// Time since its last completed handshake; `None` before the first.
    pub last_handshake: Option<Duration>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

impl Stats {
    fn count_drop(&self, why: WgDrop) {
        self.count_drops(why, 1);
    }

    fn count_drops(&self, why: WgDrop, n: usize) {
        self.drops[why as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The drops of one reason so far.
    pub fn dropped(&self, why: WgDrop) -> u64 {
        self.drops[why as usize].load(Ordering::Relaxed)
    }
}

/// A peer as the leases describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its Curve25519 public key.
    pub public_key: [u8; 32],
    /// Where its datagrams go (PublicIP:Port).
    pub endpoint: SocketAddr,
    /// Its lease's subnets: what it may send from, and what we send to it.
    pub allowed: Vec<IpNet>,
}

/// Where the engine's output goes: datagrams to the underlay, packets to the device.
pub trait Io {
    /// Send `datagram` to `to` over UDP.
    fn send(&mut self, to: SocketAddr, datagram: &[u8]);
    /// Write the decrypted, checked packet `packet` to the device.
    fn deliver(&mut self, packet: &[u8]);
}

struct Peer {
    spec: PeerSpec,
    /// The session index boringtun was given (its messages carry `index << 8 | session`).
    index: u32,
    tunn: Tunn,
    /// Whether its timers run ([`Engine::tick`] turns them): from its first message (or
    /// from the start, with a persistent keepalive) until boringtun says the connection
    /// expired. A peer never contacted, or expired, has no timer due.
    ticking: bool,
}

impl Peer {
    fn figures(&self) -> PeerFigures {
        let (last_handshake, tx, rx, _, _) = self.tunn.stats();
        PeerFigures {
            public_key: self.spec.public_key,
            endpoint: self.spec.endpoint,
            last_handshake,
            tx_bytes: tx as u64,
            rx_bytes: rx as u64,
        }
    }

    fn allows(&self, src: IpAddr) -> bool {
        self.spec.allowed.iter().any(|n| n.contains(&src))
    }
}

/// Our identity and the options every peer shares.
#[derive(Clone)]
pub struct Identity {
    pub secret: StaticSecret,
    pub psk: Option<[u8; 32]>,
    pub keepalive: Option<u16>,
}

impl Identity {
    /// Our public key, as our lease publishes it.
    pub fn public_key(&self) -> [u8; 32] {
        *boringtun::x25519::PublicKey::from(&self.secret).as_bytes()
    }
}

/// Shows the public key only: the secret and the PSK never reach a log.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field(
                "public_key",
                &crate::control::lease::encode_key(&self.public_key()),
            )
            .field("psk", &self.psk.map(|_| "<set>"))
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

/// The peer table and the protocol state of every peer.
pub struct Engine {
    id: Identity,
    public: PublicKey,
    limiter: Arc<RateLimiter>,
    peers: Vec<Peer>,
    by_key: HashMap<[u8; 32], usize>,
    by_index: HashMap<u32, usize>,
    /// Every peer's AllowedIPs network (the first peer listing one wins), and the prefix
    /// lengths present, longest first: routing is one hash probe per length.
    by_net: HashMap<IpNet, usize>,
    prefix_lens: Vec<u8>,
    /// Peers dropped from the list, with when: a key listed again within [`DORMANT_FOR`]
    /// comes back with its sessions. Not routable, not reachable by index.
    dormant: Vec<(Peer, Instant)>,
    next_index: u32,
    /// Whether a timer turn is due soon ([`Engine::timers_running`]).
    timers_on: bool,
    pub stats: Arc<Stats>,
}

/// How long a peer no longer listed keeps its sessions (boringtun's reject-after time: a
/// session is useless after it). A node whose lease is deleted and re-acquired under
/// another subnet is dropped and listed again moments apart; without this its peers
/// forgot its sessions while it still sent on them, and its traffic was dropped
/// (unknown index) until its keepalive timeout forced a new handshake (~15 s).
const DORMANT_FOR: Duration = Duration::from_secs(180);

impl Engine {
    /// An engine with no peer yet.
    pub fn new(id: Identity) -> Engine {
        Engine::with_stats(id, &Arc::default())
    }

    /// An engine with no peer yet that counts into `stats` (a thread restarted after its
    /// predecessor died goes on counting where it left off).
    pub fn with_stats(id: Identity, stats: &Arc<Stats>) -> Engine {
        let public = PublicKey::from(&id.secret);
        Engine {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            public,
            id,
            peers: Vec::new(),
            by_key: HashMap::new(),
            by_index: HashMap::new(),
            by_net: HashMap::new(),
            prefix_lens: Vec::new(),
            dormant: Vec::new(),
            next_index: 1,
            timers_on: false,
            stats: stats.clone(),
        }
    }

    /// Our public key.
    pub fn public_key(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }

    /// The number of peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Makes the peer table exactly `specs` (our own key among them is skipped): a peer
    /// whose key stays keeps its sessions, with its AllowedIPs and endpoint updated; a key
    /// no longer listed stops being a peer at once, its sessions kept aside for
    /// [`DORMANT_FOR`] in case it is listed again.
    pub fn set_peers(&mut self, specs: &[PeerSpec]) {
        let now = Instant::now();
        self.dormant.retain(|(_, since)| now < *since + DORMANT_FOR);
        let mut old: HashMap<[u8; 32], Peer> = std::mem::take(&mut self.peers)
            .into_iter()
            .map(|p| (p.spec.public_key, p))
            .collect();
        for spec in specs {
            if spec.public_key == self.public_key() || self.by_key_in(spec) {
                continue;
            }
            let peer = match old.remove(&spec.public_key).or_else(|| self.wake(spec)) {
                Some(mut p) => {
                    p.spec = spec.clone();
                    p
                }
                None => self.new_peer(spec.clone()),
            };
            self.peers.push(peer);
        }
        self.dormant.extend(old.into_values().map(|p| (p, now)));
        self.reindex();
        self.rebuild_figures();
        self.timers_on |= self.peers.iter().any(|p| p.ticking);
    }

    /// The dormant peer with `spec`'s key, taken out of the dormant list.
    fn wake(&mut self, spec: &PeerSpec) -> Option<Peer> {
        let at = self
            .dormant
            .iter()
            .position(|(p, _)| p.spec.public_key == spec.public_key)?;
        Some(self.dormant.swap_remove(at).0)
    }

    fn by_key_in(&self, spec: &PeerSpec) -> bool {
        self.peers
            .iter()
            .any(|p| p.spec.public_key == spec.public_key)
    }

    fn new_peer(&mut self, spec: PeerSpec) -> Peer {
        let index = self.next_index;
        // 24 bits: boringtun keeps the low 8 bits of an index for its session ring.
        self.next_index = (self.next_index % 0x00ff_ffff) + 1;
        let tunn = Tunn::new(
            self.id.secret.clone(),
            PublicKey::from(spec.public_key),
            self.id.psk,
            self.id.keepalive,
            index,
            None,
        );
        Peer {
            spec,
            index,
            tunn,
            // boringtun sends persistent keepalives (and the handshakes they need) on its
            // own clock, from the start.
            ticking: self.id.keepalive.is_some_and(|k| k > 0),
        }
    }

    fn reindex(&mut self) {
        self.by_key.clear();
        self.by_index.clear();
        self.by_net.clear();
        self.prefix_lens.clear();
        for (i, p) in self.peers.iter().enumerate() {
            self.by_key.insert(p.spec.public_key, i);
            self.by_index.insert(p.index, i);
            for n in &p.spec.allowed {
                self.by_net.entry(n.trunc()).or_insert(i);
                self.prefix_lens.push(n.prefix_len());
            }
        }
        self.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        self.prefix_lens.dedup();
    }

    /// The peer whose AllowedIPs hold `dst`, the longest prefix winning: one hash probe
    /// per prefix length in use (flannel's leases all have one), whatever the peer count.
    fn route(&self, dst: IpAddr) -> Option<usize> {
        self.prefix_lens.iter().find_map(|&len| {
            let net = IpNet::new(dst, len).ok()?.trunc();
            self.by_net.get(&net).copied()
        })
    }

    /// Encrypts the IP packet `packet` (from the device) toward the peer owning its
    /// destination. Without a session yet, boringtun queues it and a handshake initiation
    /// goes out instead. `out` must hold `packet.len() + OVERHEAD` and at least 148 bytes.
    pub fn send(&mut self, packet: &[u8], out: &mut [u8], io: &mut impl Io) {
        let Some(i) = Tunn::dst_address(packet).and_then(|d| self.route(d)) else {
            self.stats.count_drop(WgDrop::NoRoute);
            return;
        };
        self.wake_timers(i, out, io);
        let peer = &mut self.peers[i];
        match peer.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(b) => {
                if b.first() == Some(&DATA_MESSAGE) {
                    self.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                }
                io.send(peer.spec.endpoint, b);
            }
            TunnResult::Err(e) => self.stats.count_drop(WgDrop::of(&e)),
            _ => {}
        }
    }

    /// Encrypts the segments of one super-packet, `segs[lay.packet(i)]` for every `i` (as
    /// [`crate::offload::tso::segment`] laid them out), toward the peer owning the first
    /// one's destination. Datagram `i` lands at `out[sealed.datagram(i)]`, `sealed` being
    /// `lay` with [`OVERHEAD`] bytes of headroom and no gap: one stride, as a UDP GSO send
    /// takes them. Returns the peer's endpoint and `sealed` when every segment became a data
    /// message. `None` otherwise: no route or no room (counted), or no session yet
    /// (boringtun queued the segments and its handshake initiation went out through `io`).
    pub fn seal(
        &mut self,
        segs: &[u8],
        lay: &Layout,
        out: &mut [u8],
        io: &mut impl Io,
    ) -> Option<(SocketAddr, Layout)> {
        let sealed = sealed_layout(lay);
        let first = segs.get(lay.packet(0))?;
        let Some(i) = Tunn::dst_address(first).and_then(|d| self.route(d)) else {
            self.stats.count_drop(WgDrop::NoRoute);
            return None;
        };
        if out.len() < sealed.out_len() + HANDSHAKE_INIT_LEN {
            self.stats.count_drops(WgDrop::Other, lay.count);
            return None;
        }
        self.wake_timers(i, out, io);
        let peer = &mut self.peers[i];
        let mut data = 0;
        for k in 0..lay.count {
            let at = sealed.datagram(k).start;
            match peer.tunn.encapsulate(&segs[lay.packet(k)], &mut out[at..]) {
                TunnResult::WriteToNetwork(b) if b.first() == Some(&DATA_MESSAGE) => data += 1,
                TunnResult::WriteToNetwork(b) => io.send(peer.spec.endpoint, b),
                TunnResult::Err(e) => self.stats.count_drop(WgDrop::of(&e)),
                _ => {}
            }
        }
        if data != lay.count {
            // A session cannot appear or vanish between two segments; were it to, the
            // segments sealed are not sent.
            self.stats.count_drops(WgDrop::Other, data);
            return None;
        }
        self.stats
            .tx_packets
            .fetch_add(data as u64, Ordering::Relaxed);
        Some((peer.spec.endpoint, sealed))
    }

    /// Handles one datagram from `from`: finds its peer (an initiation by the key it
    /// carries, other messages by their receiver index), lets boringtun verify and decrypt
    /// it, sends what the protocol answers, and delivers a decrypted packet only when its
    /// source lies inside the sender's AllowedIPs. `out` must be as large as the datagram
    /// and at least 148 bytes.
    pub fn receive(&mut self, from: SocketAddr, datagram: &[u8], out: &mut [u8], io: &mut impl Io) {
        if !self.timers_on {
            // No timer turn ran lately to reset the handshake count: do it now, and run
            // one turn after this to reset it again.
            self.limiter.reset_count();
            self.timers_on = true;
        }
        let packet = match self.limiter.verify_packet(Some(from.ip()), datagram, out) {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                self.stats.count_drop(WgDrop::UnderLoad);
                io.send(from, cookie);
                return;
            }
            Err(TunnResult::Err(e)) => return self.stats.count_drop(WgDrop::of(&e)),
            Err(_) => return self.stats.count_drop(WgDrop::Other),
        };
        let peer = match packet {
            Packet::HandshakeInit(ref p) => {
                match parse_handshake_anon(&self.id.secret, &self.public, p) {
                    Ok(h) => self.by_key.get(&h.peer_static_public).copied(),
                    Err(e) => return self.stats.count_drop(WgDrop::of(&e)),
                }
                .ok_or(WgDrop::UnknownKey)
            }
            Packet::HandshakeResponse(ref p) => self.by_receiver(p.receiver_idx),
            Packet::PacketCookieReply(ref p) => self.by_receiver(p.receiver_idx),
            Packet::PacketData(ref p) => self.by_receiver(p.receiver_idx),
        };
        match peer {
            Ok(i) => self.decapsulate(i, from, datagram, out, io),
            Err(why) => self.stats.count_drop(why),
        }
    }

    fn by_receiver(&self, receiver: u32) -> Result<usize, WgDrop> {
        self.by_index
            .get(&(receiver >> 8))
            .copied()
            .ok_or(WgDrop::UnknownIndex)
    }

    fn decapsulate(
        &mut self,
        i: usize,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        io: &mut impl Io,
    ) {
        self.wake_timers(i, out, io);
        let stats = &self.stats;
        let peer = &mut self.peers[i];
        match peer.tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::Done => {}
            TunnResult::Err(e) => return stats.count_drop(WgDrop::of(&e)),
            TunnResult::WriteToNetwork(b) => {
                io.send(from, b);
                // Packets queued while the handshake ran go out now.
                while let TunnResult::WriteToNetwork(b) = peer.tunn.decapsulate(None, &[], out) {
                    io.send(from, b);
                    stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                }
            }
            TunnResult::WriteToTunnelV4(b, src) => deliver(peer, stats, b, src.into(), io),
            TunnResult::WriteToTunnelV6(b, src) => deliver(peer, stats, b, src.into(), io),
        }
        // Authenticated: the peer is where this came from (WireGuard's roaming).
        peer.spec.endpoint = from;
    }

    /// Runs the timers of every peer whose timers run (handshake retries, rekeying,
    /// keepalives, expiry) and sends what they ask for. Call it every 100–250 ms while
    /// [`Self::timers_running`].
    pub fn tick(&mut self, out: &mut [u8], io: &mut impl Io) {
        self.limiter.reset_count();
        let mut on = false;
        for p in self.peers.iter_mut().filter(|p| p.ticking) {
            p.ticking = run_timers(p, &self.stats, out, io);
            on |= p.ticking;
        }
        self.timers_on = on;
        self.publish_figures();
    }

    /// Whether timer turns ([`Self::tick`]) are due: some peer's timers run, or a datagram
    /// came since the last turn (turns reset the handshake rate limit's count). Otherwise
    /// no turn is needed until a packet or a datagram comes.
    pub fn timers_running(&self) -> bool {
        self.timers_on
    }

    /// Starts peer `i`'s timers before it sends or receives anything. boringtun stamps
    /// its events with the time of the last timer turn, so a turn runs first: one stamped
    /// with a turn minutes old would expire the new session at the next.
    fn wake_timers(&mut self, i: usize, out: &mut [u8], io: &mut impl Io) {
        let p = &mut self.peers[i];
        if !p.ticking {
            run_timers(p, &self.stats, out, io);
            p.ticking = true;
            self.timers_on = true;
        }
    }

    /// Lays [`Stats::peers`] out for the current peers, each figure carried over by key
    /// (when the peers change, so that a timer turn allocates nothing).
    fn rebuild_figures(&self) {
        let Ok(mut last) = self.stats.peers.lock() else {
            return;
        };
        let old = std::mem::take(&mut *last);
        *last = self
            .peers
            .iter()
            .map(|p| {
                old.iter()
                    .find(|f| f.public_key == p.spec.public_key)
                    .cloned()
                    .unwrap_or_else(|| PeerFigures {
                        last_handshake: None,
                        ..p.figures()
                    })
            })
            .collect();
    }

    /// Updates [`Stats::peers`] in place to each peer's figures now, counting the
    /// handshakes completed since the last turn (a peer whose last handshake is more recent).
    fn publish_figures(&self) {
        let Ok(mut last) = self.stats.peers.lock() else {
            return;
        };
        let mut new = 0;
        for (f, p) in last.iter_mut().zip(&self.peers) {
            let now = p.figures();
            new += match (now.last_handshake, f.last_handshake) {
                (Some(n), Some(b)) => u64::from(n < b),
                (Some(_), None) => 1,
                (None, _) => 0,
            };
            *f = now;
        }
        self.stats.handshakes.fetch_add(new, Ordering::Relaxed);
    }
}

/// Runs peer `p`'s timers once and sends what they ask for; returns whether they keep
/// running (not once boringtun says the connection expired: nothing is due until the peer
/// sends or receives again).
fn run_timers(p: &mut Peer, stats: &Stats, out: &mut [u8], io: &mut impl Io) -> bool {
    match p.tunn.update_timers(out) {
        TunnResult::WriteToNetwork(b) => io.send(p.spec.endpoint, b),
        TunnResult::Err(WireGuardError::ConnectionExpired) => return false,
        TunnResult::Err(e) => stats.count_drop(WgDrop::of(&e)),
        _ => {}
    }
    true
}

/// Where [`Engine::seal`] puts the data messages of segments laid out as `lay`: each
/// segment grows by [`OVERHEAD`] (16 bytes of header in front, 16 of tag behind; boringtun
/// does not pad), so equal segments stay equal datagrams, one stride apart. Only its
/// `datagram(i)` ranges are meaningful (a data message has no headroom of its own).
pub fn sealed_layout(lay: &Layout) -> Layout {
    Layout {
        headroom: OVERHEAD,
        stride: OVERHEAD + lay.seg_len,
        ..*lay
    }
}

fn deliver(peer: &Peer, stats: &Stats, packet: &[u8], src: IpAddr, io: &mut impl Io) {
    if peer.allows(src) {
        stats.rx_packets.fetch_add(1, Ordering::Relaxed);
        io.deliver(packet);
    } else {
        stats.count_drop(WgDrop::NotAllowed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        sent: Vec<(SocketAddr, Vec<u8>)>,
        delivered: Vec<Vec<u8>>,
    }

    impl Io for Rec {
        fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
            self.sent.push((to, datagram.to_vec()));
        }
        fn deliver(&mut self, packet: &[u8]) {
            self.delivered.push(packet.to_vec());
        }
    }

    struct Node {
        engine: Engine,
        addr: SocketAddr,
        io: Rec,
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn node(secret: [u8; 32], addr: &str, psk: Option<[u8; 32]>) -> Node {
        Node {
            engine: Engine::new(Identity {
                secret: StaticSecret::from(secret),
                psk,
                keepalive: None,
            }),
            addr: sock(addr),
            io: Rec::default(),
        }
    }

    fn spec(n: &Node, nets: &[&str]) -> PeerSpec {
        PeerSpec {
            public_key: n.engine.public_key(),
            endpoint: n.addr,
            allowed: nets.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    const A_NETS: [&str; 2] = ["10.244.1.0/24", "fd00:1::/64"];
    const B_NETS: [&str; 2] = ["10.244.2.0/24", "fd00:2::/64"];

    /// A and B, each the other's peer.
    fn pair(psk: Option<[u8; 32]>) -> (Node, Node) {
        let mut a = node([1; 32], "192.0.2.1:51820", psk);
        let mut b = node([2; 32], "192.0.2.2:51820", psk);
        a.engine.set_peers(&[spec(&b, &B_NETS)]);
        b.engine.set_peers(&[spec(&a, &A_NETS)]);
        (a, b)
    }

    /// Carries every datagram sent between the two until none is left (bounded).
    fn pump(a: &mut Node, b: &mut Node) {
        let mut out = vec![0u8; 2048];
        for _ in 0..20 {
            let from_a = std::mem::take(&mut a.io.sent);
            let from_b = std::mem::take(&mut b.io.sent);
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            for (to, d) in from_a {
                assert_eq!(to, b.addr);
                b.engine.receive(a.addr, &d, &mut out, &mut b.io);
            }
            for (to, d) in from_b {
                assert_eq!(to, a.addr);
                a.engine.receive(b.addr, &d, &mut out, &mut a.io);
            }
        }
        panic!("datagrams kept flowing");
    }

    fn ipv4(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src.parse::<std::net::Ipv4Addr>().unwrap().octets());
        p[16..20].copy_from_slice(&dst.parse::<std::net::Ipv4Addr>().unwrap().octets());
        p.extend_from_slice(payload);
        p
    }

    fn ipv6(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(payload);
        p
    }

    fn send(n: &mut Node, packet: &[u8]) {
        let mut out = vec![0u8; 2048];
        n.engine.send(packet, &mut out, &mut n.io);
    }

    /// The first data message A sends B, after a completed handshake.
    fn established() -> (Node, Node, Vec<u8>) {
        let (mut a, mut b) = pair(None);
        send(&mut a, &ipv4("10.244.1.5", "10.244.2.7", b"first"));
        pump(&mut a, &mut b);
        assert_eq!(b.io.delivered.len(), 1);
        let p = ipv4("10.244.1.5", "10.244.2.7", b"second");
        send(&mut a, &p);
        let (_, d) = a.io.sent.pop().unwrap();
        (a, b, d)
    }

    #[test]
    fn handshake_then_ipv4_and_ipv6_both_ways_with_and_without_psk() {
        for psk in [None, Some([7u8; 32])] {
            let (mut a, mut b) = pair(psk);
            let cases = [
                ipv4("10.244.1.5", "10.244.2.7", b"hello b"),
                ipv6("fd00:1::5", "fd00:2::7", b"hello b over v6"),
            ];
            for p in &cases {
                send(&mut a, p);
                pump(&mut a, &mut b);
            }
            assert_eq!(b.io.delivered, cases.to_vec());
            let back = [
                ipv4("10.244.2.7", "10.244.1.5", b"hello a"),
                ipv6("fd00:2::7", "fd00:1::5", b"hello a over v6"),
            ];
            for p in &back {
                send(&mut b, p);
                pump(&mut a, &mut b);
            }
            assert_eq!(a.io.delivered, back.to_vec());
            assert!(a.engine.stats.tx_packets.load(Ordering::Relaxed) >= 2);
            for w in WgDrop::ALL {
                assert_eq!((w, a.engine.stats.dropped(w)), (w, 0));
                assert_eq!((w, b.engine.stats.dropped(w)), (w, 0));
            }
        }
    }

    #[test]
    fn mismatched_psk_never_delivers() {
        let mut a = node([1; 32], "192.0.2.1:51820", Some([7; 32]));
        let mut b = node([2; 32], "192.0.2.2:51820", Some([8; 32]));
        a.engine.set_peers(&[spec(&b, &B_NETS)]);
        b.engine.set_peers(&[spec(&a, &A_NETS)]);
        send(&mut a, &ipv4("10.244.1.5", "10.244.2.7", b"x"));
        pump(&mut a, &mut b);
        assert!(b.io.delivered.is_empty() && a.io.delivered.is_empty());
        assert!(a.engine.stats.dropped(WgDrop::BadMac) >= 1);
    }

    #[test]
    fn garbage_and_truncated_are_dropped_and_counted() {
        let (_a, mut b, data) = established();
        let mut out = vec![0u8; 2048];
        let from = sock("192.0.2.1:51820");
        for junk in [&b""[..], &[1, 2, 3], &[9; 100], &[1, 0, 0, 0, 5]] {
            b.engine.receive(from, junk, &mut out, &mut b.io);
        }
        // A data message cut below its header, then one cut inside its tag.
        b.engine.receive(from, &data[..20], &mut out, &mut b.io);
        b.engine.receive(from, &data[..40], &mut out, &mut b.io);
        assert_eq!(b.engine.stats.dropped(WgDrop::Malformed), 5);
        assert_eq!(b.engine.stats.dropped(WgDrop::BadMac), 1);
        assert_eq!(b.io.delivered.len(), 1, "only the first packet");
        assert!(b.io.sent.is_empty());
    }

    #[test]
    fn replayed_and_tampered_messages_are_dropped() {
        let (_a, mut b, data) = established();
        let mut out = vec![0u8; 2048];
        let from = sock("192.0.2.1:51820");
        let mut bad = data.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        b.engine.receive(from, &bad, &mut out, &mut b.io);
        assert_eq!(b.engine.stats.dropped(WgDrop::BadMac), 1);
        b.engine.receive(from, &data, &mut out, &mut b.io);
        assert_eq!(b.io.delivered.len(), 2);
        b.engine.receive(from, &data, &mut out, &mut b.io);
        assert_eq!(b.engine.stats.dropped(WgDrop::Replay), 1);
        assert_eq!(b.io.delivered.len(), 2);
    }

    #[test]
    fn unknown_keys_and_indexes_are_dropped() {
        let (_a, mut b) = pair(None);
        // C knows B, B does not know C.
        let mut c = node([3; 32], "192.0.2.3:51820", None);
        c.engine.set_peers(&[spec(&b, &B_NETS)]);
        send(&mut c, &ipv4("10.244.3.5", "10.244.2.7", b"x"));
        let (_, init) = c.io.sent.pop().unwrap();
        let mut out = vec![0u8; 2048];
        b.engine.receive(c.addr, &init, &mut out, &mut b.io);
        assert_eq!(b.engine.stats.dropped(WgDrop::UnknownKey), 1);
        // A data message for an index nobody has.
        let mut data = vec![0u8; 64];
        data[0] = 4;
        data[4..8].copy_from_slice(&0x00ab_cd00u32.to_le_bytes());
        b.engine.receive(c.addr, &data, &mut out, &mut b.io);
        assert_eq!(b.engine.stats.dropped(WgDrop::UnknownIndex), 1);
        assert!(b.io.sent.is_empty() && b.io.delivered.is_empty());
    }

    #[test]
    fn a_removed_peer_is_forgotten() {
        let (_a, mut b, data) = established();
        b.engine.set_peers(&[]);
        let mut out = vec![0u8; 2048];
        b.engine
            .receive(sock("192.0.2.1:51820"), &data, &mut out, &mut b.io);
        assert_eq!(b.engine.stats.dropped(WgDrop::UnknownIndex), 1);
        assert_eq!(b.io.delivered.len(), 1);
    }

    /// A peer dropped and listed again (its node re-acquired a lease under another
    /// subnet) comes back with its sessions: what it sends on them is delivered at once,
    /// from the new subnet only.
    #[test]
    fn a_peer_listed_again_keeps_its_sessions() {
        let (mut a, mut b, _) = established();
        b.engine.set_peers(&[]);
        b.engine.set_peers(&[spec(&a, &["10.244.7.0/24"])]);
        let mut out = vec![0u8; 2048];
        for (src, delivered) in [("10.244.7.5", 2), ("10.244.1.5", 2)] {
            a.io.sent.clear();
            send(&mut a, &ipv4(src, "10.244.2.7", b"after the move"));
            let (_, data) = a.io.sent.pop().expect("sealed on the kept session");
            b.engine
                .receive(sock("192.0.2.1:51820"), &data, &mut out, &mut b.io);
            assert_eq!(b.io.delivered.len(), delivered, "from {src}");
        }
        assert_eq!(b.engine.stats.dropped(WgDrop::UnknownIndex), 0);
        assert_eq!(
            b.engine.stats.dropped(WgDrop::NotAllowed),
            1,
            "the old subnet"
        );
    }

    #[test]
    fn inner_source_outside_allowed_ips_is_dropped() {
        let (mut a, mut b) = pair(None);
        for p in [
            ipv4("10.244.9.9", "10.244.2.7", b"spoofed"),
            ipv6("fd00:9::9", "fd00:2::7", b"spoofed"),
        ] {
            send(&mut a, &p);
            pump(&mut a, &mut b);
        }
        assert!(b.io.delivered.is_empty());
        assert_eq!(b.engine.stats.dropped(WgDrop::NotAllowed), 2);
    }

    #[test]
    fn no_route_and_own_key_and_kept_sessions() {
        let (mut a, mut b, _) = established();
        send(&mut a, &ipv4("10.244.1.5", "10.99.0.1", b"x"));
        assert_eq!(a.engine.stats.dropped(WgDrop::NoRoute), 1);
        // Re-listing the same peers (plus ourselves) keeps the session: no new handshake.
        let own = spec(&a, &A_NETS);
        a.engine.set_peers(&[own, spec(&b, &B_NETS)]);
        assert_eq!(a.engine.peer_count(), 1);
        a.io.sent.clear();
        send(&mut a, &ipv4("10.244.1.5", "10.244.2.7", b"third"));
        let (_, d) = a.io.sent.pop().unwrap();
        assert_eq!(d[0], DATA_MESSAGE);
        let mut out = vec![0u8; 2048];
        b.engine.receive(a.addr, &d, &mut out, &mut b.io);
        assert_eq!(b.io.delivered.len(), 2);
    }

    /// The segments, their layout, the sealed buffer and what `seal` returned.
    type SealedRun = (Vec<u8>, Layout, Vec<u8>, Option<(SocketAddr, Layout)>);

    /// A's super-packet of 3 000 bytes cut into three segments, sealed in one buffer.
    fn sealed_super_packet(a: &mut Node) -> SealedRun {
        use crate::offload::testutil::{as_tso, payload, tcp};
        let (hdr, sp) = as_tso(tcp(false, 1, &[], true, &payload(3000, 1)), 1000);
        let mut segs = vec![0u8; 8192];
        let lay = crate::offload::tso::segment(&hdr, &sp, 0, &mut segs).unwrap();
        assert_eq!(lay.count, 3);
        let mut out = vec![0u8; 8192];
        let r = a.engine.seal(&segs, &lay, &mut out, &mut a.io);
        (segs, lay, out, r)
    }

    #[test]
    fn sealed_segments_lie_one_stride_apart_and_open_to_the_segments() {
        let (mut a, mut b, _) = established();
        let (segs, lay, out, r) = sealed_super_packet(&mut a);
        let (to, sealed) = r.expect("the session is up");
        assert_eq!(to, b.addr);
        assert_eq!(sealed.stride, lay.seg_len + OVERHEAD);
        assert!(a.io.sent.is_empty(), "sealed, not sent");
        // As UDP GRO hands them over: one buffer, cut at the stride.
        let mut open = vec![0u8; 2048];
        let buf = &out[..sealed.out_len()];
        for (k, d) in buf.chunks(sealed.stride).enumerate() {
            assert_eq!(d.len(), lay.packet(k).len() + OVERHEAD);
            assert_eq!(d, &out[sealed.datagram(k)]);
            b.engine.receive(a.addr, d, &mut open, &mut b.io);
        }
        let got: Vec<&[u8]> = b.io.delivered[1..].iter().map(|p| &p[..]).collect();
        let want: Vec<&[u8]> = (0..3).map(|k| &segs[lay.packet(k)]).collect();
        assert_eq!(got, want);
        assert_eq!(a.engine.stats.tx_packets.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn sealing_without_a_session_queues_and_starts_the_handshake() {
        let (mut a, mut b) = pair(None);
        let (segs, lay, _, r) = sealed_super_packet(&mut a);
        assert!(r.is_none());
        assert_eq!(a.io.sent.len(), 1, "one handshake initiation");
        pump(&mut a, &mut b);
        let want: Vec<Vec<u8>> = (0..3).map(|k| segs[lay.packet(k)].to_vec()).collect();
        assert_eq!(
            b.io.delivered, want,
            "the queued segments follow the handshake"
        );
        for w in WgDrop::ALL {
            assert_eq!((w, a.engine.stats.dropped(w)), (w, 0));
        }
    }

    #[test]
    fn routing_takes_the_longest_prefix_by_hash_probes() {
        let b = node([2; 32], "192.0.2.2:51820", None);
        let c = node([3; 32], "192.0.2.3:51820", None);
        let cases = [
            (ipv4("10.244.1.5", "10.244.2.7", b"x"), Some(b.addr)),
            (ipv4("10.244.1.5", "10.244.5.1", b"x"), Some(c.addr)),
            (ipv6("fd00:1::5", "fd00:2::9", b"x"), Some(b.addr)),
            (ipv4("10.244.1.5", "10.99.0.1", b"x"), None),
        ];
        for (p, want) in cases {
            // A fresh node each time: a handshake in progress sends nothing more.
            let mut a = node([1; 32], "192.0.2.1:51820", None);
            a.engine
                .set_peers(&[spec(&c, &["10.244.0.0/16"]), spec(&b, &B_NETS)]);
            send(&mut a, &p);
            assert_eq!(a.io.sent.first().map(|s| s.0), want, "{p:?}");
            let no_route = u64::from(want.is_none());
            assert_eq!(a.engine.stats.dropped(WgDrop::NoRoute), no_route);
        }
    }

    #[test]
    fn timers_send_nothing_to_a_peer_never_contacted() {
        let (mut a, _b) = pair(None);
        let mut out = vec![0u8; 2048];
        a.engine.tick(&mut out, &mut a.io);
        assert!(a.io.sent.is_empty());
    }

    #[test]
    fn timers_run_from_a_peers_first_message_or_with_a_persistent_keepalive() {
        let lone = node([3; 32], "192.0.2.3:51820", None);
        assert!(!lone.engine.timers_running(), "no peer: no timer turn due");
        let (mut a, mut b) = pair(None);
        let mut out = vec![0u8; 2048];
        a.engine.tick(&mut out, &mut a.io);
        assert!(!a.engine.timers_running(), "a peer never contacted");
        assert!(!b.engine.timers_running());
        send(&mut a, &ipv4("10.244.1.5", "10.244.2.7", b"first"));
        assert!(
            a.engine.timers_running(),
            "a handshake started: its retry is due"
        );
        pump(&mut a, &mut b);
        assert_eq!(b.io.delivered.len(), 1);
        for n in [&mut a, &mut b] {
            n.engine.tick(&mut out, &mut n.io);
            assert!(n.engine.timers_running(), "a session's timers keep running");
        }
        let mut k = Node {
            engine: Engine::new(Identity {
                secret: StaticSecret::from([4; 32]),
                psk: None,
                keepalive: Some(25),
            }),
            addr: sock("192.0.2.4:51820"),
            io: Rec::default(),
        };
        k.engine.set_peers(&[spec(&b, &B_NETS)]);
        assert!(
            k.engine.timers_running(),
            "keepalives are due from the start"
        );
    }

    #[test]
    fn a_stray_datagram_runs_one_timer_turn() {
        let (mut a, _b) = pair(None);
        let mut out = vec![0u8; 2048];
        let stray = sock("198.51.100.9:4000");
        a.engine
            .receive(stray, &[1, 0, 0, 0, 9], &mut out, &mut a.io);
        assert_eq!(a.engine.stats.dropped(WgDrop::Malformed), 1);
        assert!(
            a.engine.timers_running(),
            "the handshake rate limit's count is reset at the next turn"
        );
        a.engine.tick(&mut out, &mut a.io);
        assert!(!a.engine.timers_running(), "and then nothing is due");
    }
}
