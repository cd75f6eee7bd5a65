//! Transmit: from one packet read from a device (a TSO super-packet, a single packet, or a
//! frame) to encapsulated datagrams on an underlay socket, for the routed and the L2 data
//! planes alike.
//!
//! A datagram is `[encapsulation][link header][IP segment]`: the caller says how many
//! bytes of encapsulation it writes (through a `fill` callback, once per datagram) and how
//! much of the read frame is a link header to repeat in front of every segment (the
//! Ethernet header of an L2 frame; nothing on the routed path). [`TxPath::send`] then picks
//! the cheapest of three ways:
//! 1. a packet that needs no segmenting and no checksum is encapsulated in place, in the
//!    headroom in front of it, and sent as it is;
//! 2. a super-packet over UDP with GSO on: only each segment's headers are written
//!    ([`tso::segment_headers`]) and the kernel gets `[hdr 1, payload 1, ..., hdr N,
//!    payload N]` iovecs with `UDP_SEGMENT`: the payload's one copy is the kernel's;
//! 3. otherwise (raw GRE socket, GSO refused, too many segments for the header buffer)
//!    whole segments are copied into slots ([`tso::segment`]) and sent as GSO runs or one
//!    datagram per message ([`send_layout`]).
//!
//! A kernel that refuses GSO (EIO/EINVAL/EMSGSIZE; say a peer behind a route whose MTU is smaller
//! than the segments) turns the refused offload off for that destination only: its
//! datagrams take the next way, and the worker's [`Fallback`] table keeps it there until
//! the re-probe ([`fallback::REPROBE`]); every other destination keeps the offload.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::fallback::{self, gso_refused, Fallback};
use super::tunnel::{TunnelFrame, TunnelTx};
use super::{Sent, HEADROOM, MAX_READ, SEG_BUF};
use crate::drop::DropReason;
use crate::offload::{tso, OffloadError};
use crate::sys::socket::{Msg, UnderlaySocket, MAX_BATCH, MAX_GSO_SEGMENTS};
use crate::sys::tun::Queue;
use crate::wire::flow;
use crate::wire::virtio::{self, VirtioNetHdr};

/// Bytes of per-segment header blocks for the zero-copy send (47 segments of a 64 KiB
/// super-packet need ~3.5 KiB; more segments than fit take the copying path).
const HDR_BUF: usize = 32 * 1024;
/// Largest UDP payload one GSO send may carry in total.
const MAX_GSO_BYTES: usize = 65000;

/// One packet read into [`TxPath::buf`], and how to send it.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    /// The virtio header it was read with (default when the device has none); offsets
    /// count from the start of the frame.
    pub vh: VirtioNetHdr,
    /// Where the frame lies in [`TxPath::buf`].
    pub start: usize,
    pub end: usize,
    /// Bytes at the frame's start that are a link header, repeated in front of every
    /// segment (an L2 frame's Ethernet header; 0 for an IP packet).
    pub link: usize,
    /// Bytes of encapsulation the `fill` callback writes in front of each datagram.
    pub encap: usize,
    /// The inner flow's hash: the outer UDP source port when the kernel segments
    /// ([`super::tunnel`]); the caller has used it to pick the socket.
    pub flow: u32,
}

/// Fills the first [`Outgoing::encap`] bytes of a datagram; the rest (link header, IP
/// headers, and for whole datagrams the payload) follows and may be read.
pub type Fill<'a> = dyn FnMut(&mut [u8]) -> Result<(), DropReason> + 'a;

/// One worker's transmit buffers and GSO state.
pub struct TxPath {
    /// The read buffer: a device read lands at `buf[HEADROOM..]`, leaving room in front.
    pub buf: Vec<u8>,
    seg_buf: Vec<u8>,
    hdr_buf: Vec<u8>,
    /// UDP GSO on the underlay sockets (probed at start).
    gso: bool,
    /// Whole super-packets to the kernel through the tunnel-GSO TAP, when set up.
    tunnel: Option<TunnelTx>,
    /// Destinations the kernel refused tunnel GSO, and UDP GSO, for (until the re-probe).
    tunnel_off: Fallback,
    gso_off: Fallback,
}

impl TxPath {
    /// Buffers for one worker; `gso`: whether the underlay sockets take UDP GSO (probed at
    /// start; a refusal later turns it off per destination, see [`Fallback`]).
    pub fn new(gso: bool, tunnel: Option<TunnelTx>) -> Self {
        Self {
            buf: vec![0; HEADROOM + MAX_READ],
            seg_buf: vec![0; SEG_BUF],
            hdr_buf: vec![0; HDR_BUF],
            gso,
            tunnel,
            tunnel_off: Fallback::default(),
            gso_off: Fallback::default(),
        }
    }

    /// Reads one packet from `q` to `buf[HEADROOM..]`.
    pub fn read(&mut self, q: &Queue) -> io::Result<usize> {
        q.read(&mut self.buf[HEADROOM..])
    }

    /// Splits what [`Self::read`] returned into its virtio header (when the device has
    /// one) and the frame's range; `None` when a virtio header is cut short.
    pub fn frame(&self, n: usize, vnet: bool) -> Option<(VirtioNetHdr, usize, usize)> {
        let end = HEADROOM + n;
        if !vnet {
            return Some((VirtioNetHdr::default(), HEADROOM, end));
        }
        let h = VirtioNetHdr::parse(&self.buf[HEADROOM..end])?;
        Some((h, HEADROOM + virtio::LEN, end))
    }

    /// Sends `out` to every address of `dsts` (on `port`; ignored by a raw socket) through
    /// `sock`, whose family the addresses share: the same datagrams to each (head-end
    /// replication). `fill` is called once per datagram, before any is sent.
    /// `Err((reason, datagrams))` when a segment cannot be built or encapsulated; nothing
    /// is sent then.
    pub fn send<A: Copy + Into<IpAddr>>(
        &mut self,
        out: &Outgoing,
        fill: &mut Fill<'_>,
        sock: &UnderlaySocket,
        dsts: &[A],
        port: u16,
    ) -> Result<Sent, (DropReason, u64)> {
        let port = if sock.is_raw() { 0 } else { port };
        let to = |ip: &A| SocketAddr::new((*ip).into(), port);
        if dsts.is_empty() {
            return Ok(Sent::default());
        }
        if out.vh.gso_kind() == virtio::GSO_NONE && !out.vh.needs_csum() {
            return self.send_plain(out, fill, sock, dsts, to);
        }
        let mut sent = Sent::default();
        // Offsets in the virtio header count from the frame; segmenting sees the IP packet.
        let mut vh = out.vh;
        vh.csum_start = vh.csum_start.saturating_sub(out.link as u16);
        vh.hdr_len = vh.hdr_len.saturating_sub(out.link as u16);
        let now = Instant::now();
        // Each way's buffers are built once, when a destination first takes that way.
        let (mut tunnel, mut runs, mut copied) = (None, None, None);
        for d in dsts {
            let ip: IpAddr = (*d).into();
            // 0. The kernel segments: one write of the whole encapsulated super-packet.
            if !self.tunnel_off.off(ip, now) {
                let f = match tunnel {
                    Some(f) => f,
                    None => *tunnel.insert(self.prepare_tunnel(out, &vh, sock, fill)?),
                };
                if let (Some(f), Some(t)) = (f, self.tunnel.as_ref()) {
                    let src_port = flow::src_port(out.flow);
                    match t.send(&mut self.buf, &f, &[*d], port, src_port) {
                        Some(s) => {
                            sent.add(s);
                            continue;
                        }
                        None => sent.fallbacks += refused(&mut self.tunnel_off, ip, now, "tunnel"),
                    }
                }
            }
            let gso = self.gso && !sock.is_raw() && !self.gso_off.off(ip, now);
            // 2. Zero copy: header blocks here, payload from the read buffer; in GSO runs,
            // or one message per segment where the socket takes no GSO.
            let lay = match runs {
                Some(l) => l,
                None => *runs.insert(self.prepare_runs(out, &vh, fill)?),
            };
            if let Some(lay) = lay {
                let ipkt = &self.buf[out.start + out.link..out.end];
                let seg = out.encap + out.link + lay.hdr_len + lay.gso;
                let runs = gso
                    .then(|| send_header_runs(sock, &self.hdr_buf, &lay, ipkt, seg, to(d)))
                    .flatten();
                if gso && runs.is_none() {
                    sent.fallbacks += refused(&mut self.gso_off, ip, now, "UDP");
                }
                let each = || send_header_msgs(sock, &self.hdr_buf, &lay, ipkt, to(d));
                sent.add(runs.unwrap_or_else(each));
                continue;
            }
            // 3. Whole segments copied into slots.
            let layout = match copied {
                Some(l) => l,
                None => *copied.insert(self.prepare_copy(out, &vh, fill)?),
            };
            let (s, refusal) = send_layout(sock, &self.seg_buf, &layout, to(d), gso);
            if refusal {
                sent.fallbacks += refused(&mut self.gso_off, ip, now, "UDP");
            }
            sent.add(s);
        }
        Ok(sent)
    }

    /// Way 1: one packet as it is, encapsulated in place and sent to every destination in
    /// batches of [`MAX_BATCH`].
    fn send_plain<A>(
        &mut self,
        out: &Outgoing,
        fill: &mut Fill<'_>,
        sock: &UnderlaySocket,
        dsts: &[A],
        to: impl Fn(&A) -> SocketAddr,
    ) -> Result<Sent, (DropReason, u64)> {
        let d = &mut self.buf[out.start - out.encap..out.end];
        fill(d).map_err(|r| (r, 1))?;
        let d = &self.buf[out.start - out.encap..out.end];
        Ok(send_each(sock, dsts.len(), |i| {
            Msg::whole(d, to(&dsts[i]), 0)
        }))
    }

    /// Way 0, set up: the encapsulation written in front of the frame, when the tunnel-GSO
    /// TAP is on for the socket's family and the packet is a TCP super-packet with room for
    /// the outer headers (inner UDP super-packets are segmented here). `None`: another way.
    fn prepare_tunnel(
        &mut self,
        out: &Outgoing,
        vh: &VirtioNetHdr,
        sock: &UnderlaySocket,
        fill: &mut Fill<'_>,
    ) -> Result<Option<TunnelFrame>, (DropReason, u64)> {
        let v6 = sock.is_v6();
        if sock.is_raw() || !self.tunnel.as_ref().is_some_and(|t| t.on(v6)) {
            return Ok(None);
        }
        let ip = &self.buf[out.start + out.link..out.end];
        let shape = match tso::gso_shape(vh, ip) {
            Ok(Some(s))
                if s.tcp && s.count > 1 && out.start >= out.encap + TunnelTx::outer_len(v6) =>
            {
                s
            }
            Ok(_) => return Ok(None),
            Err(e) => return Err((e.drop_reason(), 1)),
        };
        let at = out.start - out.encap;
        fill(&mut self.buf[at..out.end]).map_err(|r| (r, shape.count as u64))?;
        Ok(Some(TunnelFrame {
            at,
            end: out.end,
            inner_ip: out.encap + out.link,
            shape,
            vh: *vh,
        }))
    }

    /// Way 2, set up: one header block per segment in `hdr_buf`, each with the link header
    /// and the encapsulation. `None` when the packet needs no segmenting or its headers do
    /// not fit: another way.
    fn prepare_runs(
        &mut self,
        out: &Outgoing,
        vh: &VirtioNetHdr,
        fill: &mut Fill<'_>,
    ) -> Result<Option<tso::HeaderLayout>, (DropReason, u64)> {
        let room = out.encap + out.link;
        let (link, ip) = self.buf[out.start..out.end].split_at(out.link);
        let lay = match tso::segment_headers(vh, ip, room, &mut self.hdr_buf) {
            Ok(Some(lay)) if lay.count > 1 => lay,
            Ok(_) | Err(OffloadError::OutTooSmall { .. }) => return Ok(None),
            Err(e) => return Err((e.drop_reason(), 1)),
        };
        for i in 0..lay.count {
            let h = &mut self.hdr_buf[lay.header(i)];
            h[out.encap..room].copy_from_slice(link);
            fill(h).map_err(|r| (r, lay.count as u64))?;
        }
        Ok(Some(lay))
    }

    /// Way 3, set up: every segment copied whole into `seg_buf`, encapsulated.
    fn prepare_copy(
        &mut self,
        out: &Outgoing,
        vh: &VirtioNetHdr,
        fill: &mut Fill<'_>,
    ) -> Result<tso::Layout, (DropReason, u64)> {
        let room = out.encap + out.link;
        let (link, ip) = self.buf[out.start..out.end].split_at(out.link);
        let layout =
            tso::segment(vh, ip, room, &mut self.seg_buf).map_err(|e| (e.drop_reason(), 1))?;
        for i in 0..layout.count {
            let d = &mut self.seg_buf[layout.datagram(i)];
            d[out.encap..room].copy_from_slice(link);
            fill(d).map_err(|r| (r, layout.count as u64))?;
        }
        Ok(layout)
    }
}

/// Records in `table` that the kernel refused `offload` GSO for `dst` (logged when the
/// entry is new); returns the count of new entries (0 or 1) for [`Sent::fallbacks`].
fn refused(table: &mut Fallback, dst: IpAddr, now: Instant, offload: &str) -> u64 {
    let new = table.refuse(dst, now);
    if new {
        tracing::warn!(%dst, offload, reprobe_s = fallback::REPROBE.as_secs(), "the kernel refused GSO for this destination; segmenting in userspace for it until the re-probe");
    }
    new as u64
}

/// Sends the `layout.count` datagrams of `buf` (each `layout.datagram(i)`: the headroom
/// holds the encapsulation) to `dst`.
///
/// While `gso` is `Some(true)` they go as UDP GSO runs (at most [`MAX_GSO_SEGMENTS`]
/// datagrams and [`MAX_GSO_BYTES`] bytes each, all runs in one `sendmmsg`); a kernel that
/// refuses GSO (EIO/EINVAL/EMSGSIZE) gets the same datagrams one per message, and the second value
/// returned is true (the caller remembers the refusal for `dst`). A full socket drops the
/// lot rather than retrying. `gso` false (a raw GRE socket, a refused destination) sends one
/// datagram per message, in `sendmmsg` batches.
pub fn send_layout(
    sock: &UnderlaySocket,
    buf: &[u8],
    layout: &tso::Layout,
    dst: SocketAddr,
    gso: bool,
) -> (Sent, bool) {
    let stride = layout.stride;
    let total = layout.out_len();
    let mut msgs = [Msg::whole(&[], dst, 0); MAX_BATCH];
    let per_run = gso_run_len(stride);
    // More runs than one sendmmsg takes cannot come from a TCP MSS into SEG_BUF, but a
    // layout that would need them goes the per-datagram way rather than off the array.
    let fits = layout.count.div_ceil(per_run) <= MAX_BATCH;
    let mut refusal = false;
    if gso && layout.count > 1 && fits {
        let (mut n, mut i) = (0, 0);
        while i < layout.count {
            let k = per_run.min(layout.count - i);
            let start = i * stride;
            msgs[n] = Msg::whole(
                &buf[start..(start + k * stride).min(total)],
                dst,
                stride as u16,
            );
            n += 1;
            i += k;
        }
        match sock.send_batch(&msgs[..n]) {
            Ok(_) => {
                let sent = Sent {
                    packets: layout.count as u64,
                    bytes: total as u64,
                    calls: 1,
                    ..Sent::default()
                };
                return (sent, false);
            }
            // Refused: resend one by one below.
            Err(e) if gso_refused(&e) => refusal = true,
            Err(_) => {
                let sent = Sent {
                    dropped: layout.count as u64,
                    ..Sent::default()
                };
                return (sent, false);
            }
        }
    }
    let sent = send_each(sock, layout.count, |i| {
        Msg::whole(&buf[layout.datagram(i)], dst, 0)
    });
    (sent, refusal)
}

/// Sends messages `msg(0)..msg(count)`, one datagram each, in `sendmmsg` batches.
fn send_each<'a>(sock: &UnderlaySocket, count: usize, msg: impl Fn(usize) -> Msg<'a>) -> Sent {
    let mut msgs = [Msg::whole(&[], SocketAddr::from(([0, 0, 0, 0], 0)), 0); MAX_BATCH];
    let mut sent = Sent::default();
    let mut i = 0;
    while i < count {
        let k = MAX_BATCH.min(count - i);
        for (j, m) in msgs[..k].iter_mut().enumerate() {
            *m = msg(i + j);
        }
        sent.add(send_msgs(sock, &msgs[..k]));
        i += k;
    }
    sent
}

/// Sends the `lay.count` datagrams datagram i being `hdr_buf[lay.header(i)]` followed by
/// `data[lay.chunk(i)]`, to `dst`, one message each: the kernel gathers the two pieces, so
/// the payload's one copy is the kernel's (for a socket without GSO, e.g. gre's raw one).
pub fn send_header_msgs(
    sock: &UnderlaySocket,
    hdr_buf: &[u8],
    lay: &tso::HeaderLayout,
    data: &[u8],
    dst: SocketAddr,
) -> Sent {
    send_each(sock, lay.count, |i| Msg {
        head: &hdr_buf[lay.header(i)],
        buf: &data[lay.chunk(i)],
        dst,
        segment: 0,
    })
}

/// Sends the `lay.count` datagrams of `seg` bytes (the last may be shorter), datagram i
/// being `hdr_buf[lay.header(i)]` followed by `data[lay.chunk(i)]`, to `dst` as UDP GSO runs
/// of (header, payload) iovecs: the payload's one copy is the kernel's.
///
/// Returns `None`, having sent nothing, when the kernel refuses GSO on the first run (see
/// [`gso_refused`]); the caller then sends the copying way and remembers the refusal for
/// `dst`. A later run that fails is counted as dropped.
pub fn send_header_runs(
    sock: &UnderlaySocket,
    hdr_buf: &[u8],
    lay: &tso::HeaderLayout,
    data: &[u8],
    seg: usize,
    dst: SocketAddr,
) -> Option<Sent> {
    let per_run = gso_run_len(seg);
    let mut iov = [IoSlice::new(&[]); 2 * MAX_GSO_SEGMENTS];
    let mut sent = Sent::default();
    let mut i = 0;
    while i < lay.count {
        let k = per_run.min(lay.count - i);
        let mut bytes = 0;
        for j in 0..k {
            let (h, c) = (&hdr_buf[lay.header(i + j)], &data[lay.chunk(i + j)]);
            bytes += h.len() + c.len();
            iov[2 * j] = IoSlice::new(h);
            iov[2 * j + 1] = IoSlice::new(c);
        }
        match sock.send_vectored(&iov[..2 * k], dst, seg as u16) {
            Ok(_) => {
                sent.packets += k as u64;
                sent.bytes += bytes as u64;
                sent.calls += 1;
            }
            Err(e) if i == 0 && gso_refused(&e) => return None,
            Err(_) => sent.dropped += k as u64,
        }
        i += k;
    }
    Some(sent)
}

/// Datagrams of `seg` bytes per UDP GSO send: at most [`MAX_GSO_SEGMENTS`] and
/// [`MAX_GSO_BYTES`] in all, at least one.
fn gso_run_len(seg: usize) -> usize {
    (MAX_GSO_BYTES / seg.max(1)).clamp(1, MAX_GSO_SEGMENTS)
}

/// One `sendmmsg` of `msgs`, one datagram each: what the kernel took, the rest dropped.
pub fn send_msgs(sock: &UnderlaySocket, msgs: &[Msg<'_>]) -> Sent {
    match sock.send_batch(msgs) {
        Ok(n) => Sent {
            packets: n as u64,
            bytes: msgs[..n].iter().map(|m| m.bytes() as u64).sum(),
            calls: 1,
            dropped: (msgs.len() - n) as u64,
            ..Sent::default()
        },
        Err(_) => Sent {
            dropped: msgs.len() as u64,
            ..Sent::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testutil::{as_tso, payload, tcp};
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    /// A 64 KiB TSO super-packet segmented with 8 bytes of headroom (as for vxlan), and a
    /// receiver on loopback.
    fn setup() -> (Vec<u8>, tso::Layout, UdpSocket, UnderlaySocket) {
        let (hdr, sp) = as_tso(tcp(false, 1, &[], true, &payload(60_000, 3)), 1398);
        let mut buf = vec![0u8; SEG_BUF];
        let layout = tso::segment(&hdr, &sp, 8, &mut buf).expect("valid super-packet");
        for i in 0..layout.count {
            let d = layout.datagram(i);
            buf[d.start..d.start + 8].copy_from_slice(&(i as u64).to_be_bytes());
        }
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let tx = UnderlaySocket::udp("127.0.0.1:0".parse::<SocketAddr>().unwrap(), 4 << 20)
            .expect("udp");
        (buf, layout, rx, tx)
    }

    /// Every datagram arrives once, in order, byte for byte as laid out.
    fn receive_all(rx: &UdpSocket, buf: &[u8], layout: &tso::Layout) {
        let mut got = vec![0u8; 65536];
        for i in 0..layout.count {
            let n = rx.recv(&mut got).expect("datagram within 2 s");
            assert_eq!(&got[..n], &buf[layout.datagram(i)], "datagram {i}");
        }
    }

    #[test]
    fn send_layout_sends_gso_runs() {
        let (buf, layout, rx, tx) = setup();
        assert!(tx.probe_gso(), "this kernel has UDP_SEGMENT");
        let dst = rx.local_addr().unwrap();
        let sent = send_layout(&tx, &buf, &layout, dst, true);
        let want = Sent {
            packets: layout.count as u64,
            bytes: layout.out_len() as u64,
            calls: 1,
            ..Sent::default()
        };
        assert_eq!(sent, (want, false));
        receive_all(&rx, &buf, &layout);
    }

    /// The kernel refuses UDP GSO on a socket without UDP checksums (EINVAL): the same
    /// datagrams go out one per message, and the refusal is reported to the caller.
    #[test]
    fn send_layout_falls_back_when_the_kernel_refuses_gso() {
        let (buf, layout, rx, tx) = setup();
        tx.disable_tx_checksum().expect("SO_NO_CHECK");
        let dst = rx.local_addr().unwrap();
        let (sent, refused) = send_layout(&tx, &buf, &layout, dst, true);
        assert!(refused, "the refusal is reported");
        assert_eq!(sent.packets, layout.count as u64);
        assert_eq!(sent.bytes, layout.out_len() as u64);
        assert_eq!(sent.dropped, 0);
        assert!(sent.calls >= 1);
        receive_all(&rx, &buf, &layout);
        // Without GSO: straight the plain way.
        let (sent, refused) = send_layout(&tx, &buf, &layout, dst, false);
        assert_eq!(sent.packets, layout.count as u64);
        assert!(!refused);
        receive_all(&rx, &buf, &layout);
    }

    /// The zero-copy sender's runs of (header, payload) iovecs arrive as the copying
    /// segmenter lays the datagrams out; on a socket where the kernel refuses GSO it sends
    /// nothing, says so (`None`) and clears the flag, so the caller can copy instead.
    #[test]
    fn header_runs_and_header_messages_match_the_copying_layout_and_a_refusal_is_reported() {
        let (hdr, sp) = as_tso(tcp(false, 1, &[], true, &payload(60_000, 3)), 1398);
        let (buf, layout, rx, tx) = setup();
        let mut hdr_buf = vec![0u8; 32 * 1024];
        let lay = tso::segment_headers(&hdr, &sp, 8, &mut hdr_buf)
            .expect("valid super-packet")
            .expect("needs segmenting");
        assert_eq!(lay.count, layout.count);
        for i in 0..lay.count {
            let h = lay.header(i);
            hdr_buf[h.start..h.start + 8].copy_from_slice(&(i as u64).to_be_bytes());
        }
        let dst = rx.local_addr().unwrap();
        let seg = 8 + lay.hdr_len + lay.gso;
        let sent =
            send_header_runs(&tx, &hdr_buf, &lay, &sp, seg, dst).expect("GSO accepted on loopback");
        assert_eq!(sent.packets, layout.count as u64);
        assert_eq!(sent.bytes, layout.out_len() as u64);
        assert_eq!(sent.dropped, 0);
        receive_all(&rx, &buf, &layout);

        // Without GSO: one message per datagram, the same bytes.
        let each = send_header_msgs(&tx, &hdr_buf, &lay, &sp, dst);
        assert_eq!(
            (each.packets, each.bytes, each.dropped),
            (sent.packets, sent.bytes, 0)
        );
        assert_eq!(each.calls, 1, "{} datagrams in one sendmmsg", lay.count);
        receive_all(&rx, &buf, &layout);

        tx.disable_tx_checksum().expect("SO_NO_CHECK");
        assert_eq!(
            send_header_runs(&tx, &hdr_buf, &lay, &sp, seg, dst),
            None,
            "a refused first run sends nothing"
        );
        let mut got = [0u8; 16];
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            rx.recv(&mut got).is_err(),
            "nothing arrived after the refusal"
        );
    }

    /// Loopback receivers and their addresses.
    fn receivers(n: usize) -> (Vec<UdpSocket>, u16) {
        // One port for all: each receiver on its own 127.0.0.x address.
        let first = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = first.local_addr().unwrap().port();
        let mut v = vec![first];
        for i in 1..n {
            v.push(
                UdpSocket::bind(("127.0.0.".to_string() + &(i + 1).to_string(), port))
                    .expect("bind"),
            );
        }
        for r in &v {
            r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        (v, port)
    }

    /// An L2-style send (8 bytes of encapsulation, a 14-byte Ethernet header repeated in
    /// front of every segment) to two destinations: the zero-copy way and, once GSO is
    /// refused, the copying way deliver the same datagrams, and those are exactly what
    /// `tso::segment` lays out with the link header and the encapsulation in front.
    #[test]
    fn tx_path_repeats_the_link_header_and_replicates_to_every_destination() {
        let (hdr, sp) = as_tso(tcp(false, 1, &[], true, &payload(30_000, 7)), 1398);
        let eth: [u8; 14] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        // The expected datagrams.
        let mut want = vec![0u8; SEG_BUF];
        let layout = tso::segment(&hdr, &sp, 22, &mut want).expect("valid");
        for i in 0..layout.count {
            let d = layout.datagram(i);
            want[d.start..d.start + 8].copy_from_slice(b"ENCAPHDR");
            want[d.start + 8..d.start + 22].copy_from_slice(&eth);
        }
        let (rx, port) = receivers(2);
        let dsts = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)];
        let tx = UnderlaySocket::udp("127.0.0.1:0".parse::<SocketAddr>().unwrap(), 4 << 20)
            .expect("udp");
        let mut path = TxPath::new(tx.probe_gso(), None);
        let mut got = vec![0u8; 65536];
        for round in 0..2 {
            if round == 1 {
                tx.disable_tx_checksum().expect("SO_NO_CHECK");
            }
            // The frame as a TAP read gives it: virtio offsets count from the frame.
            let start = HEADROOM;
            path.buf[start..start + 14].copy_from_slice(&eth);
            path.buf[start + 14..start + 14 + sp.len()].copy_from_slice(&sp);
            let mut vh = hdr;
            vh.csum_start += 14;
            vh.hdr_len += 14;
            let out = Outgoing {
                vh,
                start,
                end: start + 14 + sp.len(),
                link: 14,
                encap: 8,
                flow: 0,
            };
            let mut calls = 0;
            let mut fill = |d: &mut [u8]| {
                calls += 1;
                d[..8].copy_from_slice(b"ENCAPHDR");
                Ok(())
            };
            let sent = path.send(&out, &mut fill, &tx, &dsts, port).expect("sent");
            assert_eq!(sent.packets, 2 * layout.count as u64, "round {round}");
            assert_eq!(sent.dropped, 0);
            if round == 1 {
                assert_eq!(sent.fallbacks, 2, "refused for both destinations");
                for d in dsts {
                    assert!(path.gso_off.off(d.into(), Instant::now()), "{d} remembered");
                }
            }
            for r in &rx {
                for i in 0..layout.count {
                    let n = r.recv(&mut got).expect("datagram within 2 s");
                    assert_eq!(
                        &got[..n],
                        &want[layout.datagram(i)],
                        "round {round} datagram {i}"
                    );
                }
            }
            assert!(calls >= layout.count, "fill ran for every datagram");
        }
    }

    /// A packet needing no segmenting goes as it is, encapsulated in the headroom in front.
    #[test]
    fn tx_path_sends_a_single_packet_in_place() {
        let (rx, port) = receivers(1);
        let tx = UnderlaySocket::udp("127.0.0.1:0".parse::<SocketAddr>().unwrap(), 1 << 20)
            .expect("udp");
        let mut path = TxPath::new(false, None);
        let pkt = tcp(false, 1, &[], true, &payload(100, 1));
        path.buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let out = Outgoing {
            vh: VirtioNetHdr::default(),
            start: HEADROOM,
            end: HEADROOM + pkt.len(),
            link: 0,
            encap: 4,
            flow: 0,
        };
        let sent = path
            .send(
                &out,
                &mut |d| {
                    d[..4].copy_from_slice(b"HDR!");
                    Ok(())
                },
                &tx,
                &[Ipv4Addr::LOCALHOST],
                port,
            )
            .expect("sent");
        assert_eq!((sent.packets, sent.calls), (1, 1));
        let mut got = [0u8; 2048];
        let n = rx[0].recv(&mut got).unwrap();
        assert_eq!(&got[..4], b"HDR!");
        assert_eq!(&got[4..n], &pkt[..]);
        // A failing fill sends nothing and reports its reason.
        let r = path.send(
            &out,
            &mut |_| Err(DropReason::BadInner),
            &tx,
            &[Ipv4Addr::LOCALHOST],
            port,
        );
        assert_eq!(r, Err((DropReason::BadInner, 1)));
    }

    /// A super-packet as a TUN read gives it, in `path.buf`: its `Outgoing` (routed, 8
    /// bytes of encapsulation) and the datagrams it becomes.
    fn super_packet(path: &mut TxPath) -> (Outgoing, tso::Layout, Vec<u8>) {
        let (hdr, sp) = as_tso(tcp(false, 1, &[], true, &payload(30_000, 5)), 1398);
        let mut want = vec![0u8; SEG_BUF];
        let layout = tso::segment(&hdr, &sp, 8, &mut want).expect("valid");
        for i in 0..layout.count {
            let d = layout.datagram(i);
            want[d.start..d.start + 8].copy_from_slice(b"ENCAPHDR");
        }
        path.buf[HEADROOM..HEADROOM + sp.len()].copy_from_slice(&sp);
        let out = Outgoing {
            vh: hdr,
            start: HEADROOM,
            end: HEADROOM + sp.len(),
            link: 0,
            encap: 8,
            flow: 0,
        };
        (out, layout, want)
    }

    /// A GSO refusal for one destination turns the offload off for it alone: sent to again,
    /// it is not tried (no new refusal), while another destination still is (its own
    /// refusal counted); every datagram arrives either way.
    #[test]
    fn a_gso_refusal_is_remembered_per_destination() {
        let (rx, port) = receivers(2);
        let tx = UnderlaySocket::udp("127.0.0.1:0".parse::<SocketAddr>().unwrap(), 4 << 20)
            .expect("udp");
        assert!(tx.probe_gso(), "this kernel has UDP_SEGMENT");
        // Every GSO send on this socket is refused; single datagrams still go.
        tx.disable_tx_checksum().expect("SO_NO_CHECK");
        let mut path = TxPath::new(true, None);
        let (out, layout, want) = super_packet(&mut path);
        let mut fill = |d: &mut [u8]| {
            d[..8].copy_from_slice(b"ENCAPHDR");
            Ok(())
        };
        let mut got = vec![0u8; 65536];
        let (a, b) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
        for (dst, r, fallbacks) in [(b, &rx[1], 1), (b, &rx[1], 0), (a, &rx[0], 1)] {
            let sent = path.send(&out, &mut fill, &tx, &[dst], port).expect("sent");
            assert_eq!(sent.fallbacks, fallbacks, "to {dst}");
            assert_eq!(sent.packets, layout.count as u64);
            for i in 0..layout.count {
                let n = r.recv(&mut got).expect("datagram within 2 s");
                assert_eq!(&got[..n], &want[layout.datagram(i)], "{dst} datagram {i}");
            }
        }
    }
}
