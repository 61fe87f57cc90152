//! The layering of `sluice-core` (see `src/lib.rs`): a module may use only
//! modules of lower layers, and the sinks do not use each other. Read from
//! the sources, so that an import cycle fails a test instead of waiting for
//! a reader to find it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules by layer; a module may use its own layer's siblings
/// only where listed in `SAME_LAYER`.
const LAYERS: &[&[&str]] = &[
    &[
        "error", "clock", "config", "metrics", "alloc", "exec", "tls",
    ],
    &["storage"],
    &["coordinator"],
    &["sink", "source"],
    &["plan"],
    &["client"],
    &["stream"],
];

/// Base modules that use one another (no cycle among them).
const SAME_LAYER: &[(&str, &str)] = &[
    ("config", "error"),
    ("metrics", "error"),
    ("error", "tls"),
    ("metrics", "tls"),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/sink/files/commit.rs` -> ["sink", "files", "commit"].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a line: string literals and comments left out.
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_string => {
                chars.next();
            }
            '"' => in_string = !in_string,
            '/' if !in_string && chars.peek() == Some(&'/') => break,
            _ if in_string => {}
            _ => out.push(c),
        }
    }
    out
}

/// Names the crate root re-exports (`crate::SluiceError`), allowed anywhere.
const ROOT_NAMES: &[&str] = &["SluiceError"];

/// Every `crate::a::b` path a file names (outside comments and strings),
/// as [a, b].
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    for line in text.lines() {
        let code = code_of(line);
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            let before = &rest[..at];
            rest = &rest[at + "crate::".len()..];
            if before.ends_with('$') {
                continue;
            }
            let path: Vec<String> = rest
                .split("::")
                .take(2)
                .map(|s| {
                    s.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect()
                })
                .collect();
            out.push(path);
        }
    }
    out
}

#[test]
fn modules_use_only_lower_layers() {
    // The checkout the test runs in, not the one it was built in (a
    // target directory is shared between checkouts).
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let src = Path::new(&manifest).join("src");
    let mut files = vec![];
    sources(&src, &mut files);
    assert!(files.len() > 20, "found only {} sources", files.len());
    let mut violations = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let from = module_path(&src, file);
        let Some(top) = from.first() else { continue };
        let Some(from_layer) = layer_of(top) else {
            violations.insert(format!("{}: module {top} has no layer", file.display()));
            continue;
        };
        for grouped in ["crate::{", "crate::sink::{", "super::super::"] {
            assert!(
                !text.contains(grouped),
                "{}: `{grouped}`: name crate paths one by one (the layering test reads them)",
                file.display()
            );
        }
        for path in crate_paths(&text) {
            let Some(to) = path.first().filter(|s| !s.is_empty()) else {
                continue;
            };
            if to == top {
                // Inside one top-level module: the sinks stay apart.
                if top == "sink"
                    && let (Some(a), Some(b)) = (from.get(1), path.get(1))
                    && a != b
                {
                    violations.insert(format!("{}: sink::{a} uses sink::{b}", file.display()));
                }
                continue;
            }
            let Some(to_layer) = layer_of(to) else {
                if !ROOT_NAMES.contains(&to.as_str()) {
                    violations.insert(format!("{}: crate::{to} has no layer", file.display()));
                }
                continue;
            };
            let allowed =
                to_layer < from_layer || SAME_LAYER.contains(&(top.as_str(), to.as_str()));
            if !allowed {
                violations.insert(format!(
                    "{}: {top} (layer {from_layer}) uses {to} (layer {to_layer})",
                    file.display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_reader_finds_paths() {
    let paths = crate_paths(
        "use crate::sink::files::WriteSpec; // crate::client\nx($crate::exec::y)\n\
         f(\"s3://b\", crate::plan::x); g(\"crate::client\")",
    );
    assert_eq!(
        paths,
        vec![
            vec!["sink".to_string(), "files".to_string()],
            vec!["plan".to_string(), "x".to_string()],
        ]
    );
}
