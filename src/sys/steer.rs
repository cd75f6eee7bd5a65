//! Which socket of a `SO_REUSEPORT` group receives a datagram: by the inner flow it carries,
//! not by the outer addresses and ports (a classic BPF program on the group,
//! `SO_ATTACH_REUSEPORT_CBPF`).
//!
//! The kernel's own choice hashes the outer 4-tuple. A peer that sends every small packet
//! from one port (flannel's udp backend sends from 8285) then lands all of them on one
//! socket, so one worker writes every flow's packets into the TUN, and the TUN's automatic
//! queue steering (a flow's outgoing packets go to the queue its incoming ones were written
//! by) puts every flow's transmit on that worker too: four TCP streams share one worker per
//! host while the other idles. Hashing the inner addresses and ports spreads flows over the
//! group's sockets, one flow always to the same one (no reordering within a flow). What is
//! not an IPv4/IPv6 TCP or UDP packet at the expected offset (ARP, fragments' tails aside)
//! is left to the kernel's hash.
//!
//! With `--steer cpu` the group gets [`cpu_program`] instead: the socket of the CPU the
//! datagram is received on (`cpu % sockets`), whose worker is pinned there, so a wakeup is
//! always local.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use super::socket::setsockopt;

/// Classic BPF opcodes (linux/filter.h): loads, ALU on A, jumps, returns.
#[rustfmt::skip]
mod code {
    pub const LD_B_ABS: u16 = 0x30; pub const LD_W_ABS: u16 = 0x20; pub const LD_W_IND: u16 = 0x40;
    pub const LDX_B_MSH: u16 = 0xb1; pub const TAX: u16 = 0x07; pub const RSH_K: u16 = 0x74;
    pub const XOR_X: u16 = 0xac; pub const MUL_K: u16 = 0x24; pub const MOD_K: u16 = 0x94;
    pub const JEQ_K: u16 = 0x15; pub const JA: u16 = 0x05;
    pub const RET_A: u16 = 0x16; pub const RET_K: u16 = 0x06;
}
use code::*;

/// `SKF_AD_OFF + SKF_AD_CPU`: an absolute load there reads the current CPU's number.
const AD_CPU: u32 = 0xffff_f000 + 36;

/// An index past every group: the kernel then picks by its own hash.
const NONE: u32 = u32::MAX;

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program for a group of `sockets` sockets whose datagrams carry the inner IP packet
/// `inner_ip_at` bytes into the UDP payload (0 for flannel's udp, 22 for vxlan): socket
/// index = a hash of the inner ports and (IPv4) addresses or (IPv6) their last 32 bits.
/// Pure: the instructions only.
pub fn inner_flow_program(inner_ip_at: u32, sockets: u32) -> Vec<libc::sock_filter> {
    let o = inner_ip_at;
    vec![
        op(LD_B_ABS, 0, 0, o), // 0: version
        op(RSH_K, 0, 0, 4),
        op(JEQ_K, 12, 0, 4),        // 2: IPv4 → 15
        op(JEQ_K, 0, 29, 6),        // 3: not IPv6 → 33
        op(LD_B_ABS, 0, 0, o + 6),  // 4: IPv6 next header
        op(JEQ_K, 1, 0, 6),         // TCP → 7
        op(JEQ_K, 0, 26, 17),       // 6: not UDP → 33
        op(LD_W_ABS, 0, 0, o + 40), // 7: ports
        op(TAX, 0, 0, 0),
        op(LD_W_ABS, 0, 0, o + 20), // source address, last word
        op(XOR_X, 0, 0, 0),
        op(TAX, 0, 0, 0),
        op(LD_W_ABS, 0, 0, o + 36), // destination address, last word
        op(XOR_X, 0, 0, 0),
        op(JA, 0, 0, 11),          // 14: → 26
        op(LD_B_ABS, 0, 0, o + 9), // 15: IPv4 protocol
        op(JEQ_K, 1, 0, 6),        // TCP → 18
        op(JEQ_K, 0, 15, 17),      // 17: not UDP → 33
        op(LDX_B_MSH, 0, 0, o),    // 18: X = header length
        op(LD_W_IND, 0, 0, o),     // ports
        op(TAX, 0, 0, 0),
        op(LD_W_ABS, 0, 0, o + 12), // source address
        op(XOR_X, 0, 0, 0),
        op(TAX, 0, 0, 0),
        op(LD_W_ABS, 0, 0, o + 16), // destination address
        op(XOR_X, 0, 0, 0),
        op(TAX, 0, 0, 0), // 26: fold, mix, pick
        op(RSH_K, 0, 0, 16),
        op(XOR_X, 0, 0, 0),
        op(MUL_K, 0, 0, 0x9e37_79b1),
        op(RSH_K, 0, 0, 16),
        op(MOD_K, 0, 0, sockets.max(1)),
        op(RET_A, 0, 0, 0),
        op(RET_K, 0, 0, NONE), // 33
    ]
}

/// The program for a group of `sockets` sockets that picks the one of the receiving CPU:
/// `ld [SKF_AD_OFF + SKF_AD_CPU]; mod #sockets; ret a`. Pure: the instructions only.
pub fn cpu_program(sockets: u32) -> Vec<libc::sock_filter> {
    vec![
        op(LD_W_ABS, 0, 0, AD_CPU),
        op(MOD_K, 0, 0, sockets.max(1)),
        op(RET_A, 0, 0, 0),
    ]
}

/// Attaches [`inner_flow_program`] to the `SO_REUSEPORT` group `sock` belongs to (bound
/// already; the group has `sockets` members, in the order they were bound).
pub fn steer_by_inner_flow(sock: &impl AsFd, inner_ip_at: usize, sockets: usize) -> io::Result<()> {
    attach(
        sock,
        inner_flow_program(
            u32::try_from(inner_ip_at).unwrap_or(u32::MAX - 64),
            group_size(sockets),
        ),
    )
}

/// Attaches [`cpu_program`] to the `SO_REUSEPORT` group `sock` belongs to (bound already;
/// `sockets` members, in the order they were bound).
/// The error names the cause and the way around it.
pub fn steer_by_cpu(sock: &impl AsFd, sockets: usize) -> io::Result<()> {
    attach(sock, cpu_program(group_size(sockets))).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "--steer cpu: cannot attach the CPU program to the SO_REUSEPORT group \
                 (SO_ATTACH_REUSEPORT_CBPF: {e}); use --steer flow"
            ),
        )
    })
}

fn group_size(sockets: usize) -> u32 {
    u32::try_from(sockets).unwrap_or(u32::MAX)
}

/// Attaches `prog` to the `SO_REUSEPORT` group of `sock`.
fn attach(sock: &impl AsFd, mut prog: Vec<libc::sock_filter>) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // `filter` points at `prog`, alive until the kernel has copied the instructions.
    setsockopt(
        sock.as_fd().as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &fprog,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::{RecvBatch, UnderlaySocket};
    use std::net::{SocketAddr, UdpSocket};

    /// An inner IPv4 TCP header (no options) from port `sport` to 5201, `pad` bytes of
    /// encapsulation in front.
    fn inner_v4(pad: usize, sport: u16) -> Vec<u8> {
        let mut p = vec![0u8; pad + 40];
        let ip = &mut p[pad..];
        ip[0] = 0x45;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 244, 1, 0]);
        ip[16..20].copy_from_slice(&[10, 244, 2, 0]);
        ip[20..22].copy_from_slice(&sport.to_be_bytes());
        ip[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p
    }

    /// Which of `socks` received each datagram sent, in order (one at a time).
    fn receivers(socks: &[UnderlaySocket], to: SocketAddr, dgrams: &[Vec<u8>]) -> Vec<usize> {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new(1, 2048);
        dgrams
            .iter()
            .map(|d| {
                tx.send_to(d, to).unwrap();
                let t0 = std::time::Instant::now();
                loop {
                    if let Some(i) = socks.iter().position(|s| s.recv_batch(&mut batch).is_ok()) {
                        return i;
                    }
                    assert!(t0.elapsed().as_secs() < 5, "datagram not received");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
            .collect()
    }

    fn group(n: usize) -> (Vec<UnderlaySocket>, SocketAddr) {
        let first = UnderlaySocket::udp(SocketAddr::from(([127, 0, 0, 1], 0)), 1 << 20).unwrap();
        let at = socket2::SockRef::from(&first)
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap();
        let mut v = vec![first];
        v.extend((1..n).map(|_| UnderlaySocket::udp(at, 1 << 20).unwrap()));
        (v, at)
    }

    #[test]
    fn flows_from_one_outer_port_spread_over_the_group_each_to_one_socket() {
        for pad in [0usize, 22] {
            let (socks, at) = group(2);
            steer_by_inner_flow(&socks[0], pad, 2).unwrap();
            let flows: Vec<Vec<u8>> = (0..16).map(|i| inner_v4(pad, 40000 + i)).collect();
            let first = receivers(&socks, at, &flows);
            // Everything comes from one sender port: the kernel's hash alone would put
            // every datagram on one socket.
            assert!(
                first.contains(&0) && first.contains(&1),
                "pad {pad}: {first:?}"
            );
            assert_eq!(
                receivers(&socks, at, &flows),
                first,
                "a flow stays on its socket"
            );
        }
    }

    #[test]
    fn what_is_not_an_inner_tcp_or_udp_packet_is_still_delivered() {
        let (socks, at) = group(2);
        steer_by_inner_flow(&socks[0], 0, 2).unwrap();
        let odd = vec![vec![0u8; 3], vec![0x45, 0, 0, 0], {
            let mut p = inner_v4(0, 1);
            p[9] = 1; // ICMP
            p
        }];
        assert_eq!(receivers(&socks, at, &odd).len(), 3);
    }

    #[test]
    fn each_datagram_lands_on_the_socket_of_the_cpu_that_sent_it() {
        let test = "each_datagram_lands_on_the_socket_of_the_cpu_that_sent_it";
        let cpus = crate::sys::cpu::allowed().unwrap();
        if cpus.len() < 2 && crate::sys::netns::tests::skip(test, "needs 2 CPUs") {
            return;
        }
        let (socks, at) = group(2);
        steer_by_cpu(&socks[0], 2).unwrap();
        let mut batch = RecvBatch::new(1, 2048);
        for &cpu in &cpus[..2] {
            // Loopback receives in the sender's context: on the sender's CPU.
            std::thread::spawn(move || {
                crate::sys::cpu::pin_current_thread(&[cpu]).unwrap();
                let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                for i in 0..8u8 {
                    tx.send_to(&[i; 32], at).unwrap();
                }
            })
            .join()
            .unwrap();
            let mut got = [0usize; 2];
            let t0 = std::time::Instant::now();
            while got.iter().sum::<usize>() < 8 && t0.elapsed().as_secs() < 5 {
                for (i, s) in socks.iter().enumerate() {
                    while let Some(n) = s.recv_batch(&mut batch).ok().filter(|&n| n > 0) {
                        got[i] += n;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let mut want = [0usize; 2];
            want[cpu % 2] = 8;
            assert_eq!(got, want, "datagrams sent from CPU {cpu}");
        }
    }
}
