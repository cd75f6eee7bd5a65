//! Underlay sockets: UDP with GSO (`UDP_SEGMENT`) and GRO (`UDP_GRO`), and the raw socket
//! for GRE (IP protocol 47), each moved in batches with `sendmmsg`/`recvmmsg`, over IPv4 or
//! IPv6 (one family per socket). A raw IPv4 socket reads the outer IPv4 header with each
//! packet; a raw IPv6 socket does not (the sender comes with the message, as for UDP).
//!
//! All buffers and message headers are owned by the caller or by a [`RecvBatch`] allocated
//! once per worker, so a steady-state send or receive allocates nothing.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::msg::send_mmsg;
pub(crate) use super::msg::setsockopt;
pub use super::msg::{Msg, MAX_BATCH};
use super::packet::{LinkTx, NextHop};

const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most datagrams one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// An underlay socket: UDP (udp and vxlan backends) or raw GRE, IPv4 or IPv6.
#[derive(Debug)]
pub struct UnderlaySocket {
    sock: Socket,
    raw: bool,
    v6: bool,
    /// gre over IPv4: the link-layer sender used for destinations with a known next hop.
    link: Option<LinkTx>,
}

/// A raw ICMPv6 socket bound to `addr` (it reads the ICMPv6 messages sent to it, without
/// the IPv6 header), each read waiting at most `timeout`: how the tunnel-GSO TAP learns of
/// "packet too big" answers to what it forwarded.
pub fn icmp6_listener(addr: Ipv6Addr, timeout: std::time::Duration) -> io::Result<Socket> {
    let sock = Socket::new(Domain::IPV6, Type::RAW.cloexec(), Some(Protocol::ICMPV6))?;
    sock.bind(&SocketAddr::new(addr.into(), 0).into())?;
    sock.set_read_timeout(Some(timeout))?;
    Ok(sock)
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    setsockopt(fd, level, name, &v)
}

impl UnderlaySocket {
    /// A UDP socket bound to `bind` (IPv4 or IPv6), with `SO_REUSEPORT` so that every
    /// worker queue can own one. An IPv6 socket is IPv6 only (`IPV6_V6ONLY`).
    pub fn udp(bind: impl Into<SocketAddr>, buffer_bytes: usize) -> io::Result<Self> {
        let bind: SocketAddr = bind.into();
        let v6 = bind.is_ipv6();
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        if v6 {
            sock.set_only_v6(true)?;
        }
        sock.set_reuse_port(true)?;
        sock.set_reuse_address(true)?;
        Self::buffers(&sock, buffer_bytes);
        Self::no_path_mtu(&sock, v6);
        sock.bind(&bind.into())?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            raw: false,
            v6,
            link: None,
        })
    }

    /// Outer DF clear, as the kernel's VXLAN sends (IPv4); for IPv6 (which has no DF bit)
    /// the same choice: send at the device MTU and let the kernel fragment rather than
    /// follow path-MTU reports. The underlay may then fragment rather than drop when its
    /// MTU is smaller than ours assumed.
    fn no_path_mtu(sock: &Socket, v6: bool) {
        let (level, name, value) = if v6 {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DONT,
            )
        } else {
            (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )
        };
        let _ = setsockopt_int(sock.as_raw_fd(), level, name, value);
    }

    /// A raw socket for IP protocol 47 (GRE; RFC 7676 over IPv6), bound to `bind`. Over
    /// IPv4, received packets start with the outer IPv4 header; over IPv6 they start with
    /// the GRE header (the sender comes with the message). Sent ones get the outer header
    /// from the kernel, or, over IPv4 from a given address, from [`LinkTx`] for
    /// destinations whose next hop it was told.
    pub fn raw_gre(bind: impl Into<IpAddr>, buffer_bytes: usize) -> io::Result<Self> {
        let bind: IpAddr = bind.into();
        let v6 = bind.is_ipv6();
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(
            domain,
            Type::RAW.cloexec(),
            Some(Protocol::from(libc::IPPROTO_GRE)),
        )?;
        Self::buffers(&sock, buffer_bytes);
        Self::no_path_mtu(&sock, v6);
        sock.bind(&SocketAddr::new(bind, 0).into())?;
        sock.set_nonblocking(true)?;
        let link = match bind {
            IpAddr::V4(src) if !src.is_unspecified() => LinkTx::open(src).ok(),
            _ => None,
        };
        Ok(Self {
            sock,
            raw: true,
            v6,
            link,
        })
    }

    /// Large buffers: forced past `rmem_max`/`wmem_max` when we may (root), else best effort.
    fn buffers(sock: &Socket, bytes: usize) {
        let fd = sock.as_raw_fd();
        let b = bytes.min(i32::MAX as usize) as libc::c_int;
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, b).is_err() {
            let _ = sock.set_send_buffer_size(bytes);
        }
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, b).is_err() {
            let _ = sock.set_recv_buffer_size(bytes);
        }
    }

    /// Sends without UDP checksums (`SO_NO_CHECK`). The kernel refuses UDP GSO on such a
    /// socket (EINVAL): the tests use it to make a real kernel refuse the offload.
    #[cfg(test)]
    pub(crate) fn disable_tx_checksum(&self) -> io::Result<()> {
        setsockopt_int(
            self.sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            1,
        )
    }

    /// The link-layer sender of a raw IPv4 GRE socket, when it has one.
    pub fn link_tx(&self) -> Option<&LinkTx> {
        self.link.as_ref()
    }

    /// A raw GRE socket (no ports, no GSO or GRO).
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// An IPv6 socket.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Whether received packets start with the outer IP header: a raw IPv4 socket's do.
    pub fn reads_ip_header(&self) -> bool {
        self.raw && !self.v6
    }

    /// Turns on UDP GRO; `false` when the kernel refuses (then datagrams arrive one by one).
    pub fn enable_gro(&self) -> bool {
        !self.raw && setsockopt_int(self.sock.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1).is_ok()
    }

    /// Whether the kernel knows `UDP_SEGMENT` on this socket (a cheap probe). A GSO send may
    /// still be refused (EIO through an IPsec policy, or on kernels before 6.2 a device
    /// without checksum offload; EINVAL with UDP checksums off), which callers treat as a
    /// fallback to one datagram per message.
    pub fn probe_gso(&self) -> bool {
        if self.raw {
            return false;
        }
        let mut v: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`.
        let rc = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_UDP,
                UDP_SEGMENT,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        rc == 0
    }

    // Parallel C arrays are filled by index; iterators would obscure which entry is which.
    #[allow(clippy::needless_range_loop)]
    /// Sends up to [`MAX_BATCH`] messages with one `sendmmsg`; returns how many were sent.
    pub fn send_batch(&self, msgs: &[Msg<'_>]) -> io::Result<usize> {
        let n = msgs.len().min(MAX_BATCH);
        if n == 0 {
            return Ok(0);
        }
        if let Some((link, hop, dst)) = self.link_hop(&msgs[..n]) {
            return link.send(hop, dst, &msgs[..n]);
        }
        // SAFETY: all-zero is a valid bit pattern for these plain C structs.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [[libc::iovec; 2]; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut addrs: [libc::sockaddr_in6; MAX_BATCH] = unsafe { zeroed() };
        let mut cmsgs = [CmsgBuf([0u8; CMSG_SPACE]); MAX_BATCH];
        for i in 0..n {
            let m = &msgs[i];
            let namelen = sockaddr(m.dst, &mut addrs[i]);
            let (iov, pieces) = m.iovecs();
            iovs[i] = iov;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = namelen;
            h.msg_iov = iovs[i].as_mut_ptr();
            h.msg_iovlen = pieces as _;
            if m.segment != 0 && (m.segment as usize) < m.bytes() {
                set_udp_segment(h, &mut cmsgs[i], m.segment);
            }
        }
        // SAFETY: hdrs[..n] point at iovecs, addresses and control buffers that outlive the
        // call.
        unsafe { send_mmsg(&self.sock, &mut hdrs[..n]) }
    }

    /// The link-layer sender and next hop for `msgs` when it has one and they all go to
    /// one IPv4 destination with a known next hop.
    fn link_hop(&self, msgs: &[Msg<'_>]) -> Option<(&LinkTx, NextHop, Ipv4Addr)> {
        let link = self.link.as_ref()?;
        let SocketAddr::V4(d) = msgs.first()?.dst else {
            return None;
        };
        if msgs.iter().any(|m| m.dst != msgs[0].dst) {
            return None;
        }
        Some((link, link.hop(*d.ip())?, *d.ip()))
    }

    /// Sends one message gathered from `iov` with one `sendmsg`; with `segment` non-zero and
    /// smaller than the total, as UDP GSO datagrams of `segment` bytes (the last may be
    /// shorter). The kernel copies the slices once, straight into its buffers: a sender can
    /// pass each datagram as (header, payload slice) without assembling it first. Returns
    /// the bytes sent.
    pub fn send_vectored(
        &self,
        iov: &[std::io::IoSlice<'_>],
        dst: SocketAddr,
        segment: u16,
    ) -> io::Result<usize> {
        let total: usize = iov.iter().map(|s| s.len()).sum();
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut addr: libc::sockaddr_in6 = unsafe { zeroed() };
        let namelen = sockaddr(dst, &mut addr);
        let mut cmsg = CmsgBuf([0u8; CMSG_SPACE]);
        // SAFETY: all-zero is a valid msghdr.
        let mut h: libc::msghdr = unsafe { zeroed() };
        h.msg_name = (&mut addr as *mut libc::sockaddr_in6).cast();
        h.msg_namelen = namelen;
        // IoSlice is ABI-compatible with iovec on Unix (std documents it); sendmsg only reads.
        h.msg_iov = iov.as_ptr() as *mut libc::iovec;
        h.msg_iovlen = iov.len() as _;
        if segment != 0 && (segment as usize) < total {
            set_udp_segment(&mut h, &mut cmsg, segment);
        }
        // SAFETY: h points at the address, the caller's iovecs and the control buffer, all
        // alive for the call.
        let rc = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &h, 0) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Receives up to `batch.capacity()` messages with one `recvmmsg`.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.recv(self.sock.as_raw_fd())
    }
}

impl AsFd for UnderlaySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

const CMSG_SPACE: usize = 64;
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE]);

/// Points `h`'s control data at `cmsg` and writes into it one `UDP_SEGMENT` message of
/// `segment` bytes: the send then goes out as UDP GSO datagrams of that size. `cmsg` must
/// stay alive (and unmoved) until `h` has been sent.
fn set_udp_segment(h: &mut libc::msghdr, cmsg: &mut CmsgBuf, segment: u16) {
    h.msg_control = cmsg.0.as_mut_ptr().cast();
    h.msg_controllen = CMSG_SPACE as _;
    // SAFETY: msg_control points at CMSG_SPACE bytes, enough for one u16 cmsg;
    // CMSG_FIRSTHDR/CMSG_DATA stay inside that buffer.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
        h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
    }
}

/// Writes `a` into `out` as the kernel reads it: a `sockaddr_in6`, or a `sockaddr_in` at
/// the start of the same storage (it is larger, and as aligned). Returns the length.
fn sockaddr(a: SocketAddr, out: &mut libc::sockaddr_in6) -> libc::socklen_t {
    match a {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut s: libc::sockaddr_in = unsafe { zeroed() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            const _: () = assert!(
                size_of::<libc::sockaddr_in>() <= size_of::<libc::sockaddr_in6>()
                    && align_of::<libc::sockaddr_in>() <= align_of::<libc::sockaddr_in6>()
            );
            // SAFETY: `out` is valid for writes of a sockaddr_in6, which is at least as large
            // and as aligned as a sockaddr_in (checked above).
            unsafe { std::ptr::write((out as *mut libc::sockaddr_in6).cast(), s) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut s: libc::sockaddr_in6 = unsafe { zeroed() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_flowinfo = a.flowinfo().to_be();
            s.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            s.sin6_scope_id = a.scope_id();
            *out = s;
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The address the kernel wrote into `s` (a `sockaddr_in` or `sockaddr_in6`, by family);
/// an unknown family reads as the unspecified IPv4 address.
fn from_sockaddr(s: &libc::sockaddr_in6) -> SocketAddr {
    if s.sin6_family == libc::AF_INET6 as libc::sa_family_t {
        return SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(s.sin6_addr.s6_addr),
            u16::from_be(s.sin6_port),
            u32::from_be(s.sin6_flowinfo),
            s.sin6_scope_id,
        ));
    }
    if s.sin6_family != libc::AF_INET as libc::sa_family_t {
        return SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    }
    // SAFETY: the family says the kernel wrote a sockaddr_in at the start of the storage,
    // which is large and aligned enough for one (see `sockaddr`).
    let v4: libc::sockaddr_in = unsafe { std::ptr::read((s as *const libc::sockaddr_in6).cast()) };
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
        u16::from_be(v4.sin_port),
    ))
}

/// Receive buffers and metadata for `recvmmsg`, allocated once per worker.
pub struct RecvBatch {
    bufs: Vec<u8>,
    buf_size: usize,
    lens: Vec<usize>,
    segs: Vec<usize>,
    /// Sender addresses, of either family (a sockaddr_in6 holds a sockaddr_in).
    addrs: Vec<libc::sockaddr_in6>,
    cmsgs: Vec<CmsgBuf>,
}

impl RecvBatch {
    /// `count` buffers of `buf_size` bytes each.
    pub fn new(count: usize, buf_size: usize) -> Self {
        Self {
            bufs: vec![0; count * buf_size],
            buf_size,
            lens: vec![0; count],
            segs: vec![0; count],
            // SAFETY: all-zero is a valid sockaddr_in6.
            addrs: vec![unsafe { zeroed() }; count],
            cmsgs: vec![CmsgBuf([0; CMSG_SPACE]); count],
        }
    }

    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    #[allow(clippy::needless_range_loop)]
    fn recv(&mut self, fd: libc::c_int) -> io::Result<usize> {
        let n = self.capacity().min(MAX_BATCH);
        // SAFETY: all-zero is a valid bit pattern for these plain C structs.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
        for i in 0..n {
            iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.buf_size..].as_mut_ptr().cast(),
                iov_len: self.buf_size,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE as _;
        }
        // SAFETY: every header points into buffers owned by `self` or this stack frame, all
        // live and correctly sized for the duration of the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = rc as usize;
        for i in 0..got {
            self.lens[i] = hdrs[i].msg_len as usize;
            self.segs[i] = 0;
            let h = &hdrs[i].msg_hdr;
            // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_* macros walk
            // only within that length.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        self.segs[i] = v.max(0) as usize;
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        Ok(got)
    }

    /// The longest of the first `n` messages of the last receive, in bytes.
    pub fn largest(&self, n: usize) -> usize {
        self.lens[..n.min(self.lens.len())]
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Message `i` of the last receive: its bytes, the GRO segment size (0 = one datagram)
    /// and the sender.
    pub fn get_from(&self, i: usize) -> (&[u8], usize, SocketAddr) {
        let start = i * self.buf_size;
        let len = self.lens[i].min(self.buf_size);
        (
            &self.bufs[start..start + len],
            self.segs[i],
            from_sockaddr(&self.addrs[i]),
        )
    }

    /// [`Self::get_from`] for an IPv4 socket: the sender as an IPv4 address (an IPv6 one
    /// reads as 0.0.0.0:0, which no lease holds).
    pub fn get(&self, i: usize) -> (&[u8], usize, SocketAddrV4) {
        let (data, seg, from) = self.get_from(i);
        let from = match from {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        (data, seg, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;

    /// One sender and one receiver of `family`'s loopback address: a batch (one GSO run of
    /// two datagrams and a single one) and a vectored send arrive, and each message names
    /// its sender, port included.
    fn round_trip(lo: IpAddr) {
        let rx = UnderlaySocket::udp((lo, 0), 1 << 20).expect("receiver");
        let to = rx.sock.local_addr().unwrap().as_socket().unwrap();
        let tx = UnderlaySocket::udp((lo, 0), 1 << 20).expect("sender");
        let from = tx.sock.local_addr().unwrap().as_socket().unwrap();
        assert_eq!((tx.is_v6(), tx.is_raw()), (lo.is_ipv6(), false));
        assert!(tx.probe_gso());
        let run = [7u8; 200];
        let msgs = [
            Msg::whole(&run, to, 100),
            Msg {
                head: b"o",
                buf: b"ne",
                dst: to,
                segment: 0,
            },
        ];
        assert_eq!(tx.send_batch(&msgs).unwrap(), 2);
        tx.send_vectored(&[IoSlice::new(b"vec"), IoSlice::new(b"tor")], to, 0)
            .unwrap();
        let mut batch = RecvBatch::new(8, 2048);
        let mut got = Vec::new();
        for _ in 0..100 {
            if let Ok(n) = rx.recv_batch(&mut batch) {
                for i in 0..n {
                    let (d, _, who) = batch.get_from(i);
                    assert_eq!(who, from, "the sender, port included");
                    got.push(d.to_vec());
                }
            }
            if got.len() >= 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            got,
            vec![
                vec![7; 100],
                vec![7; 100],
                b"one".to_vec(),
                b"vector".to_vec()
            ]
        );
        // The IPv4 view of an IPv6 sender is nobody's address.
        let (_, _, v4) = batch.get(0);
        assert_eq!(v4.ip().is_unspecified(), lo.is_ipv6());
    }

    #[test]
    fn udp_over_ipv4_and_ipv6() {
        round_trip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        round_trip(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn sockaddr_round_trips() {
        for a in [
            "192.168.77.1:8472".parse::<SocketAddr>().unwrap(),
            "[fd00:77::1]:8472".parse().unwrap(),
            "[fe80::1%3]:4789".parse().unwrap(),
        ] {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut s: libc::sockaddr_in6 = unsafe { zeroed() };
            let len = sockaddr(a, &mut s);
            assert_eq!(from_sockaddr(&s), a);
            assert_eq!(
                len as usize,
                if a.is_ipv4() {
                    size_of::<libc::sockaddr_in>()
                } else {
                    size_of::<libc::sockaddr_in6>()
                }
            );
        }
    }
}
