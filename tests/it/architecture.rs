//! The layering of `src/`, checked: the `crate::` paths between its top-level areas (each
//! folder or top-level file) form no cycle, only `app` and `cli` read `config`, no area below
//! `http` names `ApiError`, and no file grows past 600 lines. A change that breaks one of
//! these fails here, with the files that do it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files longer than this are doing more than one job.
const MAX_LINES: usize = 600;

/// A `.rs` file under `src/`, with its module path (`["worker", "writer"]`).
struct Source {
    path: PathBuf,
    module: Vec<String>,
    text: String,
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&root).unwrap();
            let mut module: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            Source { path, module, text }
        })
        .collect()
}

/// The text without comments and string literals, so that a doc comment or a message that
/// names `crate::x` is not read as a dependency.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if let Some(raw) = rest.strip_prefix("r#\"") {
            i += 3 + raw.find("\"#").map_or(raw.len(), |e| e + 2);
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            i += (j + 1).min(rest.len());
        } else if rest.starts_with("'\"'") {
            i += 3;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every path a file names from the crate's root, as its segments: `crate::db::jobs` and the
/// members of `crate::{db::jobs, domain}` alike, and `super::` paths that climb out of the
/// file's area.
fn crate_paths(source: &Source) -> Vec<Vec<String>> {
    let code = code_only(&source.text);
    let mut paths = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut search = 0;
    while let Some(found) = find_root(&code[search..]) {
        let (start, prefix_len, base) = found;
        let at = search + start;
        search = at + prefix_len;
        // Not the tail of a longer name (`$crate::` is a macro's own crate: the same one).
        if at > 0 && code[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let base: Vec<String> = match base {
            Root::Crate => Vec::new(),
            Root::Super(n) => {
                let here = source.module.len();
                // A file's own module is `module`; `super` from `a/b.rs` is `a`.
                if n > here {
                    continue;
                }
                source.module[..here - n].to_vec()
            }
        };
        let rest = &code[at + prefix_len..];
        if rest.starts_with('{') {
            for member in group_members(rest) {
                let mut path = base.clone();
                path.extend(member);
                paths.push(path);
            }
        } else {
            let segment: String = rest.chars().take_while(|&c| ident(c)).collect();
            if !segment.is_empty() {
                let mut path = base;
                path.push(segment);
                paths.push(path);
            }
        }
    }
    paths
}

enum Root {
    Crate,
    /// `super::` repeated n times.
    Super(usize),
}

/// The next `crate::` or `super::(super::)*` in `code`: where it starts, how long it is, and
/// what it climbs to.
fn find_root(code: &str) -> Option<(usize, usize, Root)> {
    let krate = code.find("crate::");
    let sup = code.find("super::");
    match (krate, sup) {
        (Some(k), s) if s.is_none_or(|s| k < s) => Some((k, "crate::".len(), Root::Crate)),
        (_, Some(s)) => {
            let mut n = 0;
            let mut len = 0;
            while code[s + len..].starts_with("super::") {
                n += 1;
                len += "super::".len();
            }
            Some((s, len, Root::Super(n)))
        }
        _ => None,
    }
}

/// The first segment of each member of a `{…}` group (`{db::jobs, domain::{A, B}}` gives
/// `db`, `domain`).
fn group_members(group: &str) -> Vec<Vec<String>> {
    let mut members = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in group.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth > 1 {
                    current.push(c);
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    members.push(current.clone());
                    break;
                }
                current.push(c);
            }
            ',' if depth == 1 => members.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    members
        .iter()
        .filter_map(|m| {
            let first: String = m
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!first.is_empty() && first != "self").then(|| vec![first])
        })
        .collect()
}

/// The area of each file (`worker` for `src/worker/writer.rs`, `config` for `src/config.rs`),
/// `None` for the crate root (`lib.rs`, `main.rs`).
fn area(source: &Source) -> Option<&str> {
    match source.module.first().map(String::as_str) {
        None | Some("lib") | Some("main") => None,
        Some(first) => Some(first),
    }
}

/// For each area, the areas it names, each with one file that does it.
fn dependencies(sources: &[Source]) -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let areas: BTreeSet<&str> = sources.iter().filter_map(area).collect();
    let mut graph: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for source in sources {
        let Some(from) = area(source) else { continue };
        let edges = graph.entry(from.to_string()).or_default();
        for path in crate_paths(source) {
            if let Some(to) = path.first()
                && to != from
                && areas.contains(to.as_str())
            {
                edges
                    .entry(to.clone())
                    .or_insert_with(|| source.path.clone());
            }
        }
    }
    graph
}

/// The strongly connected groups of more than one area (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeMap<String, PathBuf>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeMap<String, PathBuf>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|e| e.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn the_areas_of_src_depend_on_each_other_in_one_direction() {
    let graph = dependencies(&sources());
    let found = cycles(&graph);
    let explain = |group: &Vec<String>| {
        group
            .iter()
            .flat_map(|from| {
                graph[from]
                    .iter()
                    .filter(|(to, _)| group.contains(to))
                    .map(move |(to, file)| format!("  {from} -> {to} ({})", file.display()))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        found.is_empty(),
        "areas of src/ that import each other in a cycle:\n{}",
        found.iter().map(explain).collect::<Vec<_>>().join("\n\n")
    );
}

#[test]
fn only_app_and_cli_read_the_assembled_config() {
    let graph = dependencies(&sources());
    let readers: Vec<&String> = graph
        .iter()
        .filter(|(_, edges)| edges.contains_key("config"))
        .map(|(from, _)| from)
        .filter(|from| !["app", "cli"].contains(&from.as_str()))
        .collect();
    assert!(
        readers.is_empty(),
        "areas that import config (they should take their own section): {readers:?}"
    );
}

#[test]
fn only_the_api_names_its_error_type() {
    let offenders: Vec<String> = sources()
        .iter()
        .filter(|s| area(s) != Some("http"))
        .filter(|s| code_only(&s.text).contains("ApiError"))
        .map(|s| s.path.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "outside http, errors are the area's own (converted at the edge): {offenders:?}"
    );
}

#[test]
fn no_file_in_src_does_several_jobs_at_once() {
    let long: Vec<String> = sources()
        .iter()
        .map(|s| (s.path.display().to_string(), s.text.lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(path, lines)| format!("{path}: {lines} lines"))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn the_check_sees_the_paths_a_file_names() {
    let source = Source {
        path: PathBuf::from("src/worker/writer.rs"),
        module: vec!["worker".into(), "writer".into()],
        text: r#"
            use crate::{db::jobs, metrics::Metrics};
            use super::super::fetch::Fetcher; // crate::config in a comment
            use super::Queue;
            let s = "crate::http in a string";
            $crate::db::from_row!(X {});
        "#
        .into(),
    };
    let firsts: BTreeSet<String> = crate_paths(&source)
        .into_iter()
        .filter_map(|p| p.first().cloned())
        .collect();
    assert_eq!(
        firsts,
        ["db", "fetch", "metrics", "worker"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let mut graph = BTreeMap::new();
    let edge = |to: &str| BTreeMap::from([(to.to_string(), PathBuf::new())]);
    graph.insert("a".to_string(), edge("b"));
    graph.insert("b".to_string(), edge("c"));
    graph.insert("c".to_string(), edge("a"));
    graph.insert("d".to_string(), edge("a"));
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
}
