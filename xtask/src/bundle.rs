//! `cargo xtask bundle --out DIR`: release binaries + a launcher for a GPU host that has PyTorch
//! 2.11 but no Rust toolchain.
//!
//! Layout of DIR: `bin/` (binaries and examples), `tests/` (test executables, named by target),
//! `run.sh` (finds `python3 -c 'import torch'`, checks 2.11, sets LD_LIBRARY_PATH, execs),
//! `manifest.json` (git revision, files). Binaries are stripped (a tch binary is ~60 MB with
//! symbols, <1 MB without). Every binary that links LibTorch is checked to also link
//! `libtorch_cuda.so`; one that does not would silently run on CPU, so that is an error.

use crate::util;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// Output folder (created; existing files replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Skip test executables.
    #[arg(long)]
    pub no_tests: bool,
}

const LAUNCHER: &str = r#"#!/usr/bin/env bash
# semhitok-rs bundle launcher: run a bundled binary against the host's PyTorch 2.11 LibTorch.
#   ./run.sh <binary> [args...]      e.g. ./run.sh semhitok-smoke
#   ./run.sh --list                  list the bundled binaries and tests
#   ./run.sh --tests [args...]       run every bundled test executable
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if ! tdir="$("$py" -c 'import torch,os;print(os.path.dirname(torch.__file__))' 2>/dev/null)"; then
  echo "run.sh: '$py -c \"import torch\"' failed: install torch==2.11.0 (pip install torch==2.11.0) or set PYTHON=/path/to/python3" >&2
  exit 2
fi
ver="$("$py" -c 'import torch;print(torch.__version__)')"
case "$ver" in
  2.11.0*) ;;
  *) echo "run.sh: found torch $ver in $tdir; these binaries were built against LibTorch 2.11.0 (tch 0.24)" >&2; exit 2 ;;
esac
export LD_LIBRARY_PATH="$tdir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
case "${1:-}" in
  ""|--list) echo "binaries:"; ls "$here/bin"; echo "tests:"; ls "$here/tests" 2>/dev/null || true; exit 0 ;;
  --tests)
    shift; rc=0
    for t in "$here"/tests/*; do echo "== $(basename "$t")"; "$t" "$@" || rc=1; done
    exit $rc ;;
esac
name="$1"; shift
for d in bin tests; do
  if [ -x "$here/$d/$name" ]; then exec "$here/$d/$name" "$@"; fi
done
echo "run.sh: no binary named '$name'; ./run.sh --list shows them" >&2
exit 2
"#;

/// One executable cargo produced: its target name, kind and path.
struct Artifact {
    name: String,
    kind: String,
    path: PathBuf,
}

fn build_artifacts(root: &Path, args: &[&str]) -> Result<Vec<Artifact>> {
    let mut cmd = util::cargo(root);
    cmd.args(args).args([
        "--release",
        "--workspace",
        "--exclude",
        "xtask",
        "--message-format=json-render-diagnostics",
    ]);
    cmd.stderr(Stdio::inherit());
    let out = util::output(&mut cmd)?;
    Ok(out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| artifact(&v))
        .collect())
}

/// The executable of one `cargo --message-format=json` line, if it names one. A test harness
/// built from a lib or a bin target is a `unittest`: it must not take the bin's place in `bin/`
/// (`cargo test --no-run` builds a harness named like the `semhitok` binary).
fn artifact(v: &serde_json::Value) -> Option<Artifact> {
    if v["reason"] != "compiler-artifact" {
        return None;
    }
    let exe = v["executable"].as_str()?;
    let name = v["target"]["name"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let kind = v["target"]["kind"][0].as_str().unwrap_or("bin").to_string();
    let is_test = v["profile"]["test"].as_bool().unwrap_or(false);
    let kind = if is_test && (kind == "lib" || kind == "bin") {
        "unittest".to_string()
    } else {
        kind
    };
    Some(Artifact {
        name,
        kind,
        path: PathBuf::from(exe),
    })
}

/// The DT_NEEDED entries of an ELF file (via `readelf -d`).
fn needed_libs(path: &Path) -> Result<Vec<String>> {
    let out = util::output(Command::new("readelf").arg("-d").arg(path))?;
    Ok(out
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            l.split('[')
                .nth(1)
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect())
}

pub fn bundle(root: &Path, args: &BundleArgs) -> Result<()> {
    crate::libtorch::ensure(root)?;
    let mut arts = build_artifacts(root, &["build", "--bins", "--examples"])?;
    if !args.no_tests {
        arts.extend(build_artifacts(root, &["test", "--no-run"])?);
    }
    let out = &args.out;
    for d in ["bin", "tests"] {
        std::fs::create_dir_all(out.join(d))
            .with_context(|| format!("creating {}", out.join(d).display()))?;
    }
    let mut files = vec![];
    for a in &arts {
        let (dir, name) = match a.kind.as_str() {
            "bin" | "example" => ("bin", a.name.clone()),
            "unittest" => ("tests", format!("{}-unit", a.name)),
            _ => ("tests", a.name.clone()),
        };
        let needed = needed_libs(&a.path)?;
        let torch = needed.iter().any(|l| l == "libtorch_cpu.so");
        let torch_cuda = needed.iter().any(|l| l == "libtorch_cuda.so");
        if torch && !torch_cuda {
            bail!(
                "{} links LibTorch but not libtorch_cuda.so: it would run on CPU on a GPU host. \
                 Its crate needs `build = \"../../build/link_torch_cuda.rs\"`.",
                a.path.display()
            );
        }
        let dest = out.join(dir).join(&name);
        let _ = std::fs::remove_file(&dest);
        util::run(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&dest)
                .arg(&a.path),
        )
        .or_else(|_| {
            std::fs::copy(&a.path, &dest)
                .map(|_| ())
                .context("copying binary")
        })?;
        files.push(serde_json::json!({"file": format!("{dir}/{name}"), "kind": a.kind, "links_libtorch": torch, "links_libtorch_cuda": torch_cuda}));
    }
    let launcher = out.join("run.sh");
    std::fs::write(&launcher, LAUNCHER)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755))?;
    }
    let git = util::output(
        Command::new("git")
            .current_dir(root)
            .args(["rev-parse", "HEAD"]),
    )
    .unwrap_or_default();
    // Test binaries find fixtures and assets through the path they were built at (their
    // `CARGO_MANIFEST_DIR`); the GPU host scripts link it to their checkout (scripts/gpu/build_root.sh).
    let build_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    std::fs::write(
        out.join("build_root"),
        format!("{}\n", build_root.display()),
    )?;
    let manifest = serde_json::json!({
        "git_revision": git.trim(), "libtorch": crate::libtorch::TORCH_VERSION, "files": files,
        "build_root": build_root.display().to_string(),
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    eprintln!(
        "bundle: {} executables in {} (run `{}/run.sh --list`)",
        files.len(),
        out.display(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::artifact;

    fn line(kind: &str, test: bool) -> serde_json::Value {
        serde_json::json!({
            "reason": "compiler-artifact",
            "target": {"name": "semhitok", "kind": [kind]},
            "profile": {"test": test},
            "executable": "/t/semhitok-0123",
        })
    }

    #[test]
    fn a_bin_targets_test_harness_is_not_the_binary() {
        assert_eq!(artifact(&line("bin", false)).unwrap().kind, "bin");
        assert_eq!(artifact(&line("bin", true)).unwrap().kind, "unittest");
        assert_eq!(artifact(&line("lib", true)).unwrap().kind, "unittest");
        assert_eq!(artifact(&line("test", true)).unwrap().kind, "test");
        let mut no_exe = line("lib", false);
        no_exe["executable"] = serde_json::Value::Null;
        assert!(artifact(&no_exe).is_none());
    }
}
