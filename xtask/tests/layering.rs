//! The crate layering of ARCHITECTURE.md, checked on the workspace's real dependency graph
//! (`cargo metadata`) and sources, so a change that breaks it fails CI instead of a review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Which workspace crates each crate may depend on (normal and build dependencies), with why.
const ALLOWED: &[(&str, &[&str], &str)] = &[
    (
        "semhitok-quant",
        &[],
        "codebook math on the CPU: usable alone, no LibTorch",
    ),
    ("semhitok-data", &[], "datasets: usable alone, no LibTorch"),
    (
        "semhitok-sys",
        &[],
        "the low-level door into LibTorch APIs tch lacks (c10d)",
    ),
    (
        "semhitok-nn",
        &["semhitok-quant", "semhitok-data", "semhitok-sys"],
        "the model: below the trainer and the LLM side, which both load it",
    ),
    (
        "semhitok-mllm",
        &[
            "semhitok-quant",
            "semhitok-data",
            "semhitok-nn",
            "semhitok-sys",
        ],
        "LLMs on SemHiTok ids: never the trainer (users run it without training code)",
    ),
    (
        "semhitok-train",
        &[
            "semhitok-quant",
            "semhitok-data",
            "semhitok-nn",
            "semhitok-sys",
            "semhitok-mllm",
        ],
        "the top: the `semhitok` binary composes everything",
    ),
    (
        "xtask",
        &["semhitok-data"],
        "builds before LibTorch is installed",
    ),
];

/// Crates whose whole dependency tree must be free of LibTorch (tch, torch-sys).
const NO_TORCH: &[&str] = &["semhitok-quant", "semhitok-data", "xtask"];

/// The host's target triple (`rustc -vV`).
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host")
}

/// The workspace's dependency graph for the host platform. `--filter-platform`: offline, cargo
/// can only resolve packages it has downloaded, and a build downloads only the host's (a fresh
/// clone has no Windows-only crates such as anstyle-wincon), so the unfiltered graph fails there.
fn metadata() -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let host = host_triple();
    let out = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", host.as_str()])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn workspace_crates_depend_only_downward() {
    let m = metadata();
    let members: BTreeSet<String> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"].is_null())
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let allowed: BTreeMap<&str, (&[&str], &str)> =
        ALLOWED.iter().map(|(c, a, why)| (*c, (*a, *why))).collect();
    for p in m["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        if !members.contains(name) {
            continue;
        }
        let (ok, why) = allowed.get(name).unwrap_or_else(|| {
            panic!("new workspace crate `{name}`: add it to ALLOWED with its place")
        });
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            let dev = d["kind"].as_str() == Some("dev");
            if members.contains(dep) && !dev {
                assert!(
                    ok.contains(&dep),
                    "`{name}` depends on `{dep}`, which is not below it ({name}: {why})"
                );
            }
        }
    }
}

#[test]
fn crates_meant_to_build_without_libtorch_never_pull_it_in() {
    let m = metadata();
    let id_of: BTreeMap<String, String> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let nodes: BTreeMap<&str, Vec<&str>> = m["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].as_str() != Some("dev"))
                })
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), deps)
        })
        .collect();
    for krate in NO_TORCH {
        let start = id_of
            .iter()
            .find(|(_, n)| n.as_str() == *krate)
            .map(|(id, _)| id.as_str())
            .unwrap();
        let (mut seen, mut stack) = (BTreeSet::new(), vec![(start, vec![*krate])]);
        while let Some((id, path)) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            for d in nodes.get(id).into_iter().flatten() {
                let name = id_of[*d].as_str();
                let mut p = path.clone();
                p.push(name);
                assert!(
                    name != "tch" && name != "torch-sys",
                    "`{krate}` pulls in LibTorch: {}",
                    p.join(" -> ")
                );
                stack.push((d, p));
            }
        }
    }
}

/// Every library and binary source of the workspace crates (`crates/*/src/**/*.rs`; tests,
/// examples and benches are left out), as (path relative to `crates/`, text).
fn crate_sources() -> Vec<(std::path::PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut out = vec![];
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(&root).unwrap().to_path_buf();
            let parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if p.is_dir() {
                if parts.len() == 1 || parts.get(1).map(String::as_str) == Some("src") {
                    dirs.push(p);
                }
                continue;
            }
            let in_src = parts.get(1).map(String::as_str) == Some("src");
            if in_src && p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((rel, text));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn only_xtask_and_the_semhitok_binary_spawn_processes() {
    let allowed = Path::new("semhitok-train/src/bin/semhitok.rs");
    let offenders: Vec<String> = crate_sources()
        .into_iter()
        .filter(|(rel, text)| {
            rel != allowed && (text.contains("process::Command") || text.contains("Command::new("))
        })
        .map(|(rel, _)| rel.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "library code spawns processes (ARCHITECTURE.md: only xtask and the semhitok binary): {offenders:?}"
    );
}

/// Parameter roles live in tch's variable groups, and `Role::of_group` reads any group it does not
/// know as `Role::Plain`: that is only sound while nothing but `Role::on` sets a group.
#[test]
fn only_the_role_module_sets_variable_groups() {
    let allowed = Path::new("semhitok-nn/src/role.rs");
    let offenders: Vec<String> = crate_sources()
        .into_iter()
        .filter(|(rel, text)| rel != allowed && text.contains("set_group("))
        .map(|(rel, _)| rel.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "tch variable groups set outside semhitok-nn/src/role.rs (use `Role::on`): {offenders:?}"
    );
}
