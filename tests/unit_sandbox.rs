//! The shipped systemd unit's restrictions, tested: the daemon runs in a test namespace under
//! what deploy/overlayd.service imposes on it — /proc/sys read-only except the unit's
//! `ReadWritePaths=` below it (ProtectKernelTunables), only the unit's
//! `CapabilityBoundingSet=`, no new privileges — and still becomes ready with tunnel GSO on
//! and dual stack up. The same sandbox without the re-opened paths refuses `--tunnel-gso on`,
//! which shows the sandbox bites.

mod common;

use std::time::Duration;

use common::*;

const READY: Duration = Duration::from_secs(40);
const METRICS: &str = "127.0.0.1:9108";
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/overlayd.service");

/// The values of `key=` in the unit's `[Service]` section, split on whitespace.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// The unit's writable paths below /proc/sys (a leading "-" only means "may be absent").
fn proc_sys_rw_paths(unit: &str) -> Vec<String> {
    unit_values(unit, "ReadWritePaths")
        .into_iter()
        .map(|p| p.trim_start_matches('-').to_string())
        .filter(|p| p.starts_with("/proc/sys/"))
        .collect()
}

/// setpriv's `--bounding-set` argument for the unit's CapabilityBoundingSet.
fn bounding_set(unit: &str) -> String {
    let caps = unit_values(unit, "CapabilityBoundingSet");
    assert!(!caps.is_empty(), "the unit sets CapabilityBoundingSet");
    let mut arg = String::from("-all");
    for c in caps {
        let name = c
            .strip_prefix("CAP_")
            .expect("CAP_ names")
            .to_ascii_lowercase();
        arg.push_str(&format!(",+{name}"));
    }
    arg
}

/// Words run in front of the daemon: a private mount namespace where /proc/sys is read-only
/// but for `rw` (checked: writing ip_forward fails), then the unit's bounding set and
/// no_new_privs.
fn sandbox(rw: &[String], bset: &str) -> Vec<String> {
    let script = r#"set -e
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
for p in $OVT_RW; do [ -e "$p" ] || continue; mount --bind "$p" "$p"; mount -o remount,bind,rw "$p"; done
v=$(cat /proc/sys/net/ipv4/ip_forward)
if (echo "$v" > /proc/sys/net/ipv4/ip_forward) 2>/dev/null; then echo "sandbox: /proc/sys is writable" >&2; exit 97; fi
exec setpriv --bounding-set "$OVT_BSET" --no-new-privs "$@""#;
    let script = script
        .replace("$OVT_RW", &rw.join(" "))
        .replace("$OVT_BSET", bset);
    [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn args(etcd: &Etcd) -> Vec<String> {
    let mut a = overlayd_args("vxlan", etcd);
    a.extend(["--tunnel-gso", "on", "--metrics-addr", METRICS].map(String::from));
    a
}

#[test]
fn unit_reopens_the_per_device_sysctls() {
    let unit = std::fs::read_to_string(UNIT).expect("read deploy/overlayd.service");
    assert!(unit_values(&unit, "ProtectKernelTunables").contains(&"yes".to_string()));
    let rw = proc_sys_rw_paths(&unit);
    for want in ["/proc/sys/net/ipv4/conf", "/proc/sys/net/ipv6/conf"] {
        assert!(rw.iter().any(|p| p == want), "{want} writable: {rw:?}");
    }
    assert_eq!(bounding_set(&unit), "-all,+net_admin,+net_raw");
}

#[test]
fn netns_daemon_under_the_units_restrictions() {
    if skip_unless_root("netns_daemon_under_the_units_restrictions") {
        return;
    }
    let unit = std::fs::read_to_string(UNIT).expect("read deploy/overlayd.service");
    let (rw, bset) = (proc_sys_rw_paths(&unit), bounding_set(&unit));
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    put_dual_stack_config(&etcd, ETCD_PREFIX, "vxlan");
    add_underlay_ipv6(topo.host(0), 0);
    let wrap = sandbox(&rw, &bset);
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let mut d = Overlayd::spawn_wrapped(topo.host(0), &wrap, args(&etcd));
    d.wait_ready(READY);
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid().expect("pid")))
        .expect("daemon status");
    let cap_bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(str::trim)
        .expect("CapBnd");
    // CAP_NET_ADMIN (12) and CAP_NET_RAW (13) only.
    assert_eq!(cap_bnd, "0000000000003000", "the unit's bounding set");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])),
        "no_new_privs"
    );
    assert_eq!(
        d.metric("overlayd_offload_enabled", &["offload=\"tunnel_gso\""]),
        1.0,
        "tunnel GSO on under the unit's restrictions:\n{}",
        tail(d.log_path(), 20)
    );
    assert!(
        ipv6_subnet_in(d.subnet_file()).is_some(),
        "dual stack up:\n{}",
        tail(d.log_path(), 20)
    );
    assert!(d
        .terminate(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    drop(d);
    // The control: the same sandbox with /proc/sys wholly read-only.
    let wrap = sandbox(&[], &bset);
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let mut d = Overlayd::spawn_wrapped(topo.host(0), &wrap, args(&etcd));
    let st = d.wait_exit(Duration::from_secs(40));
    assert!(
        st.is_some_and(|s| !s.success()),
        "--tunnel-gso on refused with /proc/sys read-only, got {st:?}:\n{}",
        tail(d.log_path(), 20)
    );
    println!("read-only /proc/sys: {}", tail(d.log_path(), 3));
}
