//! Text-to-image (issue 18): the Fashion-MNIST judge (classifier, accuracy, FID of generated
//! image files).

use super::common::serial;
use semhitok_data::Split;
use semhitok_nn::fid::{FidInception, FID_INCEPTION_ASSET};
use semhitok_train::t2i::classifier::{self, ClassifierArgs, FmnistClassifier};
use semhitok_train::t2i::judge::{self, ScoreArgs};
use semhitok_train::t2i::real::{write_real, RealArgs, RealSplit};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.assets")
}

/// A short training run learns (far above chance on held-out images), writes weights + JSON
/// atomically, and the judge scores an images file with the recorded convention: the test
/// images labelled with their true classes score exactly the classifier's test accuracy.
#[test]
fn classifier_trains_and_judge_scores_an_images_file() {
    // LibTorch's generator is process-global: training tests re-seed it every step.
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clf.safetensors");
    let a = ClassifierArgs {
        data: assets().join("fashion-mnist"),
        out: out.clone(),
        size: 32,
        epochs: 1,
        batch: 64,
        seed: 3,
        device: "cpu".into(),
        limit: 1000,
        test_limit: 300,
    };
    let meta = classifier::train(&a).unwrap();
    assert!(meta.test_accuracy > 0.5, "{meta:?}");
    assert!(out.exists() && out.with_extension("json").exists());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");

    // The test split as a generated-images file (grey -> RGB u8 [N, 3, 32, 32]).
    let (x, y) = classifier::load_split(&a.data, Split::Test, 32, 300).unwrap();
    let rgb = x.expand([300, 3, 32, 32], false).contiguous();
    let file = dir.path().join("gen.safetensors");
    judge::write_images(&file, &rgb, &y).unwrap();
    let (r, l) = judge::read_images(&file).unwrap();
    assert!(r.equal(&rgb) && l.equal(&y));
    let s = judge::score(&ScoreArgs {
        images: vec![file.clone()],
        classifier: out.clone(),
        fid_inception: PathBuf::new(),
        data: a.data.clone(),
        real_stats: None,
        no_fid: true,
        fid_limit: 0,
        device: "cpu".into(),
        out: None,
    })
    .unwrap();
    assert!(
        (s[0].accuracy - meta.test_accuracy).abs() < 1e-12,
        "{s:?} vs {meta:?}"
    );
    assert_eq!(s[0].accuracy_per_class.len(), 10);
    // Another size is resized to the classifier's (28 px: bilinear, antialiased).
    let c = FmnistClassifier::load(&out, Device::Cpu).unwrap();
    let small = rgb
        .to_kind(Kind::Float)
        .upsample_bilinear2d([28, 28], false, None, None)
        .to_kind(Kind::Uint8);
    assert_eq!(c.predict(&small).unwrap().size(), [300]);
    // Bad files name the tensor.
    let bad = dir.path().join("bad.safetensors");
    Tensor::write_safetensors(&[("images", &rgb)], &bad).unwrap();
    let e = judge::read_images(&bad).unwrap_err().to_string();
    assert!(e.contains("labels"), "{e}");
    let e = FmnistClassifier::load(&dir.path().join("none.safetensors"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fmnist-classifier"), "{e}");
}

/// `t2i-real` writes the split's first N images exactly as the judge's test side sees them
/// (so its FID against the test statistics is the real-vs-real reference), and refuses an N the
/// split does not have, naming the folder.
#[test]
fn real_images_file_is_the_judges_view_of_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let data = assets().join("fashion-mnist");
    let mut a = RealArgs {
        data: data.clone(),
        split: RealSplit::Test,
        n: 40,
        size: 32,
        out: dir.path().join("real.safetensors"),
    };
    assert_eq!(write_real(&a).unwrap(), 40);
    let (img, lab) = judge::read_images(&a.out).unwrap();
    let (x, y) = classifier::load_split(&data, Split::Test, 32, 40).unwrap();
    assert!(img.equal(&x.expand([40, 3, 32, 32], false)) && lab.equal(&y));
    a.split = RealSplit::Train;
    write_real(&a).unwrap();
    let (train, _) = judge::read_images(&a.out).unwrap();
    assert!(
        !train.equal(&img),
        "train and test splits are different images"
    );
    a.n = 70_000;
    let e = write_real(&a).unwrap_err().to_string();
    assert!(
        e.contains("fewer than --n 70000") && e.contains("fashion-mnist"),
        "{e}"
    );
}

/// FID statistics of u8 image sets: a set against itself is ~0, against a shifted set > 0.
#[test]
fn fid_of_u8_image_sets() {
    // LibTorch's generator is process-global: training tests re-seed it every step.
    let _g = serial();
    let fid = FidInception::load(&assets().join(FID_INCEPTION_ASSET), Device::Cpu).unwrap();
    let (x, _) =
        classifier::load_split(&assets().join("fashion-mnist"), Split::Test, 32, 8).unwrap();
    let a = judge::fid_stats(&fid, &x, Device::Cpu).unwrap();
    let again = judge::fid_stats(&fid, &x.expand([8, 3, 32, 32], false), Device::Cpu).unwrap();
    let d0 = a.frechet_distance(&again).unwrap();
    assert!(d0.abs() < 1e-3, "same images: {d0}");
    let dark = (x.to_kind(Kind::Float) * 0.5).to_kind(Kind::Uint8);
    let b = judge::fid_stats(&fid, &dark, Device::Cpu).unwrap();
    let d = a.frechet_distance(&b).unwrap();
    assert!(d > 1.0, "darkened images: {d}");
}
