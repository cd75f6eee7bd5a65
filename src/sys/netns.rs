//! Running code inside a named network namespace (`ip netns add NAME`, i.e. `/run/netns/NAME`).
//!
//! A network namespace is a per-thread attribute on Linux, so entering one is done on a fresh
//! thread that `setns(2)`s into it and then runs the caller's closure; the caller's own thread
//! never changes namespace. Sockets keep the namespace they were created in, so a socket made
//! inside the closure and returned from it keeps working from any thread afterwards.
//!
//! Used by the end-to-end tests and the benchmark harness; the daemon itself does not need it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

/// Directory where `ip netns` keeps its named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Path of the named namespace `name`, refusing names that could escape [`NETNS_RUN_DIR`].
pub fn netns_path(name: &str) -> io::Result<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid network namespace name {name:?}"),
        ));
    }
    Ok(PathBuf::from(NETNS_RUN_DIR).join(name))
}

/// Moves the calling thread into the network namespace referred to by `ns`.
fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: `ns` is an open file descriptor owned by `ns` for the whole call; setns only reads
    // the descriptor number and the flag, and affects nothing but the calling thread's namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A thread running inside a network namespace, made by [`spawn_in_netns`].
#[derive(Debug)]
pub struct NetnsThread<T> {
    /// `None` only when the thread failed to enter the namespace, which `spawn_in_netns`
    /// already reported; a handle given to a caller always yields `Some`.
    inner: JoinHandle<Option<T>>,
}

impl<T> NetnsThread<T> {
    /// Waits for the thread; `Err` carries the panic payload if the closure panicked.
    pub fn join(self) -> thread::Result<T> {
        match self.inner.join()? {
            Some(v) => Ok(v),
            // Unreachable by construction (see the field doc); reported as a panic payload
            // rather than a panic of our own.
            None => Err(Box::new("netns thread never ran its closure")),
        }
    }

    /// Whether the closure has returned (or panicked).
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }
}

/// Spawns a thread that enters the network namespace `name` and then runs `f`.
///
/// Returns once the thread is inside the namespace (or failed to enter it, which is reported
/// as the error); the closure's result comes from [`NetnsThread::join`].
pub fn spawn_in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<NetnsThread<T>> {
    let path = netns_path(name)?;
    let ns = File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    let (entered_tx, entered_rx) = mpsc::sync_channel::<io::Result<()>>(1);
    let handle = thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            let entered = enter(&ns);
            drop(ns);
            let failed = entered.is_err();
            // The receiver only goes away if the spawner itself panicked; nothing to report to.
            let _ = entered_tx.send(entered);
            if failed {
                // Never run `f` in the wrong namespace.
                return None;
            }
            Some(f())
        })?;
    match entered_rx.recv() {
        Ok(Ok(())) => Ok(NetnsThread { inner: handle }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(io::Error::new(
                e.kind(),
                format!("setns into {}: {e}", path.display()),
            ))
        }
        Err(_) => Err(io::Error::other(
            "netns thread exited before entering the namespace",
        )),
    }
}

/// Runs `f` on a new thread inside the network namespace `name` and returns its result.
///
/// A panic inside `f` is propagated to the caller unchanged.
pub fn run_in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let handle = spawn_in_netns(name, f)?;
    match handle.join() {
        Ok(v) => Ok(v),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Helpers for the sys tests that need a namespace of their own or may have to skip.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    static SEQ: AtomicU32 = AtomicU32::new(0);

    pub(crate) fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// The inode of the calling thread's network namespace.
    fn current_netns_inode() -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net")
            .expect("stat /proc/thread-self/ns/net")
            .ino()
    }

    /// Records that `test` is skipped because of `reason`, as tests/common's `skip` does
    /// (a banner, and a line in the file `OVERLAYD_SKIP_LOG` names); returns `true`.
    pub(crate) fn skip(test: &str, reason: &str) -> bool {
        use std::io::Write;
        eprintln!("\n!!! SKIP {test}: {reason}\n");
        if let Some(log) = std::env::var_os("OVERLAYD_SKIP_LOG") {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log);
            let _ = f.and_then(|mut f| writeln!(f, "SKIP {test}: {reason}"));
        }
        true
    }

    /// A throwaway namespace, deleted on drop.
    pub(crate) struct TempNs(pub(crate) String);

    impl TempNs {
        pub(crate) fn new() -> TempNs {
            let name = format!(
                "ovt-{}-{}-unit",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let st = Command::new("ip").args(["netns", "add", &name]).status();
            assert!(
                st.map(|s| s.success()).unwrap_or(false),
                "ip netns add {name}"
            );
            TempNs(name)
        }
    }

    impl Drop for TempNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            let err = run_in_netns(bad, || ()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn missing_namespace_is_not_found() {
        let err = run_in_netns("ovt-no-such-namespace-xyz", || ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn netns_runs_closure_inside_namespace() {
        if !is_root() {
            eprintln!(
                "!!! SKIPPED netns_runs_closure_inside_namespace: needs root (CAP_SYS_ADMIN)"
            );
            return;
        }
        let ns = TempNs::new();
        let outer = current_netns_inode();
        let inner = run_in_netns(&ns.0, current_netns_inode).expect("run_in_netns");
        assert_ne!(outer, inner, "closure ran in the caller's namespace");
        assert_eq!(outer, current_netns_inode(), "caller's namespace changed");

        // A socket made inside stays inside: only lo exists there and it is down, so binding
        // a UDP socket to 127.0.0.1 works (the address exists) but the namespace differs.
        let sock = run_in_netns(&ns.0, || std::net::UdpSocket::bind("127.0.0.1:0"))
            .expect("run_in_netns")
            .expect("bind");
        drop(sock);

        let t = spawn_in_netns(&ns.0, current_netns_inode).expect("spawn_in_netns");
        assert_eq!(t.join().expect("join"), inner);
    }

    #[test]
    fn panic_in_closure_propagates() {
        if !is_root() {
            eprintln!("!!! SKIPPED panic_in_closure_propagates: needs root (CAP_SYS_ADMIN)");
            return;
        }
        let ns = TempNs::new();
        let name = ns.0.clone();
        let r = std::panic::catch_unwind(move || run_in_netns(&name, || panic!("boom")));
        assert!(r.is_err());
    }
}
