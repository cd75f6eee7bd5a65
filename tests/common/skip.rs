//! Skipping a test that cannot run here (no root, a kernel feature or a tool missing), so the
//! skip shows: every skip goes through [`skip`], which prints a banner and appends
//! `SKIP <test>: <reason>` to the file named by `OVERLAYD_SKIP_LOG` (scripts/test.sh sets it
//! and lists the skips at the end, since nextest reports a skipped test as passed).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable naming the file skips are appended to.
pub const SKIP_LOG_ENV: &str = "OVERLAYD_SKIP_LOG";

/// The line a skip leaves in the skip log.
pub fn skip_line(test: &str, reason: &str) -> String {
    format!("SKIP {test}: {reason}")
}

/// Records that `test` is skipped because of `reason` (banner on stderr, a line in the skip
/// log when `OVERLAYD_SKIP_LOG` is set) and returns `true`, so a test reads
/// `if !supported { skip(test, "why"); return; }` or `if cond && skip(test, "why") { return; }`.
pub fn skip(test: &str, reason: &str) -> bool {
    let log = std::env::var_os(SKIP_LOG_ENV).map(PathBuf::from);
    skip_to(log.as_deref(), test, reason)
}

/// [`skip`] with the skip log given: `None` prints the banner only.
pub fn skip_to(log: Option<&Path>, test: &str, reason: &str) -> bool {
    let line = skip_line(test, reason);
    let bar = "!".repeat(79);
    eprintln!("\n{bar}\n!!! {line}\n{bar}\n");
    if let Some(path) = log {
        // One write of a whole line in append mode: parallel test processes do not interleave.
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            panic!(
                "{SKIP_LOG_ENV}={}: cannot append the skip: {e}",
                path.display()
            );
        }
    }
    true
}

/// Skips (through [`skip`]) when `ok` is false: `if skip_unless(ok, test, reason) { return; }`.
pub fn skip_unless(ok: bool, test: &str, reason: &str) -> bool {
    !ok && skip(test, reason)
}

/// Whether the effective uid is 0 (read from `/proc/self/status`, no unsafe needed).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        == Some("0")
}

/// Returns `true` (after [`skip`]) when the test must be skipped for lack of root.
///
/// Use as `if common::skip_unless_root("name") { return; }`.
pub fn skip_unless_root(test: &str) -> bool {
    skip_unless(
        is_root(),
        test,
        "needs root (network namespaces); run scripts/test.sh as root",
    )
}
