//! TUN/TAP devices through `/dev/net/tun` ioctls: open (optionally multi-queue and with a
//! virtio-net header), enable offloads, and move packets with plain `read`/`write`/`writev`
//! (through `File`: only the ioctls need `unsafe`).
//!
//! Written over `libc` rather than through a crate because the data plane needs exactly
//! `IFF_VNET_HDR` + `TUNSETOFFLOAD` + `IFF_MULTI_QUEUE` and nothing else; the offload logic
//! itself lives in the pure `offload` module. The device disappears when its last queue is
//! closed (it is never made persistent), which is how a clean shutdown removes it together
//! with its addresses and routes.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

const IFF_TUN: libc::c_short = 0x0001;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `TUNSETOFFLOAD` flags.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;
/// Linux ≥ 6.17: UDP-tunnel GSO packets (and their outer UDP checksum) may cross the
/// device, described by the 24-byte tunnel header ([`crate::wire::virtio::TUNNEL_LEN`]).
pub const TUN_F_UDP_TUNNEL_GSO: u32 = 0x80;
pub const TUN_F_UDP_TUNNEL_GSO_CSUM: u32 = 0x100;

/// Layer of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// IP packets (`IFF_TUN`).
    Tun,
    /// Ethernet frames (`IFF_TAP`).
    Tap,
}

/// How to open the device.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    pub kind: Kind,
    /// Number of queues (file descriptors); more than one sets `IFF_MULTI_QUEUE`.
    pub queues: usize,
    /// Prefix every packet with a `virtio_net_hdr` and ask for TSO/checksum offload.
    pub vnet_hdr: bool,
    /// With `vnet_hdr`: the 24-byte header with the UDP-tunnel fields
    /// (`virtio_net_hdr_v1_hash_tunnel`) instead of the 10-byte one.
    pub tunnel_hdr: bool,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One queue of an open TUN/TAP device.
#[derive(Debug)]
pub struct Queue {
    file: File,
}

/// An open device: its kernel name and one [`Queue`] per worker.
#[derive(Debug)]
pub struct Device {
    pub name: String,
    pub queues: Vec<Queue>,
    /// Offload flags the kernel accepted (0 when offloads are off or refused).
    pub offloads: u32,
}

impl Device {
    /// Opens (creating) the device with `opts.queues` queues.
    pub fn open(opts: &Options) -> io::Result<Device> {
        if opts.name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device name {:?} is longer than 15 bytes", opts.name),
            ));
        }
        let queues = opts.queues.max(1);
        let mut flags = IFF_NO_PI
            | match opts.kind {
                Kind::Tun => IFF_TUN,
                Kind::Tap => IFF_TAP,
            };
        if queues > 1 {
            flags |= IFF_MULTI_QUEUE;
        }
        if opts.vnet_hdr {
            flags |= IFF_VNET_HDR;
        }
        let mut out = Vec::with_capacity(queues);
        let mut name = opts.name.clone();
        for _ in 0..queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/net/tun")?;
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags,
                _pad: [0; 22],
            };
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a properly sized,
            // initialised repr(C) ifreq that lives for the duration of the call.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            let end = req
                .name
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(libc::IFNAMSIZ);
            name = String::from_utf8_lossy(&req.name[..end]).into_owned();
            if opts.vnet_hdr {
                let size = if opts.tunnel_hdr {
                    crate::wire::virtio::TUNNEL_LEN
                } else {
                    crate::wire::virtio::LEN
                } as libc::c_int;
                // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
                let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            out.push(Queue { file });
        }
        Ok(Device {
            name,
            queues: out,
            offloads: 0,
        })
    }

    /// Asks for `flags` offloads on every queue; returns the error when the kernel refuses.
    pub fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        for q in &self.queues {
            // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
            let rc =
                unsafe { libc::ioctl(q.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.offloads = flags;
        Ok(())
    }

    /// `--steer cpu`: packets the kernel sends through the device go to the queue of the
    /// CPU sending them (`cpu % queues`), by the eBPF program of [`super::cpu`] instead of
    /// the automatic flow steering. Set on the device (through any queue); nothing to do
    /// with one queue.
    pub fn steer_by_cpu(&self) -> io::Result<()> {
        let Some(q) = self.queues.first().filter(|_| self.queues.len() > 1) else {
            return Ok(());
        };
        let prog = super::cpu::load_cpu_program()?;
        let fd: libc::c_int = prog.as_raw_fd();
        // SAFETY: TUNSETSTEERINGEBPF reads one int (the program's descriptor) through the
        // pointer, valid for the call; the device takes its own reference to the program.
        let rc = unsafe { libc::ioctl(q.file.as_raw_fd(), TUNSETSTEERINGEBPF, &fd) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "--steer cpu: cannot attach the queue-steering program to {} \
                     (TUNSETSTEERINGEBPF: {e}); use --steer flow",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

impl Queue {
    /// Reads one packet (with its virtio header when enabled).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Writes one packet gathered from `parts` in one `writev` (virtio header, Ethernet
    /// addresses, an 802.1Q tag, the rest...): headers are put in front of a packet without
    /// copying it. A device takes each write as exactly one packet.
    pub fn write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(parts)
    }

    /// Switches the queue to non-blocking mode (workers poll before reading).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        set_nonblocking(self.file.as_raw_fd())
    }
}

impl AsFd for Queue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers involved.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An eventfd that, once signalled, stays readable: polled beside a worker's descriptors, it
/// wakes the worker to stop without a periodic timeout.
#[derive(Debug)]
pub struct Wakeup(OwnedFd);

impl Wakeup {
    pub fn new() -> io::Result<Wakeup> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        Ok(Wakeup(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable, until [`Self::clear`].
    pub fn signal(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to our own descriptor.
        let rc = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the descriptor unreadable again (a no-op when it was not signalled).
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local buffer from our own descriptor,
        // which is non-blocking: unsignalled, it fails with EAGAIN, which is what we want.
        unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

impl AsFd for Wakeup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Most descriptors [`poll_readable`] polls.
pub const POLL_MAX: usize = 5;

/// Waits until one of `fds` (at most [`POLL_MAX`]) is readable or `timeout_ms` passes (-1:
/// no timeout); returns the readable mask.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<u32> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; POLL_MAX];
    let n = fds.len().min(POLL_MAX);
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd.as_raw_fd();
        p.events = libc::POLLIN;
    }
    // SAFETY: `pfds[..n]` is a valid array of initialised pollfd structs.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    let mut mask = 0;
    for (i, p) in pfds[..n].iter().enumerate() {
        if p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            mask |= 1 << i;
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netns::tests::{is_root, skip, TempNs};
    use crate::sys::{cpu, netns};
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn ip(ns: &str, args: &str) {
        let mut full = vec!["-n", ns];
        full.extend(args.split(' '));
        let st = Command::new("ip").args(&full).status().unwrap();
        assert!(st.success(), "ip {full:?}");
    }

    /// The UDP destination port of an IPv4 packet read from the TUN (0 for anything else).
    fn udp_port(p: &[u8]) -> u16 {
        let ok = p.len() >= 28 && p[0] == 0x45 && p[9] == 17;
        if ok {
            u16::from_be_bytes([p[22], p[23]])
        } else {
            0
        }
    }

    /// Which queue each of the datagrams a thread pinned to `cpu` sends through the device
    /// comes out of: four flows (ports 4000 + 8 cpu + 0..4), which the automatic flow
    /// steering would hash over both queues (every other packet, IPv6 chatter, is ignored).
    fn queues_read(ns: &str, dev: &Device, cpu: usize) -> Vec<usize> {
        let ports = 4000 + 8 * cpu as u16..4004 + 8 * cpu as u16;
        let flows = ports.clone();
        netns::run_in_netns(ns, move || {
            cpu::pin_current_thread(&[cpu]).unwrap();
            let tx = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
            for port in flows {
                tx.send_to(b"steer", ("10.99.0.2", port)).unwrap();
            }
        })
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        let t0 = Instant::now();
        while seen.len() < 4 && t0.elapsed() < Duration::from_secs(5) {
            for (i, q) in dev.queues.iter().enumerate() {
                while let Ok(n) = q.read(&mut buf) {
                    if ports.contains(&udp_port(&buf[..n])) {
                        seen.push(i);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    }

    #[test]
    fn netns_tun_queue_is_the_sending_cpus() {
        let test = "netns_tun_queue_is_the_sending_cpus";
        if !is_root() && skip(test, "needs root (a TUN in a namespace)") {
            return;
        }
        let cpus = cpu::allowed().unwrap();
        if cpus.len() < 2 && skip(test, "needs 2 CPUs") {
            return;
        }
        let ns = TempNs::new();
        let dev = netns::run_in_netns(&ns.0, || {
            Device::open(&Options {
                name: "ovsteer0".into(),
                kind: Kind::Tun,
                queues: 2,
                vnet_hdr: false,
                tunnel_hdr: false,
            })
        })
        .unwrap()
        .unwrap();
        dev.steer_by_cpu().unwrap();
        for q in &dev.queues {
            q.set_nonblocking().unwrap();
        }
        ip(&ns.0, "addr add 10.99.0.1/24 dev ovsteer0");
        ip(&ns.0, "link set ovsteer0 up");
        for &c in &cpus[..2] {
            assert_eq!(
                queues_read(&ns.0, &dev, c),
                vec![c % 2; 4],
                "sent from CPU {c}"
            );
        }
    }
}
