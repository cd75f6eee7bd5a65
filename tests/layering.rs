//! The module tree's layering, checked: every top-level module of `src/` sits on a layer,
//! and code (comments aside, tests aside) refers through `crate::` only to modules on lower
//! layers. This keeps the import graph free of cycles, as docs/architecture.md draws it. A
//! new module must be given a layer here, which is where a reviewer sees where it stands.
//!
//! Also checked: (a) the layer diagram in docs/architecture.md draws exactly `LAYERS`; (b) no
//! import cycle between the files of a folder either (`crate::`, `self::` and `super::` paths
//! resolved to files); (c) no function in `src/` is longer than the project's 120-line limit.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom up: a module may use the modules of the layers before its own.
const LAYERS: &[&[&str]] = &[
    &["drop"],
    &["wire", "counters", "go"],
    &["offload", "sys", "fib"],
    &["control", "host", "masq", "systemd"],
    &["backend"],
    &["datapath", "peers", "direct", "link_hops"],
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

// ---- (a) docs/architecture.md's layer diagram is `LAYERS` ----

/// The layers drawn in docs/architecture.md, bottom up: each numbered row of the diagram
/// (with its continuation rows) gives the top-level names of its modules column.
fn diagram_layers(doc: &str) -> Result<Vec<Vec<String>>, String> {
    let lines: Vec<&str> = doc.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.contains("layer (bottom up)"))
        .ok_or("docs/architecture.md: no line with \"layer (bottom up)\" (the layer diagram)")?;
    let rule: Vec<char> = lines
        .get(head + 1)
        .ok_or("diagram ends early")?
        .chars()
        .collect();
    let columns = rule_columns(&rule);
    let [layer_col, modules_col, ..] = columns[..] else {
        return Err(format!(
            "diagram rule under the header has {} columns, want 3",
            columns.len()
        ));
    };
    let mut rows: Vec<(usize, String)> = Vec::new();
    for line in lines[head + 2..]
        .iter()
        .take_while(|l| !l.starts_with("```"))
    {
        let chars: Vec<char> = line.chars().collect();
        let cell = |(a, b): (usize, usize)| -> String {
            chars
                .get(a.min(chars.len())..b.min(chars.len()))
                .unwrap_or(&[])
                .iter()
                .collect()
        };
        let modules = cell(modules_col);
        match cell(layer_col).split_whitespace().next() {
            Some(n) => {
                let n = n
                    .parse()
                    .map_err(|_| format!("diagram row without a layer number: {line}"))?;
                rows.push((n, modules));
            }
            None => match rows.last_mut() {
                Some(last) => last.1.push_str(&modules),
                None => return Err(format!("diagram continuation row before any layer: {line}")),
            },
        }
    }
    rows.sort_by_key(|r| r.0);
    for (i, (n, _)) in rows.iter().enumerate() {
        if *n != i {
            return Err(format!(
                "diagram layers are not numbered 0..{}: found {n} at {i}",
                rows.len()
            ));
        }
    }
    Ok(rows.into_iter().map(|(_, m)| top_level_names(&m)).collect())
}

/// The (start, end) char columns of each run of '─' in the diagram's rule line; the last
/// column runs to the end of the line.
fn rule_columns(rule: &[char]) -> Vec<(usize, usize)> {
    let mut cols = Vec::new();
    let mut start = None;
    for (i, c) in rule.iter().enumerate() {
        match (c, start) {
            ('─', None) => start = Some(i),
            (' ', Some(s)) => {
                cols.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        cols.push((s, usize::MAX));
    }
    // A column's cells start where its rule starts and end where the next one starts.
    let starts: Vec<usize> = cols.iter().map(|c| c.0).collect();
    (0..starts.len())
        .map(|i| (starts[i], starts.get(i + 1).copied().unwrap_or(usize::MAX)))
        .collect()
}

/// `"control::{config, lease}, host"` → `["control", "host"]`.
fn top_level_names(cell: &str) -> Vec<String> {
    let mut flat = String::new();
    let mut depth = 0;
    for c in cell.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => flat.push(c),
            _ => {}
        }
    }
    flat.split(',')
        .map(|m| m.split("::").next().unwrap_or("").trim().to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// What differs between the diagram's layers and `layers`, one line per difference.
fn layer_differences(diagram: &[Vec<String>], layers: &[&[&str]]) -> Vec<String> {
    let mut out = Vec::new();
    if diagram.len() != layers.len() {
        out.push(format!(
            "the diagram has {} layers, tests/layering.rs has {}",
            diagram.len(),
            layers.len()
        ));
    }
    for i in 0..diagram.len().max(layers.len()) {
        let mut drawn: Vec<&str> = diagram
            .get(i)
            .map_or(vec![], |l| l.iter().map(|s| s.as_str()).collect());
        let mut table: Vec<&str> = layers.get(i).map_or(vec![], |l| l.to_vec());
        drawn.sort_unstable();
        table.sort_unstable();
        if drawn != table {
            out.push(format!(
                "layer {i}: the diagram draws {drawn:?}, LAYERS has {table:?}"
            ));
        }
    }
    out
}

#[test]
fn architecture_diagram_matches_the_layers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md");
    let doc = std::fs::read_to_string(&path).expect("read docs/architecture.md");
    let diagram = diagram_layers(&doc).unwrap_or_else(|e| panic!("{e}"));
    let diff = layer_differences(&diagram, LAYERS);
    assert!(
        diff.is_empty(),
        "docs/architecture.md's layer diagram differs from LAYERS in tests/layering.rs:\n{}",
        diff.join("\n")
    );
}

#[test]
fn diagram_parser_reads_rows_and_continuations() {
    let row = |a: &str, b: &str, c: &str| format!(" {a:<8}{b:<21}{c}\n");
    let doc = [
        "```\n".to_string(),
        row("layer", "modules", "what"),
        row("─────", "──────────────────", "────"),
        row("1 top", "b::{x,", "text"),
        row("", "y}, c", "more text"),
        row("0", "a", "text"),
        "```\n".to_string(),
    ]
    .concat()
    .replace("layer ", "layer (bottom up)");
    assert_eq!(diagram_layers(&doc).unwrap(), [vec!["a"], vec!["b", "c"]]);
    let diff = layer_differences(&[vec!["a".into()]], &[&["a"], &["b"]]);
    assert_eq!(diff.len(), 2, "{diff:?}");
}

// ---- (b) no import cycle between the files of a folder either ----

/// The module path of a source file under `src/`: `control/etcd.rs` → `control::etcd`,
/// `l2/mod.rs` → `l2`, `fib.rs` → `fib`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Every path `code` names through `crate::`, `self::` or `super::` (use trees expanded),
/// made absolute from `module`, the module the code is in.
fn module_refs(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let word_start = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let rest = &code[i..];
        let base = if !word_start {
            None
        } else if rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if rest.starts_with("self::") {
            Some((module.to_vec(), "self::".len()))
        } else if rest.starts_with("super::") {
            let mut base = module.to_vec();
            let mut n = 0;
            while rest[n..].starts_with("super::") {
                base.pop();
                n += "super::".len();
            }
            Some((base, n))
        } else {
            None
        };
        match base {
            Some((base, n)) => {
                let (paths, used) = use_tree(&rest[n..]);
                out.extend(paths.into_iter().map(|p| [base.clone(), p].concat()));
                i += n + used.max(1);
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

/// Expands the use tree at the start of `s` (`a::b`, `a::{b, c::{d, self}}`, `a as x`,
/// `a::*`) into its paths; returns them and the bytes read.
fn use_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut path = Vec::new();
    let mut i = 0;
    loop {
        let ident: String = s[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        i += ident.len();
        if ident.is_empty() {
            if s[i..].starts_with('{') {
                let (items, used) = use_group(&s[i + 1..]);
                let paths = items
                    .into_iter()
                    .map(|p| [path.clone(), p].concat())
                    .collect();
                return (paths, i + 1 + used);
            }
            return (vec![path], i);
        }
        if ident != "self" {
            path.push(ident);
        }
        if !s[i..].starts_with("::") {
            return (vec![path], i);
        }
        i += 2;
    }
}

/// The items of a use group, `s` starting after its `{`; returns them and the bytes read
/// through the closing `}`.
fn use_group(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let skip = s[i..].len()
            - s[i..]
                .trim_start_matches(|c: char| c.is_whitespace() || c == ',')
                .len();
        i += skip;
        if s[i..].starts_with('}') {
            return (out, i + 1);
        }
        let (paths, used) = use_tree(&s[i..]);
        out.extend(paths);
        // Past an `as alias` or anything else up to the item's end.
        let tail = s[i + used..].find([',', '}']).unwrap_or(s.len() - i - used);
        i += used + tail;
    }
    (out, i)
}

/// The file module a path lands in: its longest prefix that is one of `files`.
fn file_of<'a>(
    path: &[String],
    files: &'a BTreeMap<Vec<String>, String>,
) -> Option<&'a Vec<String>> {
    (1..=path.len())
        .rev()
        .find_map(|n| files.get_key_value(&path[..n]).map(|(k, _)| k))
}

/// Import edges between the files of `src/`, as file → (file it uses → where it was seen).
/// A file's uses of its own ancestors (`super::X` into a `mod.rs`, `crate::l2::X` from
/// `l2/fdb.rs`) are not edges: a folder's `mod.rs` holds what its files share.
fn file_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, ()>> {
    let mut paths = Vec::new();
    rs_files(src, &mut paths);
    let files: BTreeMap<Vec<String>, String> = paths
        .iter()
        .map(|p| p.strip_prefix(src).unwrap())
        .filter(|rel| !rel.starts_with("bin") && *rel != Path::new("main.rs"))
        .map(|rel| (module_of(rel), rel.display().to_string()))
        .collect();
    let mut graph: BTreeMap<String, BTreeMap<String, ()>> = BTreeMap::new();
    for (module, rel) in &files {
        let edges = graph.entry(rel.clone()).or_default();
        for r in module_refs(&code(&src.join(rel)), module) {
            match file_of(&r, &files) {
                Some(to) if !module.starts_with(to) => {
                    edges.insert(files[to].clone(), ());
                }
                _ => {}
            }
        }
    }
    graph
}

/// Every elementary cycle's smallest rotation, found by a depth-first search from each node
/// over nodes after it (so each cycle is reported once).
fn cycles(graph: &BTreeMap<String, BTreeMap<String, ()>>) -> Vec<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeMap<String, ()>>,
        start: &str,
        path: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        let here = path.last().cloned().unwrap_or_default();
        for next in g.get(&here).into_iter().flat_map(|e| e.keys()) {
            if next == start {
                out.push(path.clone());
            } else if next.as_str() > start && !path.contains(next) && path.len() < 8 {
                path.push(next.clone());
                walk(g, start, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    for start in graph.keys() {
        walk(graph, start, &mut vec![start.clone()], &mut out);
    }
    out
}

#[test]
fn no_import_cycle_between_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found: Vec<String> = cycles(&file_graph(&src))
        .iter()
        .map(|c| format!("{} -> {}", c.join(" -> "), c[0]))
        .collect();
    assert!(
        found.is_empty(),
        "import cycles between files of src/:\n{}",
        found.join("\n")
    );
}

#[test]
fn module_refs_resolve_self_super_and_groups() {
    let m: Vec<String> = vec!["l2".into(), "control".into()];
    let refs = module_refs(
        "use super::{config::{A, self}, fdb as f};\nlet x = crate::wire::ipv4::Packet::new();\nuse self::inner::*;",
        &m,
    );
    let s: Vec<String> = refs.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        s,
        [
            "l2::config::A",
            "l2::config",
            "l2::fdb",
            "wire::ipv4::Packet::new",
            "l2::control::inner"
        ]
    );
    let g: BTreeMap<String, BTreeMap<String, ()>> =
        [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
            .iter()
            .fold(BTreeMap::new(), |mut g, (x, y)| {
                g.entry(x.to_string())
                    .or_default()
                    .insert(y.to_string(), ());
                g
            });
    assert_eq!(cycles(&g), [vec!["a", "b", "c"]]);
}

// ---- (c) no function in src/ longer than the project's limit ----

/// The hard limit of the project's rules (docs: functions short enough to read at once).
const MAX_FN_LINES: usize = 120;

/// Functions of `text` and their length in lines, counted from the `fn` line to the closing
/// brace at the same indentation (declarations without a body and one-line bodies skipped).
fn fn_lengths(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let trimmed = line.trim_end();
        if trimmed.ends_with(';') || (trimmed.contains('{') && trimmed.ends_with('}')) {
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let close = format!("{indent}}}");
        if let Some(end) = lines[i + 1..].iter().position(|l| l.trim_end() == close) {
            out.push((name, i + 1, end + 2));
        }
    }
    out
}

/// The name of the function a line starts (`pub(crate) async fn name<...>(`), if it does.
fn fn_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    loop {
        match words.next()? {
            "fn" => break,
            w if w.starts_with("pub")
                || ["const", "async", "unsafe", "extern", "\"C\""].contains(&w) => {}
            _ => return None,
        }
    }
    let name: String = words
        .next()?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[test]
fn no_function_longer_than_the_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let mut long = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        for (name, line, len) in fn_lengths(&text) {
            if len > MAX_FN_LINES {
                let rel = f.strip_prefix(&src).unwrap().display();
                long.push(format!("src/{rel}:{line}: fn {name} is {len} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FN_LINES} lines (split them):\n{}",
        long.join("\n")
    );
}

#[test]
fn fn_lengths_count_to_the_closing_brace() {
    let text = "fn a() {\n    x();\n}\n    pub(crate) async fn b<T>(\n        t: T,\n    ) {\n        {\n        }\n    }\nfn c();\nfn d() { 1 }\n";
    assert_eq!(
        fn_lengths(text),
        [("a".to_string(), 1, 3), ("b".to_string(), 4, 6)]
    );
}
