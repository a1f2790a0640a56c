//! Self-test on a real item, in a scratch folder.

use super::*;

/// Wraps a fetcher and corrupts every file it fetches (to show that a wrong download is refused).
pub(super) struct Corrupting<'a>(&'a dyn Fetcher);

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

pub(super) fn self_test(root: &Path) -> Result<()> {
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
