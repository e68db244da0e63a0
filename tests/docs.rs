//! The documents name files that exist: every repository path written in backticks in
//! `docs/architecture.md` (the map for reading the code) and in `README.md`.

use std::path::Path;

const TOP_LEVEL: &[&str] = &[
    "src/", "protocol/", "autoscaler/", "actors/", "workers/", "cluster/", "simulator/", "loadtests/", "tests/",
    "docs/", "scripts/", "examples/",
];

/// The backticked spans of `text` that look like repository paths.
fn named_paths(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| TOP_LEVEL.iter().any(|top| span.starts_with(top)))
        .filter(|span| !span.contains(char::is_whitespace) && !span.contains('*') && !span.contains('<'))
        .map(str::to_string)
        .collect()
}

fn missing_in(document: &str) -> (usize, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(document)).expect("the document exists");
    let paths = named_paths(&text);
    let missing = paths.iter().filter(|path| !root.join(path).exists()).cloned().collect();
    (paths.len(), missing)
}

#[test]
fn every_path_the_architecture_page_names_exists() {
    let (named, missing) = missing_in("docs/architecture.md");
    assert!(named >= 30, "docs/architecture.md names only {named} paths: the parser lost them");
    assert!(missing.is_empty(), "docs/architecture.md names files that do not exist: {missing:?}");
}

#[test]
fn every_path_the_readme_names_exists() {
    let (_, missing) = missing_in("README.md");
    assert!(missing.is_empty(), "README.md names files that do not exist: {missing:?}");
}

#[test]
fn paths_are_found_in_backticks_only() {
    let text = "see `src/api/openai.rs` and `workers/` but not src/lib.rs or `cargo test`";
    assert_eq!(named_paths(text), vec!["src/api/openai.rs".to_string(), "workers/".to_string()]);
}
