//! Fetching and building (traits so the unit tests can fake the registries).

use super::*;

/// Downloads one package file into a folder (named `pkg.file`).
pub trait Fetcher {
    fn fetch(&self, pkg: &Package, dest: &Path) -> Result<()>;
}

/// Turns downloaded package files into the item's outputs under `staging`.
pub trait Builder {
    /// One-time setup before the first build (may print; no progress bar is active).
    fn prepare(&self, _store: &Store) -> Result<()> {
        Ok(())
    }
    /// Build into `staging`; returns log lines to show once the progress line is done.
    fn build(
        &self,
        store: &Store,
        item: &Item,
        pkgs: &[(Package, PathBuf)],
        staging: &Path,
    ) -> Result<String>;
}

/// The real registries, through their ordinary clients.
#[derive(Debug, Default)]
pub struct RegistryFetcher {
    apt_updated: Cell<bool>,
}

impl Fetcher for RegistryFetcher {
    fn fetch(&self, pkg: &Package, dest: &Path) -> Result<()> {
        fs::create_dir_all(dest)?;
        match pkg.source {
            Source::Apt => {
                let run = || {
                    Command::new("apt-get")
                        .args(["download", "-q"])
                        .arg(pkg.spec())
                        .current_dir(dest)
                        .output()
                };
                let mut out = run().context(
                    "could not run `apt-get`: the Debian packages need apt (Debian/Ubuntu host)",
                )?;
                if !out.status.success() && !self.apt_updated.get() {
                    // A fresh machine/container has no package lists yet.
                    eprintln!(
                        "  apt-get download {} failed; running `apt-get update` once",
                        pkg.spec()
                    );
                    self.apt_updated.set(true);
                    let up = Command::new("apt-get")
                        .args(["update", "-qq"])
                        .output()
                        .context("running apt-get update")?;
                    if !up.status.success() {
                        bail!(
                            "`apt-get update` failed (needs root: run `sudo apt-get update`, then retry):\n{}",
                            String::from_utf8_lossy(&up.stderr)
                        );
                    }
                    out = run()?;
                }
                if !out.status.success() {
                    bail!(
                        "`apt-get download {}` failed: is this Debian 12 (bookworm) with deb.debian.org reachable?\n{}",
                        pkg.spec(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            Source::Pypi => {
                let out = Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "download",
                        "--no-deps",
                        "--no-cache-dir",
                        "--disable-pip-version-check",
                        "--quiet",
                        "-d",
                    ])
                    .arg(dest)
                    .args(&pkg.pip_args)
                    .arg(pkg.spec())
                    .output()
                    .context("could not run `python3 -m pip`: install python3 and pip")?;
                if !out.status.success() {
                    bail!(
                        "`pip download --no-deps {}` failed: is PyPI reachable?\n{}",
                        pkg.spec(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            Source::Npm => {
                let out = Command::new("npm")
                    .args(["pack", "--silent"])
                    .arg(pkg.spec())
                    .current_dir(dest)
                    .output()
                    .context(
                        "could not run `npm`: install Node.js/npm (Debian: apt-get install npm)",
                    )?;
                if !out.status.success() {
                    bail!(
                        "`npm pack {}` failed: is the npm registry reachable?\n{}",
                        pkg.spec(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        if !dest.join(&pkg.file).is_file() {
            bail!(
                "fetching {} did not produce {} in {} (a different file name? update {MANIFEST})",
                pkg.spec(),
                pkg.file,
                dest.display()
            );
        }
        Ok(())
    }
}

/// Unpacks each package and runs the item's script with the project-local Python.
#[derive(Debug, Default)]
pub struct PythonBuilder {
    python: OnceCell<libtorch::Libtorch>,
}

impl Builder for PythonBuilder {
    fn prepare(&self, store: &Store) -> Result<()> {
        if self.python.get().is_none() {
            let lt = libtorch::ensure(&store.root)
                .context("the conversion scripts run with the project-local Python")?;
            let _ = self.python.set(lt);
        }
        Ok(())
    }

    fn build(
        &self,
        store: &Store,
        item: &Item,
        pkgs: &[(Package, PathBuf)],
        staging: &Path,
    ) -> Result<String> {
        self.prepare(store)?;
        let lt = self.python.get().context("python not prepared")?;
        let unpacked = staging.with_extension("unpacked");
        let _ = fs::remove_dir_all(&unpacked);
        let mut cmd = lt.python();
        cmd.arg(store.root.join(&item.script))
            .arg("--out")
            .arg(staging);
        for (pkg, file) in pkgs {
            let dir = unpacked.join(&pkg.name);
            unpack(file, &dir)?;
            cmd.arg("--pkg").arg(&pkg.name).arg(&pkg.version).arg(&dir);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", item.script))?;
        let _ = fs::remove_dir_all(&unpacked);
        if !out.status.success() {
            bail!(
                "{} failed for item {}:\n{}{}",
                item.script,
                item.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Unpack a `.deb` (dpkg-deb -x), a wheel/zip (Python's zipfile) or a `.tgz` (tar) into `dir`.
pub fn unpack(file: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let name = file.to_string_lossy();
    let mut cmd = if name.ends_with(".deb") {
        let mut c = Command::new("dpkg-deb");
        c.arg("-x").arg(file).arg(dir);
        c
    } else if name.ends_with(".whl") || name.ends_with(".zip") {
        let mut c = Command::new("python3");
        c.args(["-m", "zipfile", "-e"]).arg(file).arg(dir);
        c
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        let mut c = Command::new("tar");
        c.arg("-xzf").arg(file).arg("-C").arg(dir);
        c
    } else {
        bail!("do not know how to unpack {}", file.display());
    };
    let out = cmd
        .output()
        .with_context(|| format!("unpacking {} ({cmd:?})", file.display()))?;
    if !out.status.success() {
        bail!(
            "unpacking {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
