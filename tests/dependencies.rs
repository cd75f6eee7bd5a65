//! Every declared dependency earns its place: a `[dependencies]` crate must be named by the
//! shipped code (src/ outside `#[cfg(test)]` items), a `[dev-dependencies]` crate by test or
//! bench code; a crate that only tests use belongs in `[dev-dependencies]`. The same holds for
//! the fuzz crate (fuzz/Cargo.toml). scripts/test.sh runs this first, so an unused
//! dependency fails CI early with the crate's name.
//!
//! The manifests are read through `cargo metadata` (so renames and library names are what
//! cargo resolves), the sources are scanned for `name::`, `use name` and `extern crate name`
//! outside comments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Which section a dependency is declared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Dev,
    Build,
}

/// One declared dependency: its package name and the name code uses for it.
#[derive(Debug, Clone)]
struct Dep {
    package: String,
    ident: String,
    kind: Kind,
}

/// What the check found wrong with one dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Finding {
    /// Declared and named nowhere.
    Unused { package: String },
    /// In `[dependencies]` but named only by test code.
    TestOnly { package: String },
}

/// Code split by who compiles it.
#[derive(Debug, Default)]
struct Sources {
    /// What ships: src/ outside `#[cfg(test)]` items.
    shipped: String,
    /// Tests and benches: `#[cfg(test)]` items, tests/, benches/.
    test: String,
    /// build.rs.
    build: String,
}

/// Keeps only code: comments (also doc comments), string and char literal contents are
/// dropped, so that a crate named only in prose or in a string does not count as used.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        let next = c.get(i + 1).copied();
        match c[i] {
            '/' if next == Some('/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            'r' if (i == 0 || !ident(c[i - 1])) && matches!(next, Some('"') | Some('#')) => {
                // r"..." or r#"..."#: find the matching number of #s after the closing quote.
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                while j < c.len() {
                    if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    } else if c[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                out.push_str("\"\"");
                i += 1;
            }
            '\'' => {
                // A char literal ('x', '\n', '\u{..}') is skipped; a lifetime is kept.
                let lit_end = if next == Some('\\') {
                    (i + 2..c.len().min(i + 12)).find(|&k| c[k] == '\'')
                } else if c.get(i + 2) == Some(&'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match lit_end {
                    Some(e) => {
                        out.push_str("' '");
                        i = e + 1;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// Splits a source file into (code outside `#[cfg(test)]` items, code inside them). An item
/// runs from the attribute to its closing brace at the same depth, or to its `;`.
fn split_cfg_test(src: &str) -> (String, String) {
    let (mut shipped, mut test) = (String::new(), String::new());
    let mut lines = src.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            shipped.push_str(line);
            shipped.push('\n');
            continue;
        }
        let mut depth = 0i32;
        let mut opened = false;
        for l in lines.by_ref() {
            test.push_str(l);
            test.push('\n');
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    (shipped, test)
}

/// Whether `code` names crate `ident` as a path root, in a `use`, or in `extern crate`.
fn names(code: &str, ident: &str) -> bool {
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(pos) = code[from..].find(ident) {
        let start = from + pos;
        let end = start + ident.len();
        from = end;
        let before = start.checked_sub(1).map(|i| bytes[i]);
        // A path root: not part of a longer identifier, not `x::ident` (a module of another crate).
        let boundary = !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        let not_nested = !code[..start].ends_with("::");
        if !boundary || !not_nested {
            continue;
        }
        let rest = &code[end..];
        if rest.starts_with("::") {
            return true;
        }
        let head = code[..start].trim_end();
        if (head.ends_with("use") || head.ends_with("extern crate"))
            && rest.trim_start().starts_with([';', ' ', '\n'])
        {
            return true;
        }
        if head.ends_with("use") && rest.starts_with(';') {
            return true;
        }
    }
    false
}

/// The check itself: every finding for `deps` over `src`.
fn check(deps: &[Dep], src: &Sources) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in deps {
        let (shipped, test, build) = (
            names(&src.shipped, &d.ident),
            names(&src.test, &d.ident),
            names(&src.build, &d.ident),
        );
        let package = d.package.clone();
        match d.kind {
            Kind::Normal if shipped => {}
            Kind::Normal if test => out.push(Finding::TestOnly { package }),
            Kind::Dev if test || shipped => {}
            Kind::Build if build => {}
            _ => out.push(Finding::Unused { package }),
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Reads a crate's sources: `shipped_dirs` hold shipped code (with `#[cfg(test)]` items
/// counted as test code), `test_dirs` test and bench code.
fn read_sources(root: &Path, shipped_dirs: &[&str], test_dirs: &[&str]) -> Sources {
    let mut s = Sources::default();
    for d in shipped_dirs {
        let mut files = Vec::new();
        rs_files(&root.join(d), &mut files);
        for f in files {
            let text = code_only(&std::fs::read_to_string(&f).expect("read source"));
            let (shipped, test) = split_cfg_test(&text);
            s.shipped.push_str(&shipped);
            s.test.push_str(&test);
        }
    }
    for d in test_dirs {
        let mut files = Vec::new();
        rs_files(&root.join(d), &mut files);
        for f in files {
            s.test.push_str(&code_only(
                &std::fs::read_to_string(&f).expect("read source"),
            ));
        }
    }
    if let Ok(b) = std::fs::read_to_string(root.join("build.rs")) {
        s.build = code_only(&b);
    }
    s
}

/// The declared dependencies of the package at `manifest`, from `cargo metadata`.
/// With `resolve`, library names come from the resolved packages (a crate may name its
/// library differently); without, from the package name with `-` → `_`.
fn declared(manifest: &Path, resolve: bool) -> Vec<Dep> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest);
    if !resolve {
        cmd.arg("--no-deps");
    }
    let out = cmd.output().expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let lib_names: BTreeMap<String, String> = packages
        .iter()
        .filter_map(|p| {
            let lib = p["targets"].as_array()?.iter().find(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "lib" || k == "proc-macro"))
            })?;
            Some((
                p["name"].as_str()?.to_string(),
                lib["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    let manifest = std::fs::canonicalize(manifest).expect("manifest path");
    let me = packages
        .iter()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .expect("the package itself is in the metadata");
    me["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .map(|d| {
            let package = d["name"].as_str().expect("name").to_string();
            let ident = match d["rename"].as_str() {
                Some(r) => r.replace('-', "_"),
                None => lib_names
                    .get(&package)
                    .cloned()
                    .unwrap_or_else(|| package.replace('-', "_")),
            };
            let kind = match d["kind"].as_str() {
                None => Kind::Normal,
                Some("dev") => Kind::Dev,
                Some("build") => Kind::Build,
                Some(k) => panic!("unknown dependency kind {k}"),
            };
            Dep {
                package,
                ident,
                kind,
            }
        })
        .collect()
}

fn report(what: &str, findings: &[Finding]) -> String {
    let mut msg = format!("{what}: dependencies that do not earn their place:\n");
    for f in findings {
        match f {
            Finding::Unused { package } => msg.push_str(&format!(
                "  - {package}: declared but used nowhere; remove it from Cargo.toml\n"
            )),
            Finding::TestOnly { package } => msg.push_str(&format!(
                "  - {package}: only tests use it; move it to [dev-dependencies]\n"
            )),
        }
    }
    msg
}

#[test]
fn every_dependency_of_overlayd_is_used() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deps = declared(&root.join("Cargo.toml"), true);
    assert!(deps.len() > 10, "read the manifest: {deps:?}");
    let src = read_sources(root, &["src"], &["tests", "benches"]);
    let findings = check(&deps, &src);
    assert!(findings.is_empty(), "{}", report("Cargo.toml", &findings));
}

#[test]
fn every_dependency_of_the_fuzz_crate_is_used() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    // --no-deps: the fuzz crate has its own lock file and is not built by `cargo test`.
    let deps = declared(&root.join("Cargo.toml"), false);
    assert!(!deps.is_empty());
    let src = read_sources(&root, &["fuzz_targets", "src"], &[]);
    let findings = check(&deps, &src);
    assert!(
        findings.is_empty(),
        "{}",
        report("fuzz/Cargo.toml", &findings)
    );
}

// The check, on made-up crates: it must catch each kind of mistake and accept each real use.

fn dep(package: &str, kind: Kind) -> Dep {
    Dep {
        package: package.into(),
        ident: package.replace('-', "_"),
        kind,
    }
}

#[test]
fn check_catches_unused_and_test_only_dependencies() {
    let lib = "//! uses anyhow::Result in prose only\n\
        use crossbeam_channel::bounded; // a comment naming bytes::Bytes\n\
        fn f() -> tokio_util::X { let s = \"bytes::Bytes\"; todo!() }\n\
        #[cfg(test)]\n\
        mod tests {\n    use etherparse::PacketBuilder;\n    fn g() { if true { } }\n}\n\
        pub fn after() { serde_json::json!({}); }\n";
    let text = code_only(lib);
    let (shipped, test) = split_cfg_test(&text);
    let src = Sources {
        shipped,
        test: test + "use proptest::prelude::*;\n",
        build: String::new(),
    };
    let deps = [
        dep("anyhow", Kind::Normal),
        dep("bytes", Kind::Normal),
        dep("crossbeam-channel", Kind::Normal),
        dep("etherparse", Kind::Normal),
        dep("serde_json", Kind::Normal),
        dep("tokio-util", Kind::Normal),
        dep("proptest", Kind::Dev),
        dep("criterion", Kind::Dev),
        dep("prost-build", Kind::Build),
    ];
    assert_eq!(
        check(&deps, &src),
        vec![
            Finding::Unused {
                package: "anyhow".into()
            },
            Finding::Unused {
                package: "bytes".into()
            },
            Finding::TestOnly {
                package: "etherparse".into()
            },
            Finding::Unused {
                package: "criterion".into()
            },
            Finding::Unused {
                package: "prost-build".into()
            },
        ]
    );
}

#[test]
fn names_needs_a_path_root() {
    assert!(names("use libc;\n", "libc"));
    assert!(names("x = libc::AF_INET;", "libc"));
    assert!(names("extern crate libc;", "libc"));
    assert!(names("#[derive(thiserror::Error)]", "thiserror"));
    assert!(!names("std::libc::X", "libc"), "a module of another crate");
    assert!(!names("my_libc::X", "libc"), "a longer identifier");
    assert!(!names("let libc = 1;", "libc"), "a variable");
}
