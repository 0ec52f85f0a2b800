//! The layers check themselves (design §3, ARCHITECTURE.md): this test reads every `crate::`
//! path in `src/` and fails on an edge the design forbids. Test code (`#[cfg(test)]` items and
//! the files they declare) may reach anywhere and is not read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `(from, to, why)`: no module under `from` may name anything under `to`. A module is a
/// path below `src/` written the way Rust names it (`store`, `store::sqlite`).
const FORBIDDEN: &[(&str, &str, &str)] = &[
    ("engine", "store", "the pure rules do no IO"),
    ("engine", "dispatch", "the pure rules do no IO"),
    ("engine", "tui", "the pure rules do no IO"),
    ("engine", "cli", "the pure rules do no IO"),
    ("engine", "api", "the pure rules do no IO"),
    ("engine", "receiver", "the pure rules do no IO"),
    ("engine", "import", "the pure rules do no IO"),
    ("model", "store", "the model is plain data"),
    ("model", "dispatch", "the model is plain data"),
    ("model", "engine", "the model is plain data"),
    ("model", "tui", "the model is plain data"),
    ("model", "cli", "the model is plain data"),
    ("model", "api", "the model is plain data"),
    ("store", "dispatch", "the store sits below the dispatcher"),
    ("store", "tui", "the store sits below the front ends"),
    ("store", "cli", "the store sits below the front ends"),
    ("store", "api", "the store sits below the front ends"),
    ("store", "receiver", "the store sits below the front ends"),
    (
        "dispatch",
        "tui",
        "the dispatcher sits below the front ends",
    ),
    (
        "dispatch",
        "cli",
        "the dispatcher sits below the front ends",
    ),
    (
        "dispatch",
        "api",
        "the dispatcher sits below the front ends",
    ),
    ("store", "actions", "the store sits below the actions layer"),
    (
        "dispatch",
        "actions",
        "the dispatcher sits below the actions layer",
    ),
    ("engine", "actions", "the pure rules do no IO"),
    ("model", "actions", "the model is plain data"),
    (
        "actions",
        "cli",
        "the actions layer sits below the front ends",
    ),
    (
        "actions",
        "tui",
        "the actions layer sits below the front ends",
    ),
    (
        "actions",
        "api",
        "the actions layer sits below the front ends",
    ),
    (
        "tui",
        "cli",
        "the console and the CLI are separate front ends",
    ),
    (
        "api",
        "tui",
        "the API and the console are separate front ends",
    ),
    (
        "store::sqlite",
        "store::postgres",
        "a backend never uses another",
    ),
    (
        "store::postgres",
        "store::sqlite",
        "a backend never uses another",
    ),
];

/// One `crate::` path found in a source file.
#[derive(Debug, PartialEq)]
struct Edge {
    file: String,
    line: usize,
    from: String,
    to: String,
}

/// The module a file under `src/` belongs to: `src/store/sqlite/rows.rs` → `store::sqlite::rows`.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_end_matches(".rs").to_string();
        if last == "mod" || last == "lib" || last == "main" {
            parts.pop();
        }
    }
    parts.join("::")
}

/// The `crate::` paths of non-test code in `text`, and the names of the test-only modules it
/// declares (`#[cfg(test)] mod name;`).
fn scan(file: &str, from: &str, text: &str) -> (Vec<Edge>, Vec<String>) {
    let mut edges = Vec::new();
    let mut test_mods = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the item the attribute guards: a `mod x;` line, or a braced item.
            let mut depth = 0i64;
            let mut opened = false;
            for (_, next) in lines.by_ref() {
                let t = next.trim();
                if !opened
                    && let Some(name) = t.strip_prefix("mod ").and_then(|r| r.strip_suffix(';'))
                {
                    test_mods.push(name.trim().to_string());
                    break;
                }
                depth += next.matches('{').count() as i64 - next.matches('}').count() as i64;
                opened |= next.contains('{');
                if opened && depth <= 0 {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        for (i, _) in line.match_indices("crate::") {
            // `hookops::crate::` cannot happen; `$crate::` is a macro path, not an edge.
            if line[..i].ends_with('$') {
                continue;
            }
            let rest = &line[i + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':').to_string();
            if !path.is_empty() {
                edges.push(Edge {
                    file: file.to_string(),
                    line: n + 1,
                    from: from.to_string(),
                    to: path,
                });
            }
        }
    }
    (edges, test_mods)
}

/// Whether module path `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// The forbidden edges among `edges`, one line each.
fn violations(edges: &[Edge]) -> Vec<String> {
    let mut out = Vec::new();
    for e in edges {
        for (from, to, why) in FORBIDDEN {
            // An edge into a module's own subtree is never forbidden (`store::sqlite` using
            // `store::sqlite::rows`), whatever a broader rule says.
            if under(&e.from, from) && under(&e.to, to) && !under(&e.to, &e.from) {
                out.push(format!(
                    "{}:{}: `{}` uses `crate::{}`, which is forbidden: {why}",
                    e.file, e.line, e.from, e.to
                ));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every non-test `crate::` edge of the crate's sources.
fn crate_edges() -> Vec<Edge> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut test_only: BTreeSet<String> = BTreeSet::new();
    let mut scanned = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(&src).expect("under src");
        let module = module_of(rel);
        let text = std::fs::read_to_string(path).expect("readable source");
        let (edges, test_mods) = scan(&rel.display().to_string(), &module, &text);
        for m in test_mods {
            test_only.insert(if module.is_empty() {
                m
            } else {
                format!("{module}::{m}")
            });
        }
        scanned.push((module, edges));
    }
    scanned
        .into_iter()
        .filter(|(module, _)| !test_only.iter().any(|t| under(module, t)))
        .flat_map(|(_, edges)| edges)
        .collect()
}

#[test]
fn no_module_uses_a_layer_the_design_forbids() {
    let edges = crate_edges();
    assert!(
        edges.len() > 100,
        "the scan found only {} edges: it is not reading the sources",
        edges.len()
    );
    let bad = violations(&edges);
    assert!(
        bad.is_empty(),
        "forbidden dependencies:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checker_catches_a_forbidden_edge_and_ignores_test_code() {
    let text = "use crate::model::ItemId;\n\
                use crate::dispatch::AttemptEvent; // added back by mistake\n\
                fn f() { crate::store::sqlite::rows::x(); }\n\
                #[cfg(test)]\n\
                mod tests {\n    use crate::dispatch::http;\n    fn g() {}\n}\n\
                #[cfg(test)]\n\
                mod demo_tests;\n";
    let (edges, test_mods) = scan("store/items.rs", "store::items", text);
    assert_eq!(test_mods, vec!["demo_tests".to_string()]);
    let targets: Vec<&str> = edges.iter().map(|e| e.to.as_str()).collect();
    assert_eq!(
        targets,
        [
            "model::ItemId",
            "dispatch::AttemptEvent",
            "store::sqlite::rows::x"
        ]
    );
    let bad = violations(&edges);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("store/items.rs:2: `store::items` uses `crate::dispatch::AttemptEvent`"),
        "{}",
        bad[0]
    );
    // A backend reaching into another backend is caught; its own subtree is not.
    let (edges, _) = scan(
        "store/sqlite/rows.rs",
        "store::sqlite::rows",
        "use crate::store::postgres::Pool;\nuse crate::store::sqlite::writer::Writer;\n",
    );
    assert_eq!(violations(&edges).len(), 1);
    assert_eq!(module_of(Path::new("store/sqlite/mod.rs")), "store::sqlite");
    assert_eq!(module_of(Path::new("lib.rs")), "");
}

/// The lines of non-test code in `text` that name `word`: comments and the item after each
/// `#[cfg(test)]` (up to its closing brace, or its `;`) are not read.
fn naming(text: &str, word: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let (mut skipping, mut depth, mut opened) = (false, 0i64, false);
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if line.trim() == "#[cfg(test)]" {
            (skipping, depth, opened) = (true, 0, false);
            continue;
        }
        if skipping {
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            opened |= code.contains('{');
            if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                skipping = false;
            }
            continue;
        }
        if code.contains(word) {
            found.push(i + 1);
        }
    }
    found
}

/// The store's backend-neutral code (every file directly in `src/store/`) speaks no SQL: it
/// names no `rusqlite` item; only a backend does (design §7, the seam).
#[test]
fn the_backend_neutral_store_names_no_sqlite_item() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut bad = Vec::new();
    let mut read = 0;
    for entry in std::fs::read_dir(&dir).expect("src/store") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            read += 1;
            let text = std::fs::read_to_string(&path).expect("readable source");
            for line in naming(&text, "rusqlite") {
                bad.push(format!("{}:{line}", path.display()));
            }
        }
    }
    assert!(read > 10, "read only {read} files of src/store");
    assert!(bad.is_empty(), "rusqlite named in:\n{}", bad.join("\n"));
    // The check sees a use in code, not in a comment or in test code.
    let sample = "// rusqlite in a comment\nuse rusqlite::Row;\n#[cfg(test)]\nmod t {\n    use rusqlite::Connection;\n}\n#[cfg(test)]\nmod u;\nfn f(c: &rusqlite::Connection) {}\n";
    assert_eq!(naming(sample, "rusqlite"), [2, 9]);
}

/// Issue 18: the front ends (`cli`, `tui`, `api`) act only through the actions layer, which
/// audits every operator action: none calls a store method that acts or audits itself. The
/// demo's setup (`cli/demo.rs`) is code, not an operator's action.
#[test]
fn front_ends_act_only_through_the_actions_layer() {
    const STORE_ACTIONS: &[&str] = &[
        ".assign(",
        ".advance(",
        ".set_paused(",
        ".apply_workflow(",
        ".prune(",
        ".prune_with_progress(",
        ".refire(",
        ".cancel_deliveries(",
        ".begin_replay(",
        ".begin_test",
        ".import_items(",
        ".audit_begin(",
        ".audit_finish(",
    ];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for front in ["cli", "tui", "api"] {
        rust_files(&src.join(front), &mut files);
    }
    let mut bad = Vec::new();
    let mut read = 0;
    for path in &files {
        let rel = path
            .strip_prefix(&src)
            .expect("under src")
            .display()
            .to_string();
        if rel.contains("/tests/") || rel == "cli/demo.rs" {
            continue;
        }
        read += 1;
        let text = std::fs::read_to_string(path).expect("readable source");
        for call in STORE_ACTIONS {
            for line in naming(&text, call) {
                bad.push(format!("{rel}:{line}: {call}"));
            }
        }
    }
    assert!(read > 20, "read only {read} front-end files");
    assert!(
        bad.is_empty(),
        "a front end acts without the actions layer:\n{}",
        bad.join("\n")
    );
}
