//! What the underlay sockets share: one outgoing message of a `sendmmsg` batch, the batch
//! call itself, and setting a socket option.

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::Socket;

/// Most messages one `sendmmsg` call carries here.
pub const MAX_BATCH: usize = 64;

/// One outgoing message: `buf` to `dst`, split by the kernel into `segment`-byte datagrams
/// when `segment` is non-zero (UDP GSO).
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub buf: &'a [u8],
    pub dst: SocketAddr,
    pub segment: u16,
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
