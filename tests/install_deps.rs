//! scripts/install-deps.sh checks for what the build really needs. etcd-client's build script
//! runs protoc over the `.proto` files the crate ships; those import well-known files
//! (`google/protobuf/*.proto`) that the crate does not ship and protoc finds in
//! /usr/include, where Debian's libprotobuf-dev puts them (protobuf-compiler alone does not,
//! and `apt-get --no-install-recommends` leaves libprotobuf-dev out). This test reads the
//! imports from the etcd-client sources cargo resolved for this build and asserts that
//! install-deps.sh checks for each of them (and that each is present here).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The directory of the resolved etcd-client package (from `cargo metadata`).
fn etcd_client_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let pkg = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "etcd-client")
        .expect("etcd-client is a dependency");
    Path::new(pkg["manifest_path"].as_str().expect("manifest_path"))
        .parent()
        .expect("package dir")
        .to_path_buf()
}

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read proto dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            proto_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "proto") {
            out.push(p);
        }
    }
}

/// The `import "path";` targets of one .proto text (also `import public`/`weak`).
fn imports(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("import")?.trim_start();
            let rest = rest
                .strip_prefix("public")
                .or_else(|| rest.strip_prefix("weak"))
                .unwrap_or(rest)
                .trim_start();
            let path = rest.strip_prefix('"')?.split('"').next()?;
            Some(path.to_string())
        })
        .collect()
}

/// The files install-deps.sh checks for: the keys of its `NEED_FILE` table.
fn checked_files(script: &str) -> BTreeSet<String> {
    let start = script
        .find("declare -A NEED_FILE=(")
        .expect("install-deps.sh has a NEED_FILE table");
    let table = &script[start..];
    let table = &table[..table.find("\n)").expect("NEED_FILE table ends")];
    table
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let key = l.strip_prefix('[')?.split(']').next()?;
            Some(key.to_string())
        })
        .collect()
}

#[test]
fn install_deps_checks_every_proto_file_the_etcd_client_build_imports() {
    let dir = etcd_client_dir();
    let proto_root = dir.join("proto");
    let mut files = Vec::new();
    proto_files(&proto_root, &mut files);
    assert!(files.len() >= 5, "etcd-client's protos: {files:?}");
    // Imports the crate does not ship itself come from protoc's include path.
    let mut external = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read .proto");
        for i in imports(&text) {
            if !proto_root.join(&i).exists() {
                external.insert(i);
            }
        }
    }
    assert!(
        external.contains("google/protobuf/descriptor.proto"),
        "the import that broke a fresh machine: {external:?}"
    );
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh"),
    )
    .expect("read install-deps.sh");
    let checked = checked_files(&script);
    for i in &external {
        let want = format!("/usr/include/{i}");
        assert!(
            checked.contains(&want),
            "etcd-client ({}) imports {i}, which it does not ship: scripts/install-deps.sh must check for {want} \
             (Debian: libprotobuf-dev); it checks {checked:?}",
            dir.display()
        );
        assert!(
            Path::new(&want).exists(),
            "{want} is missing on this machine: run scripts/install-deps.sh"
        );
    }
}

#[test]
fn parsers_read_what_they_should() {
    assert_eq!(
        imports("syntax = \"proto3\";\nimport \"a/b.proto\";\n  import public \"c.proto\";\n// import \"x\"\noption x = 1;"),
        vec!["a/b.proto", "c.proto"]
    );
    let script = "x\ndeclare -A NEED_FILE=(\n  [/usr/include/google/protobuf/struct.proto]=libprotobuf-dev\n  [/usr/lib/cni/bridge]=containernetworking-plugins\n)\n[/not/this]=x\n";
    assert_eq!(
        checked_files(script),
        BTreeSet::from([
            "/usr/include/google/protobuf/struct.proto".to_string(),
            "/usr/lib/cni/bridge".to_string()
        ])
    );
}
