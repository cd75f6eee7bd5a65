//! The daemon's own lifecycle: stopping promptly on SIGTERM/SIGINT whatever it is waiting
//! on, and one daemon per host (network namespace) and overlay device.
//!
//! Stopping: [`Stop`] records the first signal. Until the daemon's main loop runs, the whole
//! start-up (waiting for etcd, for the config, for a lease, for a device, any retry back-off)
//! is raced against it by [`Stop::race`]: a signal drops the start-up future, and with it
//! everything it made (the device closes with its file descriptors, and the kernel removes it
//! and its routes); the lease stays, as on any stop. Once the main loop runs
//! ([`Stop::serving`]), the loop stops in order itself.
//!
//! One instance: [`claim`] takes an exclusive `flock` on `<run dir>/<device>.lock` (the pid
//! inside names the holder) and then checks that no other process holds the TUN device
//! itself (an instance started without the lock, or with another run dir) and that the name
//! is not taken by a device of another kind. Both happen before the lease is touched or the
//! device opened, so a refused instance changes nothing. The lock file is opened without
//! following a symbolic link, and refused unless it is a regular file owned by us: someone
//! who can write to the run directory must not make us write our pid through a link, or
//! hold our lock on a file of theirs.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::host::Netlink;

/// Default `--run-dir`.
pub const DEFAULT_RUN_DIR: &str = "/run/overlayd";

/// The stop request: the first SIGTERM or SIGINT. Cheap to clone.
#[derive(Clone)]
pub struct Stop {
    rx: watch::Receiver<Option<&'static str>>,
    serving: Arc<AtomicBool>,
}

impl Stop {
    /// Installs the SIGTERM and SIGINT handlers (on the current tokio runtime).
    pub fn install() -> std::io::Result<Stop> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let _ = tx.send(Some(name));
            // Keep the sender (and the handlers) alive: receivers must not see a close.
            std::future::pending::<()>().await;
        });
        Ok(Stop {
            rx,
            serving: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Resolves with the signal's name once one has arrived.
    pub async fn requested(&self) -> &'static str {
        let mut rx = self.rx.clone();
        let got = rx.wait_for(Option::is_some).await.ok().and_then(|v| *v);
        match got {
            Some(sig) => sig,
            None => std::future::pending().await,
        }
    }

    /// Whether a signal has arrived.
    pub fn is_requested(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// From now on the caller handles a stop itself (an orderly shutdown in its main loop);
    /// [`Stop::race`] no longer drops it.
    pub fn serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    /// Runs `daemon` until it returns or, while it has not called [`Stop::serving`] yet,
    /// until a signal arrives: then `daemon` is dropped and the signal's name returned.
    pub async fn race<T>(&self, daemon: impl Future<Output = T>) -> Result<T, &'static str> {
        let before_serving = async {
            let sig = self.requested().await;
            if self.serving.load(Ordering::SeqCst) {
                std::future::pending::<&'static str>().await
            } else {
                sig
            }
        };
        tokio::select! {
            biased;
            v = daemon => Ok(v),
            sig = before_serving => Err(sig),
        }
    }
}

/// The claim on this host's device: held (by an open, locked file) until dropped; the file
/// is removed then (a crash leaves it behind, unlocked, which is harmless).
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    pub path: PathBuf,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Removed while still locked, so that no one can lock this file in between.
        if same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The network namespace of `pid` ("self" for ours), as the kernel names it: `net:[4026531840]`.
fn netns_of(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The lock file's name for `device`: `<device>.lock` in the host's own network namespace
/// (the one of pid 1), `<device>.netns-<inode>.lock` in any other — or when pid 1's cannot
/// be read —, since a device name is only unique within its namespace.
pub fn lock_name(device: &str) -> String {
    match (netns_of("self"), netns_of("1")) {
        (Some(me), init) if Some(&me) != init.as_ref() => {
            let inode: String = me.chars().filter(char::is_ascii_digit).collect();
            format!("{device}.netns-{inode}.lock")
        }
        _ => format!("{device}.lock"),
    }
}

/// Processes (pid, command name), other than this one, in this network namespace that have
/// TUN device `device` open (found through `/proc/<pid>/fdinfo`, whose `iff:` line names the
/// device a TUN file descriptor is attached to).
pub fn tun_holders(device: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let my_ns = netns_of("self");
    let want = format!("iff:\t{device}");
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || netns_of(&pid.to_string()) != my_ns {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/net/tun"))
                && std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .is_ok_and(|info| info.lines().any(|l| l == want))
        });
        if holds {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            out.push((pid, comm));
        }
    }
    out
}

/// Opens (or creates, mode 0600) the lock file at `path`: not through a symbolic link, and
/// only a regular file owned by this process's user that no one else may write.
pub fn open_lock_file(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    crate::sys::owned::open(
        path,
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600),
    )
    .map_err(|e| format!("the lock file (--run-dir): {e}"))
}

/// Claims `device` for this process: the lock under `run_dir`, then the device itself.
/// The error says who holds it and what to do.
pub async fn claim(run_dir: &Path, device: &str, nl: &Netlink) -> Result<InstanceLock, String> {
    std::fs::create_dir_all(run_dir).map_err(|e| {
        format!(
            "cannot create the run directory {} (--run-dir): {e}",
            run_dir.display()
        )
    })?;
    let path = run_dir.join(lock_name(device));
    let mut attempts = 0;
    let (mut file, locked) = loop {
        let file = open_lock_file(&path)?;
        let locked = crate::sys::lock::try_lock_exclusive(&file)
            .map_err(|e| format!("cannot lock {} (--run-dir): {e}", path.display()))?;
        // The holder removes the file when it stops: a lock taken on a file that was
        // removed (or replaced) meanwhile protects nothing; take it again on the new one.
        attempts += 1;
        if !locked || same_file(&file, &path) || attempts >= 5 {
            break (file, locked);
        }
    };
    if !locked {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        let who = if pid.is_empty() {
            "another overlayd".to_string()
        } else {
            format!("another overlayd (pid {pid})")
        };
        return Err(format!(
            "{who} is already running for device {device} on this host: it holds {}. Stop it first (one daemon per host and device); this one changed nothing",
            path.display()
        ));
    }
    let me = std::process::id();
    let written = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{me}"));
    if let Err(e) = written {
        return Err(format!("cannot write our pid into {}: {e}", path.display()));
    }
    if let Some((pid, comm)) = tun_holders(device).into_iter().next() {
        return Err(format!(
            "device {device} is already in use by pid {pid} ({comm}), which holds it open without our lock {}; stop that process first (one daemon per host and device); this one changed nothing",
            path.display()
        ));
    }
    match nl.link_kind(device).await {
        Ok(Some(kind)) if kind != "tun" => {
            return Err(format!(
                "device {device} already exists and is a {} device, not overlayd's TUN device (left by flanneld?); delete it (ip link del {device}) or stop whatever owns it",
                if kind.is_empty() { "non-TUN" } else { &kind }
            ))
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot check the device's kind"),
    }
    Ok(InstanceLock { file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_carry_the_device() {
        let n = lock_name("flannel.1");
        assert!(n.starts_with("flannel.1.") && n.ends_with(".lock"), "{n}");
    }

    #[test]
    fn lock_file_links_and_strangers_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("overlayd-lockfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, "precious\n").unwrap();
        let link = dir.join("flannel.1.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_lock_file(&link).unwrap_err();
        assert!(
            err.contains("symbolic link") && err.contains("remove it") && err.contains("lock file"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        // A dangling link is not followed to create its target either.
        let dangling = dir.join("dangling.lock");
        std::os::unix::fs::symlink(dir.join("absent"), &dangling).unwrap();
        assert!(open_lock_file(&dangling).is_err());
        assert!(!dir.join("absent").exists());
        let plain = dir.join("ok.lock");
        assert!(open_lock_file(&plain).is_ok(), "ours is accepted");
        // Someone else's file (only root can plant one owned by another user here).
        if crate::sys::lock::effective_uid() == 0 {
            std::os::unix::fs::chown(&plain, Some(65534), None).unwrap();
            let err = open_lock_file(&plain).unwrap_err();
            assert!(err.contains("not a regular file owned by us"), "{err}");
            std::os::unix::fs::chown(&plain, Some(0), None).unwrap();
        } else {
            println!("skipped the foreign-owner case: not root");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_process_holds_an_absent_device() {
        assert!(tun_holders("ovt-no-such-dev").is_empty());
    }
}
