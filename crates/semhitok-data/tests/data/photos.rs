//! PhotoCrops: split, shapes, determinism, resume.

use semhitok_data::{Heldout, LoaderConfig, PhotoCrops, PhotoCropsConfig, PixelFormat};

use super::common::{photo_dir, write};

fn cfg() -> PhotoCropsConfig {
    PhotoCropsConfig {
        crops_per_epoch: 37,
        heldout: Heldout::Count(2),
        max_short_side: 96,
        eval_crops_per_image: 3,
        ..PhotoCropsConfig::demo(32)
    }
}

#[test]
fn split_is_fixed_and_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    photo_dir(dir.path(), 7);
    write(&dir.path().join("notes.txt"), b"ignored");
    write(&dir.path().join("broken.jpg"), b"not a jpeg");
    let a = PhotoCrops::open(dir.path(), cfg()).unwrap();
    let b = PhotoCrops::open(
        dir.path(),
        PhotoCropsConfig {
            crops_per_epoch: 5,
            ..cfg()
        },
    )
    .unwrap();
    assert_eq!(a.heldout_names(), b.heldout_names());
    assert_eq!(a.heldout_names().len(), 2);
    assert_eq!(a.train_names().len(), 5);
    for h in a.heldout_names() {
        assert!(!a.train_names().contains(&h));
    }
    assert_eq!(a.open_report().skipped, 1);
    assert_eq!(a.open_report().reasons.get("not_an_image"), Some(&1));
}

#[test]
fn train_batches_shape_range_determinism_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    photo_dir(dir.path(), 6);
    let photos = PhotoCrops::open(dir.path(), cfg()).unwrap();
    let lc = LoaderConfig {
        workers: 3,
        ..LoaderConfig::train(8, 5)
    };
    let run = |n: usize| -> Vec<Vec<f32>> {
        let mut l = photos.train(lc.clone()).unwrap();
        (0..n)
            .map(|_| l.next().unwrap().as_f32().unwrap().to_vec())
            .collect()
    };
    let a = run(10);
    let b = run(10);
    assert_eq!(a, b, "same seed must give the same batches");
    for x in &a {
        assert_eq!(x.len(), 8 * 3 * 32 * 32);
        assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
    assert_ne!(a[0], a[5], "epochs differ (drop_last: 4 batches per epoch)");

    // Resume from the middle of epoch 1.
    let mut l = photos.train(lc.clone()).unwrap();
    for _ in 0..6 {
        l.next().unwrap();
    }
    let st = l.state();
    assert_eq!(st.ranks[&0].epoch, 1);
    let json = serde_json::to_string(&st).unwrap();
    let mut r = photos
        .train(LoaderConfig {
            workers: 0,
            ..lc.clone()
        })
        .unwrap();
    r.restore(&serde_json::from_str(&json).unwrap()).unwrap();
    for i in 6..10 {
        assert_eq!(
            r.next().unwrap().as_f32().unwrap(),
            &a[i][..],
            "batch {i} after resume"
        );
    }
    // A state from another seed is refused.
    let mut other = photos.train(LoaderConfig::train(8, 6)).unwrap();
    assert!(other.restore(&st).is_err());
}

#[test]
fn eval_is_fixed_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    photo_dir(dir.path(), 6);
    let photos = PhotoCrops::open(dir.path(), cfg()).unwrap();
    let get = |seed| {
        let lc = LoaderConfig {
            seed,
            format: PixelFormat::U8,
            ..LoaderConfig::eval(4)
        };
        photos.eval(lc).unwrap().collect::<Vec<_>>()
    };
    let a = get(0);
    let b = get(99);
    assert_eq!(a.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![4, 2]);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.as_u8().unwrap(), y.as_u8().unwrap());
        assert_eq!(x.keys, y.keys);
    }
    let keys: Vec<String> = a.iter().flat_map(|b| b.keys.clone()).collect();
    let held = photos.heldout_names();
    assert_eq!(keys[0], format!("{}#0", held[0]));
    assert_eq!(keys.len(), 6);
}

#[test]
fn missing_folder_is_a_clear_error() {
    let err = PhotoCrops::open("/nonexistent/.assets/photos", cfg()).unwrap_err();
    assert!(err.to_string().contains("cargo xtask assets"), "{err}");
}
