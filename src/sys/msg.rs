//! What the underlay sockets share: one outgoing message of a `sendmmsg` batch, the batch
//! call itself, and setting a socket option.

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::Socket;

/// Most messages one `sendmmsg` call carries here.
pub const MAX_BATCH: usize = 64;

/// One outgoing message: `head` then `buf` (gathered by the kernel: a segment's headers
/// need not be copied in front of its payload; `head` is empty for a message in one
/// piece) to `dst`, split by the kernel into `segment`-byte datagrams when `segment` is
/// non-zero (UDP GSO).
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub head: &'a [u8],
    pub buf: &'a [u8],
    pub dst: SocketAddr,
    pub segment: u16,
}

impl<'a> Msg<'a> {
    /// A message in one piece.
    pub fn whole(buf: &'a [u8], dst: SocketAddr, segment: u16) -> Self {
        Msg {
            head: &[],
            buf,
            dst,
            segment,
        }
    }

    /// Bytes in all.
    pub fn bytes(&self) -> usize {
        self.head.len() + self.buf.len()
    }

    /// The message's pieces as iovecs (the empty `head` left out), and how many there are.
    pub fn iovecs(&self) -> ([libc::iovec; 2], usize) {
        let iov = |b: &[u8]| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        };
        match self.head.is_empty() {
            true => ([iov(self.buf), iov(&[])], 1),
            false => ([iov(self.head), iov(self.buf)], 2),
        }
    }
}

/// One `sendmmsg` of `hdrs` on `sock`: how many messages the kernel took.
///
/// # Safety
/// Every header's name, iovecs (and what they point at) and control buffer must be alive
/// and valid for the call.
pub(super) unsafe fn send_mmsg(sock: &Socket, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: passes `hdrs.len()` headers of a live slice; what they point at is alive
    // (this function's contract).
    let rc = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Sets a socket option whose value is `v` (a plain C struct or integer, passed by pointer
/// with its exact size; the kernel copies it before returning).
pub(crate) fn setsockopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live T and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
