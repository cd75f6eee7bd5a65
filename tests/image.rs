//! The container image (Containerfile, scripts/build-image.sh), built offline with podman:
//! it holds the static overlayd and overlay-cni and a working iptables and nothing else (no
//! shell), and `podman run` of it in a test namespace (host network = that namespace, only
//! NET_ADMIN and NET_RAW, /dev/net/tun, a read-only root) takes a lease, installs its
//! masquerade chain with the image's own iptables and forwards to a node running the host's
//! build; its `install-cni` subcommand installs the plugin into a mounted directory.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const TAG: &str = "overlayd:0.1.0";
/// `podman run` as it works on this machine: runc, because crun 1.8 refuses the host's hybrid
/// cgroup v1/v2 mounts ("cgroups in hybrid mode not supported"); and resource limits at or below
/// the caller's, because raising RLIMIT_NOFILE/RLIMIT_NPROC (podman's defaults) is not permitted.
const PODMAN_RUN: [&str; 8] = [
    "podman",
    "--runtime",
    "runc",
    "run",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];
const READY: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command) -> String {
    run_cmd(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether an ELF file has a program interpreter (PT_INTERP), i.e. is dynamically linked.
fn has_interp(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    assert_eq!(elf[4], 2, "64-bit");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

/// Every path in `root`, relative, directories included.
fn tree(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        out.insert(p.strip_prefix(root).unwrap().display().to_string());
        if e.file_type().unwrap().is_dir() {
            tree(root, &p, out);
        }
    }
}

/// The image's root filesystem as podman exports it (a container is created, not started).
fn export_rootfs(dest: &Path) {
    let name = format!("{}-image", unique_name("img"));
    run(Command::new("podman").args(["create", "--name", &name, TAG]));
    let tar = dest.with_extension("tar");
    let exported = run_cmd(
        Command::new("podman")
            .args(["export", "-o"])
            .arg(&tar)
            .arg(&name),
    );
    let _ = run_cmd(Command::new("podman").args(["rm", "-f", &name]));
    exported.unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dest).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dest));
}

#[test]
fn netns_image_is_static_and_runs() {
    if skip_unless_root("netns_image_is_static_and_runs") {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Builds (or, when scripts/test.sh built it already, re-stages) the image from this tree.
    run(Command::new(repo.join("scripts/build-image.sh")).arg(TAG));
    let inspect = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{.Size}}",
        TAG,
    ]));
    let (entry, size) = inspect.trim().split_once(' ').expect("entrypoint and size");
    assert_eq!(entry, r#"["/usr/local/bin/overlayd"]"#);
    let size: u64 = size.parse().expect("size");
    assert!(size < 40 << 20, "a small image: {size} bytes");

    let tmp = TempDir::new("image");
    let rootfs = tmp.path().join("rootfs");
    export_rootfs(&rootfs);
    let mut files = BTreeSet::new();
    tree(&rootfs, &rootfs, &mut files);
    for f in [
        "usr/local/bin/overlayd",
        "usr/local/bin/overlay-cni",
        "usr/sbin/iptables",
        "usr/sbin/iptables-restore",
        "usr/sbin/iptables-save",
        "usr/sbin/xtables-nft-multi",
    ] {
        assert!(files.contains(f), "{f} in the image: {files:?}");
    }
    for shell in ["bin/sh", "usr/bin/sh", "bin/busybox"] {
        assert!(!files.contains(shell), "no shell in a FROM scratch image");
    }
    for b in ["overlayd", "overlay-cni"] {
        let elf = std::fs::read(rootfs.join("usr/local/bin").join(b)).unwrap();
        assert!(!has_interp(&elf), "{b} is statically linked");
    }
    // Everything else is iptables: its binary, the libraries it loads, its extensions.
    let other: Vec<&String> = files
        .iter()
        .filter(|f| {
            let p = Path::new(f.as_str());
            !(p.starts_with("usr/local/bin")
                || p.starts_with("usr/sbin")
                || f.contains("x86_64-linux-gnu")
                || f.contains("ld-linux")
                || ["usr", "usr/local", "lib", "lib64", "usr/lib", "run", "run/flannel", "tmp"]
                    .contains(&f.as_str())
                // podman's own mount points and files in every container.
                || ["dev", "proc", "sys", "etc", "etc/hosts", "etc/hostname", "etc/resolv.conf", "run/.containerenv"]
                    .contains(&f.as_str()))
        })
        .collect();
    assert!(other.is_empty(), "unexpected files in the image: {other:?}");

    // overlayd from the image with `podman run`, as the DaemonSet runs it: the host's network
    // (here: the test namespace, which `ip netns exec` puts podman in), not privileged, only
    // NET_ADMIN and NET_RAW, /dev/net/tun, and a shared directory for subnet.env.
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    let share = tmp.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let subnet_file: PathBuf = share.join("subnet.env");
    let mut args = overlayd_args("vxlan", &etcd);
    args.extend([
        "--ip-masq".to_string(),
        "--subnet-file".to_string(),
        subnet_file.display().to_string(),
    ]);
    let volume = format!("{}:{}", share.display(), share.display());
    let name = unique_name("overlayd");
    let mut podman: Vec<&str> = PODMAN_RUN.to_vec();
    podman.extend([
        "--rm",
        "--name",
        &name,
        "--network",
        "host",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_ADMIN,NET_RAW",
        "--device",
        "/dev/net/tun",
        "--read-only",
        "-v",
        &volume,
        TAG,
    ]);
    // The helper puts the host binary's path before the arguments: `shift` drops it, and
    // the arguments go to the image's overlayd. (No word here needs shell quoting.)
    let script = format!("shift; exec {} \"$@\"", podman.join(" "));
    // `ip netns exec` mounts a /sys of its own, without the cgroup mounts podman needs: back
    // to this test's mount namespace, staying in the test's network namespace.
    let own_mounts = format!("--mount=/proc/{}/ns/mnt", std::process::id());
    let wrapper = ["nsenter", &own_mounts, "--", "sh", "-c", &script, "sh"];
    let mut from_image = Overlayd::spawn_wrapped(topo.host(0), &wrapper, &args);
    let mut host_build = Overlayd::spawn(topo.host(1), overlayd_args("vxlan", &etcd));
    let s1 = from_image.wait_ready(READY);
    let s2 = host_build.wait_ready(READY);
    assert!(
        from_image.log().contains("iptables v1.8"),
        "the image's iptables answered: {}",
        from_image.log()
    );
    let nat = topo.host(0).run(&["iptables", "-w", "-t", "nat", "-S"]);
    assert!(
        nat.contains("-A OVERLAYD-POSTRTG") && nat.contains("-j MASQUERADE --random-fully"),
        "the image's iptables installed the masquerade chain:\n{nat}"
    );
    assert!(ping_until(
        topo.host(0),
        overlay_ip_of(&s2),
        Duration::from_secs(15)
    ));
    assert!(ping_until(
        topo.host(1),
        overlay_ip_of(&s1),
        Duration::from_secs(15)
    ));

    // SIGTERM reaches overlayd through podman: it stops cleanly, the container is removed.
    assert!(from_image
        .terminate(Duration::from_secs(20))
        .is_some_and(|s| s.success()));

    // The install-cni init container's job, from the image: the plugin next to overlayd.
    let cni_bin = tmp.path().join("cni-bin");
    std::fs::create_dir_all(&cni_bin).unwrap();
    let mount = format!("{}:/opt/cni/bin", cni_bin.display());
    let mut cmd = Command::new("podman");
    cmd.args(&PODMAN_RUN[1..])
        .args(["--rm", "--network", "none", "-v", &mount, TAG])
        .args(["install-cni", "--cni-bin-dir=/opt/cni/bin"]);
    let out = run(&mut cmd);
    assert!(out.contains("installed /opt/cni/bin/overlay-cni"), "{out}");
    assert_eq!(
        std::fs::read(cni_bin.join("overlay-cni")).unwrap(),
        std::fs::read(rootfs.join("usr/local/bin/overlay-cni")).unwrap()
    );
}

#[test]
fn elf_interp_is_found() {
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    // The test binary is linked dynamically (the default for this target).
    assert!(has_interp(&me));
}
