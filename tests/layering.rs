//! The module tree's layering, checked: every top-level module of `src/` sits on a layer,
//! and code (comments aside, tests aside) refers through `crate::` only to modules on lower
//! layers. This keeps the import graph free of cycles, as docs/architecture.md draws it. A
//! new module must be given a layer here, which is where a reviewer sees where it stands.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom up: a module may use the modules of the layers before its own.
const LAYERS: &[&[&str]] = &[
    &["drop"],
    &["wire", "counters", "goflags"],
    &["offload", "sys", "fib"],
    &["control", "host", "masq", "systemd"],
    &["backend"],
    &["datapath"],
    &["gso_tap"],
    &["l3", "l2"],
    &["telemetry", "cni", "lifecycle"],
    &["cli", "wg"],
    &["status", "daemon", "setup"],
];

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&m))
}

/// The source of `path` without comments and without its `#[cfg(test)] mod tests`.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::name` references in `code`.
fn crate_refs(code: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // use crate::{a::b, c};
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    v.push(name.to_string());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            v.push(name);
        }
    }
    v
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.iter().next().unwrap().to_string_lossy().to_string();
        if first == "lib.rs" || first == "main.rs" || first == "bin" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        for r in crate_refs(&code(f)) {
            if r != module {
                uses.entry(module.clone())
                    .or_default()
                    .entry(r)
                    .or_insert_with(|| rel.display().to_string());
            }
        }
        uses.entry(module).or_default();
    }
    let mut wrong = Vec::new();
    for (m, deps) in &uses {
        let Some(lm) = layer_of(m) else {
            wrong.push(format!("module `{m}` has no layer in tests/layering.rs"));
            continue;
        };
        for (d, file) in deps {
            match layer_of(d) {
                Some(ld) if ld < lm => {}
                Some(_) => wrong.push(format!("{file}: `{m}` uses `{d}`, which is not below it")),
                None => wrong.push(format!("{file}: `{m}` uses `{d}`, which has no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // Every layer's modules exist (the table is not stale).
    for m in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            uses.contains_key(*m),
            "tests/layering.rs lists `{m}`, which src/ lacks"
        );
    }
}

#[test]
fn reference_parser_sees_groups_and_paths() {
    let r = crate_refs("use crate::{wire::ether, counters};\nlet x = crate::fib::Fib::new();");
    assert_eq!(r, ["wire", "counters", "fib"]);
}
