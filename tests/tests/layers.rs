//! The library's layers, read from its sources: the domain imports nothing of the crate but itself and nothing
//! outside but serde; the adapters (`aws`) import no use case, harness or metrics; only the adapters name the SDK;
//! and the top-level modules import each other without a circle. Test code (after `#[cfg(test)]`) and comments
//! are not read.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What ships of a source file: the file up to its tests, without comments.
fn shipped(text: &str) -> String {
    text.split("#[cfg(test)]")
        .next()
        .unwrap()
        .lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `.rs` file under `dir`, with its path relative to `root`.
fn sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let code = shipped(&std::fs::read_to_string(&path).unwrap());
            out.push((path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"), code));
        }
    }
}

fn library() -> Vec<(String, String)> {
    let root: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "shared", "src"].iter().collect();
    let mut out = Vec::new();
    sources(&root, &root, &mut out);
    assert!(out.len() > 20, "the library's sources were not found under {}", root.display());
    out
}

/// The top-level module a file belongs to (`aws/elbv2.rs` → `aws`, `config.rs` → `config`).
fn module(path: &str) -> String {
    path.split('/').next().unwrap().trim_end_matches(".rs").to_string()
}

/// The crate's top-level modules a file's code names (`crate::x`).
fn names(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(i, _)| code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect()
}

#[test]
fn the_domain_is_pure_and_imports_nothing_but_serde() {
    for (path, code) in library().iter().filter(|(p, _)| module(p) == "domain") {
        let foreign: Vec<String> = names(code).into_iter().filter(|m| m != "domain").collect();
        assert!(foreign.is_empty(), "{path} imports crate::{foreign:?}");
        for line in code.lines().map(str::trim).filter(|l| l.starts_with("use ")) {
            let krate = line[4..].split("::").next().unwrap().trim_start_matches('{');
            assert!(
                ["std", "core", "serde", "super", "crate", "self"].contains(&krate),
                "{path}: the domain uses {krate} ({line})"
            );
        }
    }
}

#[test]
fn adapters_import_no_use_case_and_only_they_name_the_sdk() {
    for (path, code) in library() {
        let m = module(&path);
        if m == "aws" {
            let above: Vec<String> =
                names(&code).into_iter().filter(|n| ["usecase", "harness", "metrics"].contains(&n.as_str())).collect();
            assert!(above.is_empty(), "the adapter {path} imports crate::{above:?}");
        } else {
            for sdk in ["aws_sdk_", "aws_smithy_", "aws_config"] {
                assert!(!code.contains(sdk), "{path} names {sdk}: only shared/src/aws speaks to the SDK");
            }
        }
    }
}

#[test]
fn the_library_s_modules_import_each_other_without_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, code) in library() {
        let m = module(&path);
        if m == "lib" {
            continue;
        }
        let deps = graph.entry(m.clone()).or_default();
        deps.extend(names(&code).into_iter().filter(|n| *n != m));
    }
    // Depth-first search for a back edge; the circle found is printed whole.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            return Some(path[i..].iter().cloned().chain([m.to_string()]).collect());
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(circle) = visit(d, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        let circle = visit(m, &graph, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "the library's modules import each other in a circle: {}",
            circle.unwrap().join(" → ")
        );
    }
}

#[test]
fn a_crate_path_counts_in_shipped_code_and_not_in_a_comment_or_a_test() {
    let code =
        "use crate::usecase::now_ms; // crate::metrics\nfn f() { crate::domain::x() }\n#[cfg(test)]\nuse crate::aws;";
    assert_eq!(names(&shipped(code)), BTreeSet::from(["usecase".to_string(), "domain".to_string()]));
    assert_eq!(module("aws/elbv2.rs"), "aws");
    assert_eq!(module("config.rs"), "config");
}
