//! Unit tests: fake registry and converter over a scratch folder.

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

/// A scratch asset store (root and `.assets` in one temporary folder, removed on drop) and the
/// fake item, as every test here starts.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: Store,
    item: Item,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let store = Store::open(&dir, &dir, false).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        store,
        item: item(),
    }
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
            // Any registry: the fake fetcher serves the file.
            source: Source::Apt,
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
    let Fixture {
        _tmp,
        dir: _,
        mut store,
        item: mut it,
    } = fixture();
    let f = fetcher(&[GOOD]);
    let s = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
    assert_eq!(s, Status::Built);
    let s = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
    assert_eq!(s, Status::Ok);
    assert_eq!(*f.calls.borrow(), 1, "a re-run must download nothing");
}

#[test]
fn corrupted_output_is_named_and_rebuilt() {
    let Fixture {
        _tmp,
        dir,
        mut store,
        item: mut it,
    } = fixture();
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
}

#[test]
fn same_size_same_mtime_corruption_needs_full() {
    let Fixture {
        _tmp,
        dir,
        mut store,
        item: mut it,
    } = fixture();
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
}

#[test]
fn bad_download_is_refetched_once() {
    let Fixture {
        _tmp,
        dir: _,
        mut store,
        item: mut it,
    } = fixture();
    let f = fetcher(&[b"package bytes XX", GOOD]);
    let s = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
    assert_eq!(s, Status::Built);
    assert_eq!(*f.calls.borrow(), 2);
}

#[test]
fn download_still_wrong_is_refused_by_name() {
    let Fixture {
        _tmp,
        dir,
        mut store,
        item: mut it,
    } = fixture();
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
}

#[test]
fn existing_corrupt_download_is_replaced() {
    let Fixture {
        _tmp,
        dir,
        mut store,
        item: mut it,
    } = fixture();
    fs::create_dir_all(dir.join("downloads")).unwrap();
    fs::write(dir.join("downloads/pkg_1.0_all.deb"), b"truncated").unwrap();
    let f = fetcher(&[GOOD]);
    let s = ensure_item(&mut store, &mut it, &f, &FakeBuilder, Mode::default()).unwrap();
    assert_eq!(s, Status::Built);
    assert_eq!(*f.calls.borrow(), 1);
}

#[test]
fn wrong_conversion_output_is_refused() {
    let Fixture {
        _tmp,
        dir,
        mut store,
        item: mut it,
    } = fixture();
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
