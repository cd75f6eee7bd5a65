//! Underlay sockets: UDP with GSO (`UDP_SEGMENT`) and GRO (`UDP_GRO`), and the raw IPv4
//! socket for GRE (IP protocol 47), each moved in batches with `sendmmsg`/`recvmmsg`.
//!
//! All buffers and message headers are owned by the caller or by a [`RecvBatch`] allocated
//! once per worker, so a steady-state send or receive allocates nothing.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use socket2::{Domain, Protocol, Socket, Type};

const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most datagrams one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most messages one `sendmmsg` call carries here.
pub const MAX_BATCH: usize = 64;

/// An underlay socket: UDP (udp and vxlan backends) or raw GRE.
#[derive(Debug)]
pub struct UnderlaySocket {
    sock: Socket,
    raw: bool,
}

/// One outgoing message: `buf` to `dst`, split by the kernel into `segment`-byte datagrams
/// when `segment` is non-zero (UDP GSO).
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub buf: &'a [u8],
    pub dst: SocketAddrV4,
    pub segment: u16,
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl UnderlaySocket {
    /// A UDP socket bound to `bind`, with `SO_REUSEPORT` so that every worker queue can own one.
    pub fn udp(bind: SocketAddrV4, buffer_bytes: usize) -> io::Result<Self> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        sock.set_reuse_port(true)?;
        sock.set_reuse_address(true)?;
        Self::buffers(&sock, buffer_bytes);
        // Outer DF clear, as the kernel's VXLAN sends: the underlay may fragment rather
        // than drop when its MTU is smaller than ours assumed.
        let _ = setsockopt_int(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        );
        sock.bind(&bind.into())?;
        sock.set_nonblocking(true)?;
        Ok(Self { sock, raw: false })
    }

    /// A raw IPv4 socket for IP protocol 47 (GRE), bound to `bind`. Received packets start
    /// with the outer IPv4 header; sent ones get it from the kernel.
    pub fn raw_gre(bind: Ipv4Addr, buffer_bytes: usize) -> io::Result<Self> {
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW.cloexec(),
            Some(Protocol::from(libc::IPPROTO_GRE)),
        )?;
        Self::buffers(&sock, buffer_bytes);
        sock.bind(&SocketAddrV4::new(bind, 0).into())?;
        sock.set_nonblocking(true)?;
        Ok(Self { sock, raw: true })
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

    pub fn is_raw(&self) -> bool {
        self.raw
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
        // SAFETY: all-zero is a valid bit pattern for these plain C structs.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut addrs: [libc::sockaddr_in; MAX_BATCH] = unsafe { zeroed() };
        let mut cmsgs = [CmsgBuf([0u8; CMSG_SPACE]); MAX_BATCH];
        for i in 0..n {
            let m = &msgs[i];
            addrs[i] = sockaddr(m.dst);
            iovs[i] = libc::iovec {
                iov_base: m.buf.as_ptr() as *mut _,
                iov_len: m.buf.len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if m.segment != 0 && (m.segment as usize) < m.buf.len() {
                set_udp_segment(h, &mut cmsgs[i], m.segment);
            }
        }
        // SAFETY: hdrs[..n] point at iovecs, addresses and control buffers that outlive the call.
        let rc = unsafe {
            libc::sendmmsg(
                self.sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Sends one message gathered from `iov` with one `sendmsg`; with `segment` non-zero and
    /// smaller than the total, as UDP GSO datagrams of `segment` bytes (the last may be
    /// shorter). The kernel copies the slices once, straight into its buffers: a sender can
    /// pass each datagram as (header, payload slice) without assembling it first. Returns
    /// the bytes sent.
    pub fn send_vectored(
        &self,
        iov: &[std::io::IoSlice<'_>],
        dst: SocketAddrV4,
        segment: u16,
    ) -> io::Result<usize> {
        let total: usize = iov.iter().map(|s| s.len()).sum();
        let mut addr = sockaddr(dst);
        let mut cmsg = CmsgBuf([0u8; CMSG_SPACE]);
        // SAFETY: all-zero is a valid msghdr.
        let mut h: libc::msghdr = unsafe { zeroed() };
        h.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
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

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(a.ip().octets()),
    };
    s
}

/// Receive buffers and metadata for `recvmmsg`, allocated once per worker.
pub struct RecvBatch {
    bufs: Vec<u8>,
    buf_size: usize,
    lens: Vec<usize>,
    segs: Vec<usize>,
    addrs: Vec<libc::sockaddr_in>,
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
            // SAFETY: all-zero is a valid sockaddr_in.
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
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
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

    /// Message `i` of the last receive: its bytes, the GRO segment size (0 = one datagram)
    /// and the sender.
    pub fn get(&self, i: usize) -> (&[u8], usize, SocketAddrV4) {
        let start = i * self.buf_size;
        let len = self.lens[i].min(self.buf_size);
        let a = &self.addrs[i];
        let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
        (
            &self.bufs[start..start + len],
            self.segs[i],
            SocketAddrV4::new(ip, u16::from_be(a.sin_port)),
        )
    }
}
