//! Commands.

use super::*;

/// One row of the summary table.
#[derive(Debug)]
pub(super) struct Row {
    item: String,
    files: usize,
    bytes: u64,
    status: Status,
}

pub(super) fn print_table(rows: &[Row], elapsed: Duration, hashed: u64) {
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

pub(super) fn run_all(root: &Path, args: &AssetsArgs, quiet_if_ok: bool) -> Result<()> {
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
