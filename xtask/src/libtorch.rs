//! `cargo xtask setup`: a project-local LibTorch from PyPI.
//!
//! tch 0.24 pins PyTorch 2.11.0. PyPI's torch==2.11.0 Linux wheel is the 2.11.0+cu130 build that
//! GPU hosts run, so binaries built against it run there unchanged. We install it with
//! `pip install --target .libtorch` (no system-wide change), plus the few Python packages the
//! project's reference scripts need (numpy, safetensors, Pillow), and write a stamp file so a
//! second run is a no-op.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The torch version tch 0.24 is built for.
pub const TORCH_VERSION: &str = "2.11.0";
/// Python packages installed beside torch for the reference scripts (fixtures, benchmarks).
pub const PY_TOOLS: &[&str] = &["numpy==2.2.6", "safetensors==0.5.3", "pillow==11.3.0"];
const STAMP: &str = ".semhitok-setup.json";

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Reinstall even if the stamp says everything is in place.
    #[arg(long)]
    pub force: bool,
}

/// Paths of the project-local LibTorch.
#[derive(Debug, Clone)]
pub struct Libtorch {
    /// `.libtorch/`: the pip `--target` folder (also a PYTHONPATH entry for the reference scripts).
    pub site: PathBuf,
    /// `.libtorch/torch`: what `LIBTORCH` points to (has include/ and lib/).
    pub torch: PathBuf,
}

impl Libtorch {
    pub fn at(root: &Path) -> Self {
        let site = root.join(".libtorch");
        let torch = site.join("torch");
        Self { site, torch }
    }
    pub fn lib_dir(&self) -> PathBuf {
        self.torch.join("lib")
    }
    /// A python3 command that sees the project-local torch (and numpy, safetensors, Pillow).
    pub fn python(&self) -> Command {
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", &self.site);
        cmd.env("PYTHONNOUSERSITE", "1");
        cmd
    }
}

fn stamp_contents() -> String {
    serde_json::json!({ "torch": TORCH_VERSION, "py_tools": PY_TOOLS }).to_string()
}

/// Install if needed; returns the paths. Fast path: a stamp file plus the version header.
pub fn ensure(root: &Path) -> Result<Libtorch> {
    setup(root, &SetupArgs { force: false })
}

/// LibTorch, then the headers the c10d shim of semhitok-sys needs ([`crate::c10d_headers`]).
pub fn setup(root: &Path, args: &SetupArgs) -> Result<Libtorch> {
    let lt = setup_torch(root, args)?;
    crate::c10d_headers::ensure(root, &lt, args.force)?;
    Ok(lt)
}

fn setup_torch(root: &Path, args: &SetupArgs) -> Result<Libtorch> {
    let lt = Libtorch::at(root);
    let stamp = lt.site.join(STAMP);
    if !args.force && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&stamp_contents()) {
        let v = header_version(&lt)?;
        if v == TORCH_VERSION && lt.lib_dir().join("libtorch_cuda.so").exists() {
            eprintln!("libtorch {v} already set up in {}", lt.torch.display());
            return Ok(lt);
        }
    }
    check_python()?;
    eprintln!(
        "installing torch=={TORCH_VERSION} into {} (about 4.6 GB, ~1-2 min)...",
        lt.site.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-cache-dir",
        ])
        .args(["--upgrade", "--target"])
        .arg(&lt.site)
        .arg(format!("torch=={TORCH_VERSION}"))
        .args(PY_TOOLS)
        .status()
        .context("could not run `python3 -m pip`")?;
    if !status.success() {
        bail!(
            "pip failed to install torch=={TORCH_VERSION} into {} ({status}).\n\
             Check that PyPI is reachable (pip config / PIP_INDEX_URL) and that there are ~5 GB free, \
             then run `cargo xtask setup --force`.",
            lt.site.display()
        );
    }
    let v = header_version(&lt)?;
    if v != TORCH_VERSION {
        bail!("installed LibTorch is {v}, tch 0.24 needs {TORCH_VERSION}: run `cargo xtask setup --force`");
    }
    if !lt.lib_dir().join("libtorch_cuda.so").exists() {
        bail!("{} has no libtorch_cuda.so: the PyPI wheel should ship it; reinstall with `cargo xtask setup --force`", lt.lib_dir().display());
    }
    std::fs::write(&stamp, stamp_contents())
        .with_context(|| format!("writing {}", stamp.display()))?;
    eprintln!("libtorch {v} ready in {}", lt.torch.display());
    Ok(lt)
}

fn check_python() -> Result<()> {
    let ok = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output();
    match ok {
        Ok(o) if o.status.success() => Ok(()),
        Ok(_) => bail!("python3 is present but pip is not: install pip (Debian: `apt-get install python3-pip`), then run `cargo xtask setup`"),
        Err(_) => bail!("python3 was not found on PATH: install Python 3.9+ with pip (Debian: `apt-get install python3 python3-pip`), then run `cargo xtask setup`"),
    }
}

/// The version from the wheel's `torch/version.py` (`__version__ = '2.11.0+cu130'`), read
/// without starting Python so the no-op path stays fast. Returns "2.11.0".
fn header_version(lt: &Libtorch) -> Result<String> {
    let f = lt.torch.join("version.py");
    let text = std::fs::read_to_string(&f).with_context(|| {
        format!(
            "{} not found: LibTorch is not installed; run `cargo xtask setup`",
            f.display()
        )
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| {
            v.trim_matches(|c| c == '\'' || c == '"')
                .split('+')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .with_context(|| format!("no __version__ in {}", f.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(version_py: Option<&str>) -> (tempfile::TempDir, Libtorch) {
        let d = tempfile::tempdir().unwrap();
        let lt = Libtorch::at(d.path());
        std::fs::create_dir_all(&lt.torch).unwrap();
        if let Some(v) = version_py {
            std::fs::write(lt.torch.join("version.py"), v).unwrap();
        }
        (d, lt)
    }

    #[test]
    fn reads_wheel_version() {
        let (_d, lt) = fake(Some(
            "from typing import Optional\n__version__ = '2.11.0+cu130'\ndebug = False\n",
        ));
        assert_eq!(header_version(&lt).unwrap(), "2.11.0");
        let (_d, lt) = fake(Some("__version__ = \"2.13.0\"\n"));
        assert_eq!(header_version(&lt).unwrap(), "2.13.0");
    }

    #[test]
    fn missing_or_broken_install_is_a_clear_error() {
        let (_d, lt) = fake(None);
        let e = header_version(&lt).unwrap_err().to_string();
        assert!(e.contains("cargo xtask setup"), "{e}");
        let (_d, lt) = fake(Some("nothing here\n"));
        assert!(header_version(&lt)
            .unwrap_err()
            .to_string()
            .contains("no __version__"));
    }

    #[test]
    fn stamp_names_the_pinned_version() {
        assert!(stamp_contents().contains(TORCH_VERSION));
    }
}
