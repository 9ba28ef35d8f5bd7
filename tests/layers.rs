//! The shape of `src/`: no import cycle between its modules, the lower layers import
//! nothing above them, and no file grows past about 600 lines. A module here is a top-level file or folder of `src/`
//! (`config`, `metrics`, `bridge`...), and under `src/sources/` each folder or file
//! (`sources::kafka`, `sources::common`); the files inside one such module may use each
//! other. Unit-test modules (`#[cfg(test)] mod tests`, at the end of a file, or a
//! folder's `tests.rs`) may reach upward and are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module -> the modules it names, read from `crate::` and `super::` paths.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    let mut texts: Vec<(String, String)> = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // A folder's unit tests in their own file are a test module too.
        if relative == "lib.rs" || relative == "main.rs" || relative.ends_with("/tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        texts.push((module_of(&relative), without_tests_and_comments(&text)));
    }
    let modules: BTreeSet<String> = texts.iter().map(|(module, _)| module.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &texts {
        let named = graph.entry(module.clone()).or_default();
        for path in paths_after(text, "crate::") {
            if let Some(target) = resolve(&path, &modules) {
                named.insert(target);
            }
        }
        // `super::` from a module directly under `sources` names a sibling.
        if module.starts_with("sources::") {
            for path in paths_after(text, "super::") {
                let sibling = format!("sources::{}", path[0]);
                if modules.contains(&sibling) {
                    named.insert(sibling);
                } else if path[0] == "super" {
                    named.insert("sources".into());
                }
            }
        }
        named.remove(module);
    }
    graph
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// `config/load.rs` -> `config`; `sources/kafka/consumer.rs` -> `sources::kafka`;
/// `sources/mod.rs` -> `sources`.
fn module_of(relative: &str) -> String {
    let parts: Vec<&str> = relative.trim_end_matches(".rs").split('/').collect();
    match parts.as_slice() {
        ["sources", "mod"] => "sources".into(),
        ["sources", child, ..] => format!("sources::{child}"),
        [top, ..] => (*top).to_owned(),
        [] => unreachable!("a file has a name"),
    }
}

fn without_tests_and_comments(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers after each `prefix`: `crate::sources::common::kind` -> `[sources,
/// common, kind]`.
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[at + prefix.len()..];
        let path: Vec<String> = rest
            .split("::")
            .map_while(|part| {
                let ident: String = part
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                (!ident.is_empty()).then_some(ident)
            })
            .collect();
        if !path.is_empty() {
            paths.push(path);
        }
    }
    paths
}

fn resolve(path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    if path.len() > 1 {
        let child = format!("{}::{}", path[0], path[1]);
        if modules.contains(&child) {
            return Some(child);
        }
    }
    modules.contains(&path[0]).then(|| path[0].clone())
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let current = path.last().unwrap().clone();
        for next in graph.get(&current).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(graph, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_of_src_imports_itself_through_others() {
    let graph = imports();
    assert!(graph.len() > 20, "the source tree was not read: {graph:?}");
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|module| cycle_from(&graph, module))
        .map(|cycle| cycle.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn lower_layers_import_nothing_above_them() {
    let graph = imports();
    let runtime = [
        "sources",
        "metrics",
        "bridge",
        "exchange",
        "supervisor",
        "admin",
        "listener",
        "notify",
        "normalize",
    ];
    let kinds: Vec<&String> = graph
        .keys()
        .filter(|module| {
            module.starts_with("sources::")
                && !["sources::common", "sources::registry"].contains(&module.as_str())
        })
        .collect();
    let mut wrong = Vec::new();
    let mut forbid = |module: &str, above: &[&str]| {
        for target in graph.get(module).into_iter().flatten() {
            if above.contains(&target.as_str()) {
                wrong.push(format!("{module} imports {target}"));
            }
        }
    };
    // The message model and config are the base every other layer stands on.
    forbid("message", &["config", "cloudevent", "routing", "template"]);
    forbid("message", &runtime);
    forbid("config", &runtime);
    // Metrics count messages; they know nothing of how they are made or sent.
    forbid(
        "metrics",
        &["sources", "normalize", "bridge", "exchange", "supervisor"],
    );
    // A message goes source -> bridge -> normalize -> exchange, never back.
    forbid(
        "exchange",
        &["bridge", "sources", "supervisor", "normalize"],
    );
    forbid(
        "normalize",
        &["bridge", "sources", "exchange", "supervisor"],
    );
    forbid(
        "sources::common",
        &["sources", "bridge", "exchange", "supervisor"],
    );
    for kind in &kinds {
        let others: Vec<&str> = kinds
            .iter()
            .filter(|other| other != &kind)
            .map(|other| other.as_str())
            .chain(["sources", "bridge", "exchange", "supervisor", "normalize"])
            .collect();
        forbid(kind, &others);
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

/// One file, a few concerns: no file of `src/` over about 600 lines. A folder's unit
/// tests in their own `tests.rs` may be longer, one contract to a file.
#[test]
fn no_source_file_is_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter(|file| !file.ends_with("tests.rs"))
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).unwrap().lines().count();
            (lines > 600).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over 600 lines:\n{}",
        long.join("\n")
    );
}
