//! CPUs for `--steer cpu`: the set the process may run on, pinning the calling thread to
//! some of them, and the eBPF program a multi-queue TUN/TAP runs to pick a packet's queue:
//! the number of the CPU sending it (the kernel's tun takes `return value % queues`).
//!
//! The program is two instructions (`call bpf_get_smp_processor_id; exit`), loaded with the
//! raw `bpf(BPF_PROG_LOAD)` syscall: the Rust eBPF loaders (aya, libbpf-rs) load compiled
//! ELF objects, which would need clang or a C library for two instructions.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The CPUs the calling thread may run on (the process's set, unless changed), ascending.
pub fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes a pointer to a live cpu_set_t and its exact size; 0 = the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let bits = 8 * size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads one bit of a live set; every index is below its size.
    Ok((0..bits)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the calling thread to `cpus` (none: left as it is).
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let bits = 8 * size_of::<libc::cpu_set_t>();
    for &c in cpus.iter().filter(|&&c| c < bits) {
        // SAFETY: CPU_SET writes one bit of a live set; `c` is below its size.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: passes a pointer to a live cpu_set_t and its exact size; 0 = the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register (low 4 bits), source register (high 4 bits).
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// `BPF_JMP | BPF_CALL`, `BPF_JMP | BPF_EXIT`; helper 8 = `bpf_get_smp_processor_id`.
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const GET_SMP_PROCESSOR_ID: i32 = 8;

/// The program: R0 = the current CPU's number, returned. Pure: the instructions only.
pub const CPU_PROGRAM: [Insn; 2] = [
    Insn {
        code: CALL,
        regs: 0,
        off: 0,
        imm: GET_SMP_PROCESSOR_ID,
    },
    Insn {
        code: EXIT,
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `prog_flags` (the kernel zero-fills
/// the rest).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// Loads [`CPU_PROGRAM`] as a socket filter (the type `TUNSETSTEERINGEBPF` takes); the
/// descriptor keeps it alive until whoever it is attached to holds its own reference.
/// The error names the cause and the way around it.
pub fn load_cpu_program() -> io::Result<OwnedFd> {
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: CPU_PROGRAM.len() as u32,
        insns: CPU_PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: bpf(2) reads `attr` (its exact size) and, through it, the instruction array
    // and the license string, all alive for the call; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "--steer cpu: cannot load the eBPF queue-steering program (bpf(BPF_PROG_LOAD): \
                 {e}; it needs CAP_BPF or CAP_SYS_ADMIN and a kernel with eBPF); \
                 use --steer flow"
            ),
        ));
    }
    // SAFETY: `fd` was just returned by bpf(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pinned_runs_only_where_it_was_pinned() {
        let all = allowed().unwrap();
        assert!(!all.is_empty());
        let last = *all.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current_thread(&[last]).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            let now = unsafe { libc::sched_getcpu() };
            (allowed().unwrap(), now)
        })
        .join()
        .unwrap();
        assert_eq!(seen, (vec![last], last as i32));
        assert_eq!(allowed().unwrap(), all, "the caller's own set is unchanged");
    }
}
