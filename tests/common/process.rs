//! Running things: unique `ovt-<pid>-<seq>-<role>` names, commands run to
//! completion, signals and bounded waits on child processes, log tails, and [`TempDir`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Prefix of every namespace (and temp dir) the tests create.
pub const NS_PREFIX: &str = "ovt-";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `cmd` with `input` on its stdin and its output captured, bounded by `timeout`: past
/// it the process is killed and the test panics naming `what`.
pub fn run_with_input(cmd: &mut Command, input: &str, timeout: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait for {what}: {e}")),
        Err(_) => {
            signal(pid, "KILL");
            panic!("{what} did not finish within {timeout:?}");
        }
    }
}

/// A name unique to this process and call: `ovt-<pid>-<seq>-<role>`.
pub fn unique_name(role: &str) -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{NS_PREFIX}{}-{seq}-{role}", std::process::id())
}

/// Runs a command to completion; `Err` holds the command line, exit status and stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

pub(super) fn must(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Sends a signal (`"TERM"`, `"KILL"`, `"STOP"`, `"CONT"`) to a pid with kill(1).
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Waits for a child to exit for at most `timeout`.
pub(super) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL and reap.
pub(super) fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    signal(child.id(), "TERM");
    if let Some(st) = wait_timeout(child, grace) {
        return Some(st);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// CPU clock ticks (utime + stime) and blocking waits (voluntary context switches) of
/// `pid`'s threads whose name (`comm`) `named` accepts, summed: a thread that sleeps in
/// `poll` wakes once per wait, so the waits over an idle spell count its wakeups.
pub fn thread_load(pid: u32, named: impl Fn(&str) -> bool) -> (u64, u64) {
    let mut ticks = 0;
    let mut waits = 0;
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    for t in tasks.flatten() {
        let dir = t.path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !named(comm.trim_end()) {
            continue;
        }
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        // After the comm: state is index 0, utime and stime are 11 and 12.
        ticks += [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
            .sum::<u64>();
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        waits += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (ticks, waits)
}

/// The last `n` lines of a file, for failure reports.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read: {e}>"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A directory under the system temp dir, removed on drop (kept if `OVT_KEEP_TMP` is set).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(role: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(role));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("OVT_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}
