//! The docs and examples say what the code does: every keysmith object in `examples/` and in the
//! docs' YAML blocks is read by the CRDs (typed, no field the schema lacks, CEL rules hold), and
//! every `keysmith …` / `kubectl keysmith …` command line in the docs names a real subcommand
//! and real flags (checked against the binaries' own `--help`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use kube::core::cel;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (recursively) whose name ends with `ext`, sorted.
fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.to_string_lossy().ends_with(ext) {
            out.push(p);
        }
    }
    out.sort();
}

fn markdown() -> Vec<PathBuf> {
    let mut md = Vec::new();
    files(&root().join("docs"), ".md", &mut md);
    md.push(root().join("README.md"));
    md
}

/// The openAPI schema of a CRD kind.
fn schema_of(kind: &str) -> Option<Value> {
    let crd = keysmith::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)?;
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()?
            .open_api_v3_schema
            .as_ref()?,
    )
    .ok()
}

/// Paths in `v` the schema has no place for (the API server would drop them silently: a typo
/// in an example would teach users a field that does nothing).
fn unknown_fields(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (k, child) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (props.and_then(|ps| ps.get(k)), additional) {
                    (Some(s), _) => unknown_fields(s, child, &p, out),
                    (None, Some(s)) if s.is_object() => unknown_fields(s, child, &p, out),
                    (None, Some(Value::Bool(true))) => {}
                    // The object's type and metadata are the API server's, not in the schema.
                    (None, _)
                        if path.is_empty()
                            && ["apiVersion", "kind", "metadata"].contains(&k.as_str()) => {}
                    // `{ ... }`: a doc elides what does not matter there.
                    (None, _) if k == "..." => {}
                    (None, _) => out.push(p),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(s, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Whether a doc left part of the object out (`{ ... }`).
fn elided(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("...") || m.values().any(elided),
        Value::Array(a) => a.iter().any(elided),
        _ => false,
    }
}

/// What is wrong with one keysmith object (empty: nothing).
fn check_object(obj: &Value) -> Vec<String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let typed = match kind {
        "ApiKey" => serde_json::from_value::<keysmith::api::ApiKey>(obj.clone()).map(|_| ()),
        "KeyProvider" => {
            serde_json::from_value::<keysmith::api::KeyProvider>(obj.clone()).map(|_| ())
        }
        "ClusterKeyProvider" => {
            serde_json::from_value::<keysmith::api::ClusterKeyProvider>(obj.clone()).map(|_| ())
        }
        "KeyBudget" => serde_json::from_value::<keysmith::api::KeyBudget>(obj.clone()).map(|_| ()),
        "ClusterKeyBudget" => {
            serde_json::from_value::<keysmith::api::ClusterKeyBudget>(obj.clone()).map(|_| ())
        }
        other => return vec![format!("kind {other:?} is not a keysmith CRD")],
    };
    let mut problems = Vec::new();
    // A doc's `{ ... }` leaves out required fields on purpose: only what it shows is checked.
    if let (Err(e), false) = (typed, elided(obj)) {
        problems.push(format!("does not read as a {kind}: {e}"));
    }
    let schema = schema_of(kind).expect("CRD schema");
    let mut unknown = Vec::new();
    unknown_fields(&schema, obj, "", &mut unknown);
    problems.extend(
        unknown
            .into_iter()
            .map(|p| format!("{p}: no such field in the CRD")),
    );
    if let Err(e) = cel::Validator::new().validate(&schema, obj, None) {
        problems.extend(e.into_vec().into_iter().map(|e| e.message));
    }
    problems
}

/// The keysmith objects of a YAML text (other kinds skipped).
fn keysmith_objects(yaml: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
        if v["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("keysmith.dev/"))
        {
            out.push(v);
        }
    }
    Ok(out)
}

/// Fenced code blocks of a Markdown text: (info string, first line number, body).
fn fences(md: &str) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (i, line) in md.lines().enumerate() {
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            match open.take() {
                Some(block) => out.push(block),
                None => open = Some((info.trim().to_string(), i + 2, String::new())),
            }
        } else if let Some((_, _, body)) = open.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[test]
fn every_example_and_doc_yaml_reads_as_the_crds() {
    let mut sources: Vec<(String, String)> = Vec::new();
    let mut examples = Vec::new();
    files(&root().join("examples"), ".yaml", &mut examples);
    assert!(examples.len() >= 15, "examples found: {examples:?}");
    for p in &examples {
        sources.push((p.display().to_string(), std::fs::read_to_string(p).unwrap()));
    }
    for p in markdown() {
        let md = std::fs::read_to_string(&p).unwrap();
        for (info, line, body) in fences(&md) {
            if info.starts_with("yaml") && body.contains("apiVersion: keysmith.dev/") {
                sources.push((format!("{}:{line}", p.display()), body));
            }
        }
    }
    let mut checked = 0;
    let mut problems = Vec::new();
    for (at, yaml) in &sources {
        match keysmith_objects(yaml) {
            Err(e) => problems.push(format!("{at}: not YAML: {e}")),
            Ok(objs) => {
                for o in objs {
                    checked += 1;
                    for p in check_object(&o) {
                        problems.push(format!(
                            "{at} ({} {}): {p}",
                            o["kind"], o["metadata"]["name"]
                        ));
                    }
                }
            }
        }
    }
    println!(
        "{checked} keysmith objects checked in {} sources",
        sources.len()
    );
    assert!(checked >= 15, "too few objects found: {checked}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_misspelt_field_is_caught() {
    // The check itself: a field the CRD lacks, and a rule broken.
    let typo: Value = serde_yaml::from_str(
        "apiVersion: keysmith.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: a, namespace: b}\nspec:\n  providerRef: {name: p}\n  displayname: oops\n",
    )
    .unwrap();
    assert_eq!(
        check_object(&typo),
        ["spec.displayname: no such field in the CRD"]
    );
    let both: Value = serde_yaml::from_str(
        "apiVersion: keysmith.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: a, namespace: b}\nspec:\n  providerRef: {name: p}\n  ttl: 1h\n  expiresAt: '2030-01-01T00:00:00Z'\n",
    )
    .unwrap();
    assert!(!check_object(&both).is_empty());
}

/// One command line of the docs: which binary, its arguments, and where it was found.
struct CommandLine {
    at: String,
    bin: &'static str,
    args: Vec<String>,
}

/// A command line if `text` is one (`keysmith …`, `kubectl keysmith …`, `kubectl-keysmith …`).
fn command_line(at: String, text: &str) -> Option<CommandLine> {
    let t = text.trim().trim_start_matches("$ ").trim();
    let t = t.split(" # ").next().unwrap_or(t).replace("\\|", "|");
    let (bin, rest) = if let Some(r) = t.strip_prefix("kubectl keysmith ") {
        ("kubectl-keysmith", r)
    } else if let Some(r) = t.strip_prefix("kubectl-keysmith ") {
        ("kubectl-keysmith", r)
    } else if let Some(r) = t.strip_prefix("keysmith ") {
        ("keysmith", r)
    } else {
        return None;
    };
    Some(CommandLine {
        at,
        bin,
        args: rest.split_whitespace().map(str::to_string).collect(),
    })
}

/// Every command line in the docs: lines of fenced blocks (continuations joined) and inline code.
fn command_lines() -> Vec<CommandLine> {
    let mut out = Vec::new();
    for p in markdown() {
        let md = std::fs::read_to_string(&p).unwrap();
        for (_, first, body) in fences(&md) {
            let mut joined = String::new();
            let mut start = first;
            for (i, line) in body.lines().enumerate() {
                if joined.is_empty() {
                    start = first + i;
                }
                match line.trim_end().strip_suffix('\\') {
                    Some(part) => {
                        joined.push_str(part);
                        joined.push(' ');
                    }
                    None => {
                        joined.push_str(line);
                        out.extend(command_line(format!("{}:{start}", p.display()), &joined));
                        joined.clear();
                    }
                }
            }
        }
        let mut in_fence = false;
        for (i, line) in md.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                continue;
            }
            if in_fence {
                continue;
            }
            // Inline code: the odd pieces between backticks.
            for (j, span) in line.split('`').enumerate() {
                if j % 2 == 1 {
                    out.extend(command_line(format!("{}:{}", p.display(), i + 1), span));
                }
            }
        }
    }
    out
}

/// A token that stands for something (`<provider>`, `[--flag]`, `a|b`, `...`): not literal.
fn placeholder(t: &str) -> bool {
    t.contains(['<', '>', '[', ']', '|', '$', '…']) || t.contains("...") || t == "-"
}

const PROVIDERS: [&str; 5] = ["openrouter", "boltz", "ucloud", "digitalocean", "bifrost"];

#[test]
fn command_lines_in_the_docs_name_real_subcommands_and_flags() {
    let mut help_cache: BTreeMap<Vec<String>, Option<String>> = BTreeMap::new();
    let mut help = |bin: &str, path: &[String]| -> Option<String> {
        let key: Vec<String> = std::iter::once(bin.to_string())
            .chain(path.iter().cloned())
            .collect();
        help_cache
            .entry(key)
            .or_insert_with(|| {
                let exe = match bin {
                    "keysmith" => env!("CARGO_BIN_EXE_keysmith"),
                    _ => env!("CARGO_BIN_EXE_kubectl-keysmith"),
                };
                let out = Command::new(exe).args(path).arg("--help").output().ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .clone()
    };
    let lines = command_lines();
    let mut problems = Vec::new();
    let mut subcommands = BTreeSet::new();
    for c in &lines {
        let Some(sub) = c.args.first() else { continue };
        if placeholder(sub) {
            // `keysmith run | crds | …`, `kubectl keysmith status|rotate|…`: each named one.
            for s in sub.split('|').filter(|s| !s.is_empty() && !placeholder(s)) {
                if help(c.bin, &[s.to_string()]).is_none() {
                    problems.push(format!("{}: `{} {s}`: no such subcommand", c.at, c.bin));
                }
            }
            continue;
        }
        let mut path = vec![sub.clone()];
        if sub == "emulate" {
            if let Some(p) = c.args.iter().find(|a| PROVIDERS.contains(&a.as_str())) {
                path.push(p.clone());
            }
        }
        let Some(text) = help(c.bin, &path) else {
            problems.push(format!(
                "{}: `{} {}`: no such subcommand",
                c.at,
                c.bin,
                path.join(" ")
            ));
            continue;
        };
        subcommands.insert(format!("{} {}", c.bin, path.join(" ")));
        // Flags of the command, or (emulate) of the emulate level, or global ones.
        let outer = help(c.bin, &path[..1]).unwrap_or_default();
        let top = help(c.bin, &[]).unwrap_or_default();
        for a in &c.args {
            let flag = a.split('=').next().unwrap_or(a);
            let is_flag = (flag.starts_with("--") && flag.len() > 2)
                || (flag.len() == 2 && flag.starts_with('-') && flag != "--");
            if !is_flag || placeholder(flag) {
                continue;
            }
            let known = |h: &str| {
                h.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
                    .any(|w| w == flag || w.split('=').next() == Some(flag))
            };
            if !(known(&text) || known(&outer) || known(&top)) {
                problems.push(format!(
                    "{}: `{} {}`: no flag {flag}",
                    c.at,
                    c.bin,
                    path.join(" ")
                ));
            }
        }
    }
    println!(
        "{} command lines checked; subcommands: {subcommands:?}",
        lines.len()
    );
    assert!(
        lines.len() >= 20,
        "too few command lines found: {}",
        lines.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The README's "Where to look" table: its rows, as (what, paths named in the row).
fn where_to_look() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n### Where to look\n")
        .nth(1)
        .expect("README.md has a \"### Where to look\" section");
    let section = section.split("\n#").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| what |"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            let what = cells.first().copied().unwrap_or("").trim().to_string();
            let paths = cells
                .get(1)
                .copied()
                .unwrap_or("")
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            (what, paths)
        })
        .collect()
}

/// Every path the README's "Where to look" table names exists: a moved or renamed file fails
/// this test, so the table cannot drift from the tree.
#[test]
fn every_path_in_the_where_to_look_table_exists() {
    let rows = where_to_look();
    assert!(rows.len() >= 20, "the table has {} rows", rows.len());
    let mut missing = Vec::new();
    for (what, paths) in &rows {
        assert!(!paths.is_empty(), "the row {what:?} names no path");
        for p in paths {
            if !root().join(p).exists() {
                missing.push(format!("{what}: {p}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths in README.md's \"Where to look\" that do not exist: {missing:#?}"
    );
}

/// The table answers the questions people ask first (issue 19): each has a row.
#[test]
fn the_where_to_look_table_covers_the_usual_questions() {
    let rows = where_to_look();
    let topics = [
        "delete",
        "rotation due",
        "retries and backoff",
        "backoff of failed creates",
        "backoff of failed reconciles",
        "create",
        "recover",
        "adopt",
        "push",
        "rotate",
        "budgets",
        "limits",
        "alerts",
        "history",
        "leader election",
        "fairness",
        "egress",
        "metrics",
        "emulators",
        "CRD types",
        "provider clients",
        "testkit",
    ];
    let missing: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|t| !rows.iter().any(|(what, _)| what.contains(t)))
        .collect();
    assert!(missing.is_empty(), "no row for {missing:?}");
}
