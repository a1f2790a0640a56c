//! The core: ensure one item.

use super::*;

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
pub(super) fn install_staged(
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
pub(super) fn list_files(dir: &Path) -> Result<Vec<String>> {
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
