//! Flags through the real binary: the etcd password is refused on the command line (where
//! `ps` shows it) with one error naming the two ways to give it, and is taken from the
//! environment (both spellings) or a file (`--etcd-password-file`, or its environment
//! variables). `--backend` takes every backend flannel's `Backend.Type` names, wireguard
//! included, and a wrong name is refused with the list.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_overlayd");

/// Runs `overlayd status` with `args` and `env` (nothing else from ours), in a network
/// namespace of its own with no link up (so that etcd is unreachable at once), bounded.
fn status(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("unshare");
    c.args([
        "-n",
        BIN,
        "status",
        "--etcd-endpoints",
        "http://127.0.0.1:9",
    ])
    .args(args)
    .env_clear()
    .envs(env.iter().copied());
    bounded(c, Duration::from_secs(30))
}

/// Runs `c` with no input and its output captured, killed after `limit`.
fn bounded(mut c: Command, limit: Duration) -> Output {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn overlayd");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

/// Whether network namespaces cannot be made here (the test then says it is skipped).
fn skip_without_netns() -> bool {
    let can = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        println!("skipped: cannot create a network namespace (needs root)");
    }
    !can
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether the run got past flag parsing (it then fails on etcd, not on the password).
fn past_flags(o: &Output) -> bool {
    let e = stderr(o);
    !e.contains("password") && !e.contains("Usage")
}

#[test]
fn etcd_password_on_the_command_line_is_refused() {
    for cmd in [
        vec![BIN, "--etcd-username", "u", "--etcd-password", "s3cret"],
        vec![BIN, "-etcd-username=u", "-etcd-password=s3cret"],
        vec![
            BIN,
            "status",
            "--etcd-username",
            "u",
            "--etcd-password",
            "s3cret",
        ],
    ] {
        let o = Command::new(cmd[0])
            .args(&cmd[1..])
            .env_clear()
            .output()
            .expect("run overlayd");
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}: {e}");
        assert!(
            e.contains("--etcd-password on the command line is refused")
                && e.contains("OVERLAYD_ETCD_PASSWORD")
                && e.contains("--etcd-password-file"),
            "{cmd:?}: {e}"
        );
        assert!(!e.contains("s3cret"), "the secret is not echoed: {e}");
    }
}

#[test]
fn netns_etcd_password_from_the_environment_or_a_file() {
    if skip_without_netns() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("overlayd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("etcd-password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let f = file.to_str().unwrap();
    let u = ("OVERLAYD_ETCD_USERNAME", "u");
    for (what, args, env) in [
        (
            "OVERLAYD_ETCD_PASSWORD",
            vec![],
            vec![u, ("OVERLAYD_ETCD_PASSWORD", "s3cret")],
        ),
        (
            "FLANNELD_ETCD_PASSWORD",
            vec![],
            vec![u, ("FLANNELD_ETCD_PASSWORD", "s3cret")],
        ),
        (
            "--etcd-password-file",
            vec!["--etcd-password-file", f],
            vec![u],
        ),
        (
            "OVERLAYD_ETCD_PASSWORD_FILE",
            vec![],
            vec![u, ("OVERLAYD_ETCD_PASSWORD_FILE", f)],
        ),
        (
            "FLANNELD_ETCD_PASSWORD_FILE",
            vec![],
            vec![u, ("FLANNELD_ETCD_PASSWORD_FILE", f)],
        ),
    ] {
        let o = status(&args, &env);
        assert!(past_flags(&o), "{what}: accepted, got: {}", stderr(&o));
        assert!(!o.status.success(), "{what}: etcd is unreachable");
    }
    let o = status(
        &[],
        &[u, ("FLANNELD_ETCD_PASSWORD_FILE", "/nonexistent/pw")],
    );
    let e = stderr(&o);
    assert!(
        e.contains("cannot read the etcd password file /nonexistent/pw"),
        "a missing file is named: {e}"
    );
    let o = status(&[], &[u]);
    assert!(stderr(&o).contains("needs a password"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `overlayd <args>` in a network namespace of its own with no link up, bounded.
fn daemon(args: &[&str]) -> Output {
    let mut c = Command::new("unshare");
    c.args(["-n", BIN, "--etcd-endpoints", "http://127.0.0.1:9"])
        .args(args)
        .env_clear();
    bounded(c, Duration::from_secs(3))
}

#[test]
fn netns_backend_flag_takes_wireguard() {
    if skip_without_netns() {
        return;
    }
    let o = daemon(&["--backend", "wireguard", "--network", "10.9.0.0/16"]);
    let e = stderr(&o);
    assert!(
        e.contains("no default route") && !e.contains("Usage"),
        "--backend wireguard accepted, the run goes on to the underlay: {e}"
    );
    let o = daemon(&["--backend", "wireguar"]);
    let e = stderr(&o);
    assert!(!o.status.success(), "a wrong backend is refused");
    assert!(
        e.contains("invalid value 'wireguar'") && e.contains("udp, vxlan, gre, wireguard"),
        "the error lists the backends: {e}"
    );
}

#[test]
fn netns_steer_flag_names_its_values() {
    if skip_without_netns() {
        return;
    }
    for (way, o) in [
        ("flag", daemon(&["--steer", "sideways"])),
        ("env", {
            let mut c = Command::new("unshare");
            c.args(["-n", BIN, "--etcd-endpoints", "http://127.0.0.1:9"])
                .env_clear()
                .env("OVERLAYD_STEER", "sideways");
            bounded(c, Duration::from_secs(3))
        }),
    ] {
        let e = stderr(&o);
        assert!(!o.status.success(), "{way}: a wrong --steer is refused");
        assert!(
            e.contains("invalid value 'sideways'") && e.contains("flow, cpu"),
            "{way}: the error lists the ways: {e}"
        );
    }
    let o = daemon(&["--steer", "cpu", "--network", "10.9.0.0/16"]);
    assert!(
        past_flags(&o) && !o.status.success(),
        "--steer cpu accepted, the run goes on: {}",
        stderr(&o)
    );
}
