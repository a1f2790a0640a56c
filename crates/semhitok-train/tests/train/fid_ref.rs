//! rFID reference statistics: `.npz` files in numpy's format (written here byte by byte, stored
//! and deflated, C and Fortran order, f4 / f8, both endians) read back; errors name the file and
//! the key; the cache key follows the files; cached statistics are bit-identical to computed ones.

use semhitok_train::fid_ref::{reference_stats, FidCache, RefIdentity, RefStats};
use semhitok_train::npz::{read_npz, NpyArray};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A `.npy` file as numpy 1.x/2.x writes it: magic, version 1.0, header dict padded with
/// spaces to a multiple of 64 bytes and ended by a newline, then the raw data.
fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

fn zip_file(path: &Path, members: &[(&str, Vec<u8>)], deflate: bool) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::FileOptions::default().compression_method(method);
    for (name, bytes) in members {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn f4le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f8be(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

#[test]
fn npz_arrays_read_in_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for deflate in [false, true] {
        let p = tmp.path().join(format!("a{deflate}.npz"));
        // [[1, 2, 3], [4, 5, 6]] stored column-major: 1 4 2 5 3 6.
        let fortran = npy("<f4", true, "(2, 3)", &f4le(&[1., 4., 2., 5., 3., 6.]));
        let be = npy(">f8", false, "(4,)", &f8be(&[0.5, -1.25, 1e300, 3.0]));
        let scalar = npy("<f4", false, "()", &f4le(&[7.5]));
        zip_file(
            &p,
            &[("f.npy", fortran), ("b.npy", be), ("s.npy", scalar)],
            deflate,
        );
        let a = read_npz(&p, &["f", "b", "s"]).unwrap();
        assert_eq!(
            a[0],
            NpyArray {
                shape: vec![2, 3],
                data: vec![1., 2., 3., 4., 5., 6.]
            }
        );
        assert_eq!(a[1].data, vec![0.5, -1.25, 1e300, 3.0]);
        assert_eq!((a[2].shape.clone(), a[2].data.clone()), (vec![], vec![7.5]));
    }
}

/// Files numpy wrote (`scripts/fixtures/npz.py`: `np.savez`, `np.savez_compressed`).
#[test]
fn npz_files_written_by_numpy_read_back() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/npz");
    for f in ["savez.npz", "savez_compressed.npz"] {
        let a = read_npz(&dir.join(f), &["mu", "sigma", "big", "s"]).unwrap();
        assert_eq!(a[0].shape, vec![4]);
        assert_eq!(a[0].data, vec![0.0, 1.0, 2.0, 3.0], "{f}");
        assert_eq!(a[1].shape, vec![4, 4]);
        let sigma: Vec<f64> = (0..16).map(|i| i as f64 / 8.0).collect();
        assert_eq!(a[1].data, sigma, "{f}: Fortran order read as C order");
        assert_eq!(a[2].data, vec![0.5, -2.0, 3e200], "{f}");
        assert_eq!(
            (a[3].shape.clone(), a[3].data.clone()),
            (vec![], vec![7.25])
        );
        let m = msg(read_npz(&dir.join(f), &["mu", "nope"]));
        assert!(
            m.contains(f) && m.contains("`nope`") && m.contains("sigma"),
            "{m}"
        );
        // 4-d statistics are not the FID network's 2048-d.
        let m = msg(RefStats::read_npz(&dir.join(f)));
        assert!(
            m.contains("`mu`") && m.contains("[4]") && m.contains("[2048]"),
            "{m}"
        );
    }
    let m = msg(read_npz(&dir.join("ints.npz"), &["mu"]));
    assert!(
        m.contains("ints.npz") && m.contains("`mu`") && m.contains("<i8"),
        "{m}"
    );
}

fn msg<T: std::fmt::Debug>(r: semhitok_train::Result<T>) -> String {
    r.expect_err("must fail").to_string()
}

#[test]
fn npz_errors_name_the_file_and_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = 2048usize;
    let mu = npy("<f4", false, "(2048,)", &f4le(&vec![0.0; d]));
    // sigma missing
    let p = tmp.path().join("nosigma.npz");
    zip_file(&p, &[("mu.npy", mu.clone())], false);
    let m = msg(RefStats::read_npz(&p));
    assert!(
        m.contains("nosigma.npz") && m.contains("`sigma`") && m.contains("mu"),
        "{m}"
    );
    // wrong shape
    let p = tmp.path().join("shape.npz");
    let short = npy("<f4", false, "(10,)", &f4le(&[0.0; 10]));
    let sigma = npy("<f4", false, "(2048, 2048)", &f4le(&vec![0.0; d * d]));
    zip_file(
        &p,
        &[("mu.npy", short), ("sigma.npy", sigma.clone())],
        false,
    );
    let m = msg(RefStats::read_npz(&p));
    assert!(
        m.contains("shape.npz") && m.contains("`mu`") && m.contains("[2048]"),
        "{m}"
    );
    // integer dtype
    let p = tmp.path().join("int.npz");
    let ints = npy("<i8", false, "(2048,)", &vec![0u8; d * 8]);
    zip_file(&p, &[("mu.npy", ints), ("sigma.npy", sigma.clone())], false);
    let m = msg(RefStats::read_npz(&p));
    assert!(
        m.contains("int.npz") && m.contains("`mu`") && m.contains("<i8"),
        "{m}"
    );
    // data cut short
    let p = tmp.path().join("cut.npz");
    let mut cut = mu.clone();
    cut.truncate(cut.len() - 4);
    zip_file(&p, &[("mu.npy", cut), ("sigma.npy", sigma.clone())], false);
    let m = msg(RefStats::read_npz(&p));
    assert!(
        m.contains("cut.npz") && m.contains("`mu`") && m.contains("data bytes"),
        "{m}"
    );
    // non-finite
    let p = tmp.path().join("nan.npz");
    let mut v = vec![0.0f32; d];
    v[5] = f32::NAN;
    let nan = npy("<f4", false, "(2048,)", &f4le(&v));
    zip_file(&p, &[("mu.npy", nan), ("sigma.npy", sigma)], false);
    let m = msg(RefStats::read_npz(&p));
    assert!(
        m.contains("nan.npz") && m.contains("`mu`") && m.contains("index 5"),
        "{m}"
    );
    // not a zip; missing file
    let p = tmp.path().join("plain.npz");
    std::fs::write(&p, b"not a zip").unwrap();
    assert!(msg(RefStats::read_npz(&p)).contains("plain.npz"));
    assert!(msg(RefStats::read_npz(&tmp.path().join("absent.npz"))).contains("absent.npz"));
}

fn random_stats(seed: i64) -> RefStats {
    tch::manual_seed(seed);
    let x = Tensor::randn([40, 2048], (Kind::Double, Device::Cpu));
    let mu = x.mean_dim(0, false, Kind::Double);
    let c = &x - &mu;
    RefStats {
        sigma: c.tr().matmul(&c) / 39.0,
        mu,
        n: Some(40),
        source: "test".into(),
    }
}

#[test]
fn npz_written_reads_back_bit_exactly_in_numpy_layout() {
    let _g = super::common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = random_stats(3);
    let p = tmp.path().join("stats.npz");
    s.write_npz(&p).unwrap();
    let r = RefStats::read_npz(&p).unwrap();
    assert!(r.mu.equal(&s.mu) && r.sigma.equal(&s.sigma));
    // Members as numpy.savez names them, headers aligned to 64 bytes as numpy writes them.
    let mut z = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
    let mut names: Vec<String> = z.file_names().map(str::to_string).collect();
    names.sort();
    assert_eq!(names, vec!["mu.npy", "sigma.npy"]);
    let mut b = vec![];
    std::io::Read::read_to_end(&mut z.by_name("mu.npy").unwrap(), &mut b).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0);
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (2048,), }"));
    assert!(header.ends_with('\n'));
}

fn touch(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

#[test]
fn cache_key_follows_the_files_and_entries_round_trip() {
    let _g = super::common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    touch(&root.join("a/1.png"), b"one");
    touch(&root.join("b/2.png"), b"two");
    let what = serde_json::json!({"set": "x", "n_images": 2});
    let inputs = vec![root.clone()];
    let k1 = FidCache::key(&what, &inputs).unwrap();
    assert_eq!(k1, FidCache::key(&what, &inputs).unwrap());
    assert_ne!(
        k1,
        FidCache::key(&serde_json::json!({"set": "x", "n_images": 3}), &inputs).unwrap()
    );
    touch(&root.join("b/2.png"), b"two!");
    let k2 = FidCache::key(&what, &inputs).unwrap();
    assert_ne!(k1, k2, "a changed file must change the key");
    touch(&root.join("c.png"), b"new");
    assert_ne!(k2, FidCache::key(&what, &inputs).unwrap(), "an added file");
    let missing = vec![root.join("nothing")];
    assert!(msg(FidCache::key(&what, &missing)).contains("nothing"));

    let cache = FidCache::at(Some(&tmp.path().join("cache")));
    assert!(cache.load("k").is_none());
    let s = random_stats(5);
    let p = cache.store("k", &s, &what).unwrap();
    assert_eq!(p, cache.path_of("k"));
    let back = cache.load("k").unwrap();
    assert!(back.mu.equal(&s.mu) && back.sigma.equal(&s.sigma));
    assert_eq!(back.n, Some(40));
    // A damaged entry is a miss (recomputed and replaced), not an error.
    std::fs::write(&p, b"damaged").unwrap();
    assert!(cache.load("k").is_none());
    // The default folder is the user's cache, never a dataset folder.
    assert!(FidCache::default_dir().ends_with("semhitok/fid"));
}

fn fid_weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.assets/weights/fid_inception_v3.pt")
}

#[test]
fn cached_reference_statistics_equal_computed_ones() {
    let _g = super::common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let fid = semhitok_nn::fid::FidInception::load(&fid_weights(), Device::Cpu).unwrap();
    let images = semhitok_train::synthetic::SyntheticBatches::new(4, 3, 32)
        .next_images(Device::Cpu)
        .unwrap();
    let root = tmp.path().join("set");
    touch(&root.join("x.png"), b"stand-in for the set's files");
    let id = RefIdentity {
        what: serde_json::json!({"set": "synthetic", "n_images": 3}),
        inputs: vec![root, fid_weights()],
    };
    let cache = FidCache::at(Some(&tmp.path().join("cache")));
    let (a, hit_a) = reference_stats(&fid, &images, 2, Some((&cache, &id))).unwrap();
    let (b, hit_b) = reference_stats(&fid, &images, 3, Some((&cache, &id))).unwrap();
    let (c, hit_c) = reference_stats(&fid, &images, 2, None).unwrap();
    assert_eq!((hit_a, hit_b, hit_c), (false, true, false));
    assert!(b.source.starts_with("cache "), "{}", b.source);
    assert!(a.mu.equal(&b.mu) && a.sigma.equal(&b.sigma));
    assert!(a.mu.equal(&c.mu) && a.sigma.equal(&c.sigma));
    assert_eq!((a.n, b.n), (Some(3), Some(3)));
}
