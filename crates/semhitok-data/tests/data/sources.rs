//! ImageFolder, Fashion-MNIST, webdataset and LLaVA sources, and `scan`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use semhitok_data::*;

use super::common::*;

fn image_folder(root: &Path) {
    for (c, class) in ["n01", "n02", "n03"].iter().enumerate() {
        for i in 0..5 {
            let img = pattern(40 + 3 * i, 30 + 5 * c as u32, i + 10 * c as u32);
            write(
                &root.join(class).join(format!("img_{i}.JPEG")),
                &jpeg_bytes(&img, 90),
            );
        }
    }
    write(&root.join("n02/bad.jpg"), b"");
    write(&root.join("n03/notes.txt"), b"not listed");
    write(
        &root.join("labels.txt"),
        b"n01 tench, Tinca tinca\nn02 goldfish\nn03 shark\n",
    );
}

#[test]
fn image_folder_labels_captions_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path());
    let cfg = ImageFolderConfig {
        labels_file: Some(dir.path().join("labels.txt")),
        ..ImageFolderConfig::eval(16)
    };
    let ds = ImageFolder::open(dir.path(), cfg).unwrap();
    assert_eq!(ds.classes(), ["n01", "n02", "n03"]);
    assert_eq!(ds.class_names(), ["tench", "goldfish", "shark"]);
    assert_eq!(ds.files().len(), 16);
    let mut l = ds
        .loader(LoaderConfig {
            workers: 2,
            ..LoaderConfig::eval(4)
        })
        .unwrap();
    let batches: Vec<Batch> = l.by_ref().collect();
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        vec![4, 4, 4, 3]
    );
    assert_eq!(batches[0].shape, [4, 3, 16, 16]);
    let all: Vec<(String, Option<i64>, Option<String>)> = batches
        .iter()
        .flat_map(|b| {
            b.keys
                .iter()
                .cloned()
                .zip(b.labels.iter().cloned())
                .zip(b.captions.iter().cloned())
        })
        .map(|((k, l), c)| (k, l, c))
        .collect();
    assert_eq!(all.len(), 15);
    assert_eq!(
        all[0],
        (
            "n01/img_0.JPEG".into(),
            Some(0),
            Some("a photo of a tench".into())
        )
    );
    assert!(all
        .iter()
        .any(|(k, l, _)| k == "n03/img_4.JPEG" && *l == Some(2)));
    assert_eq!(l.skip_stats().skipped, 1);
    assert_eq!(l.skip_stats().examples[0].0, "n02/bad.jpg");
}

fn write_idx(dir: &Path, prefix: &str, n: usize, bad_label: bool) {
    let mut img = vec![0, 0, 8, 3];
    img.extend_from_slice(&(n as u32).to_be_bytes());
    img.extend_from_slice(&28u32.to_be_bytes());
    img.extend_from_slice(&28u32.to_be_bytes());
    img.extend((0..n * 784).map(|i| (i % 251) as u8));
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    lab.extend((0..n).map(|i| {
        if bad_label && i == 1 {
            10
        } else {
            (i % 10) as u8
        }
    }));
    for (name, bytes) in [
        (format!("{prefix}-images-idx3-ubyte.gz"), img),
        (format!("{prefix}-labels-idx1-ubyte.gz"), lab),
    ] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        write(&dir.join(name), &gz.finish().unwrap());
    }
}

/// The names as Zalando spells them (zalandoresearch/fashion-mnist), index = label; captions
/// lower-case them.
#[test]
fn fashion_mnist_class_names_and_captions() {
    assert_eq!(
        semhitok_data::FASHION_MNIST_CLASSES,
        [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot"
        ]
    );
    assert_eq!(semhitok_data::fashion_mnist_class(9), Some("Ankle boot"));
    assert_eq!(semhitok_data::fashion_mnist_class(10), None);
    assert_eq!(semhitok_data::fashion_mnist_class(-1), None);
    assert_eq!(
        semhitok_data::fashion_mnist_caption(0).as_deref(),
        Some("a photo of a t-shirt/top")
    );
}

#[test]
fn fashion_mnist_pairs_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "t10k", 12, false);
    let ds = FashionMnist::open(dir.path(), Split::Test, Transform::center_crop(32)).unwrap();
    assert_eq!(ds.raw(1)[0], (784 % 251) as u8);
    let b: Vec<Batch> = ds
        .loader(LoaderConfig {
            format: PixelFormat::U8,
            ..LoaderConfig::eval(5)
        })
        .unwrap()
        .collect();
    assert_eq!(b.iter().map(|b| b.len()).sum::<usize>(), 12);
    assert_eq!(b[0].shape, [5, 3, 32, 32]);
    assert_eq!(b[0].captions[9 % 5], None.or(b[0].captions[4].clone()));
    assert_eq!(b[1].captions[4], Some("a photo of a ankle boot".into()));
    assert_eq!(b[1].labels[4], Some(9));
    // Bad label, missing split: clear errors naming the file.
    write_idx(dir.path(), "train", 3, true);
    let e = FashionMnist::open(dir.path(), Split::Train, Transform::center_crop(28)).unwrap_err();
    assert!(
        e.to_string().contains("train-labels-idx1-ubyte.gz") && e.to_string().contains("label 10"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    let e = FashionMnist::open(empty.path(), Split::Train, Transform::center_crop(28)).unwrap_err();
    assert!(e.to_string().contains("train-images-idx3-ubyte.gz"), "{e}");
}

/// Writes `n_shards` shards with `per` samples each; sample `s{shard}_{i}`; every 7th sample has
/// no caption, every 11th an undecodable image.
fn wds_shards(dir: &Path, n_shards: usize, per: usize) -> BTreeSet<String> {
    let mut good = BTreeSet::new();
    for s in 0..n_shards {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..per {
            let key = format!("s{s}_{i:03}");
            let g = s * per + i;
            let img = if g % 11 == 5 {
                b"garbage".to_vec()
            } else {
                jpeg_bytes(&pattern(24, 20, g as u32), 85)
            };
            let mut members = vec![
                (format!("{key}.jpg"), img),
                (format!("{key}.json"), b"{}".to_vec()),
            ];
            if g % 7 != 3 {
                members.push((format!("{key}.txt"), format!("caption {key}").into_bytes()));
            }
            if g % 11 != 5 && g % 7 != 3 {
                good.insert(key.clone());
            }
            for (name, bytes) in members {
                let mut h = tar::Header::new_gnu();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, &name, bytes.as_slice()).unwrap();
            }
        }
        write(
            &dir.join(format!("shard-{s:05}.tar")),
            &b.into_inner().unwrap(),
        );
    }
    good
}

fn wds_keys(dir: &Path, lc: LoaderConfig) -> (Vec<Vec<String>>, WdsLoader) {
    let shards = wds::list_shards(dir).unwrap();
    let cfg = WdsConfig {
        shuffle_buffer: 8,
        ..WdsConfig::train(16)
    };
    let mut l = WdsLoader::new(shards, cfg, lc).unwrap();
    let keys = l.by_ref().map(|b| b.keys).collect();
    (keys, l)
}

#[test]
fn wds_ranks_and_workers_partition_an_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let good = wds_shards(dir.path(), 6, 13);
    let mut seen = Vec::new();
    let mut skipped = 0;
    for rank in 0..2 {
        let lc = LoaderConfig {
            rank,
            world: 2,
            workers: 2,
            epochs: Some(1),
            drop_last: false,
            ..LoaderConfig::train(5, 9)
        };
        let (k, l) = wds_keys(dir.path(), lc);
        seen.extend(k.into_iter().flatten());
        skipped += l.skip_stats().skipped;
        assert!(l.skip_stats().reasons.contains_key("missing_caption"));
    }
    let set: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(set.len(), seen.len(), "no sample twice");
    assert_eq!(set, good, "every good sample once");
    assert_eq!(skipped as usize + good.len(), 6 * 13);
    // Shuffled: not in tar order.
    let (k, _) = wds_keys(
        dir.path(),
        LoaderConfig {
            workers: 1,
            epochs: Some(1),
            drop_last: false,
            ..LoaderConfig::train(200, 9)
        },
    );
    let flat: Vec<String> = k.into_iter().flatten().collect();
    let mut sorted = flat.clone();
    sorted.sort();
    assert_ne!(flat, sorted);
}

#[test]
fn wds_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    wds_shards(dir.path(), 5, 17);
    let lc = LoaderConfig {
        workers: 3,
        epochs: Some(2),
        drop_last: false,
        ..LoaderConfig::train(4, 1)
    };
    let (full, _) = wds_keys(dir.path(), lc.clone());
    let shards = wds::list_shards(dir.path()).unwrap();
    let cfg = WdsConfig {
        shuffle_buffer: 8,
        ..WdsConfig::train(16)
    };
    for stop in [1, 7, full.len() / 2 + 1] {
        let mut a = WdsLoader::new(shards.clone(), cfg.clone(), lc.clone()).unwrap();
        let mut got: Vec<Vec<String>> = a.by_ref().take(stop).map(|b| b.keys).collect();
        let st: WdsState =
            serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
        drop(a);
        let mut b = WdsLoader::new(shards.clone(), cfg.clone(), lc.clone()).unwrap();
        b.restore(&st).unwrap();
        got.extend(b.map(|b| b.keys));
        assert_eq!(got, full, "resume after {stop} batches");
    }
}

#[test]
fn wds_broken_tar_member_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    wds_shards(dir.path(), 2, 10);
    let p = dir.path().join("shard-00001.tar");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2 + 100]).unwrap();
    let lc = LoaderConfig {
        workers: 1,
        epochs: Some(1),
        drop_last: false,
        ..LoaderConfig::train(4, 0)
    };
    let (k, l) = wds_keys(dir.path(), lc);
    let n: usize = k.iter().map(|b| b.len()).sum();
    assert!(
        n > 10 && n < 20,
        "{n} samples: shard 0 whole, shard 1 up to the damage"
    );
    assert_eq!(
        l.skip_stats().reasons.get("broken_tar"),
        Some(&1),
        "{:?}",
        l.skip_stats()
    );
    let rep = scan(
        ScanSource::Wds,
        dir.path(),
        &ScanOptions {
            require_caption: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rep.reasons.get("broken_tar"), Some(&1));
}

#[test]
fn llava_records_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("images/coco/1.jpg"),
        &jpeg_bytes(&pattern(8, 8, 0), 90),
    );
    let json = serde_json::json!([
        {"id": "1", "image": "coco/1.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A pattern."}]},
        {"id": 2, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "3", "image": "coco/missing.jpg", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "4", "image": "coco/1.jpg", "conversations": [{"from": "human", "value": "no token"}, {"from": "gpt", "value": "x"}]},
        {"id": "5", "image": "coco/1.jpg", "conversations": [{"from": "gpt", "value": "<image>"}, {"from": "human", "value": "x"}]},
        {"id": "6", "conversations": [{"from": "human", "value": "<image> text only"}, {"from": "gpt", "value": "x"}]},
        {"image": "coco/1.jpg", "conversations": []},
        "not an object"
    ]);
    let path = dir.path().join("mix.json");
    write(&path, json.to_string().as_bytes());
    let (recs, stats) = load_llava(&path, Some(&dir.path().join("images"))).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["1", "2"]
    );
    assert_eq!(recs[0].conversations[1].from, Role::Gpt);
    assert_eq!(stats.skipped, 6);
    assert_eq!(stats.reasons.get("missing_image"), Some(&1));
    assert_eq!(stats.reasons.get("invalid_record"), Some(&5));
    // Without an image root, existence is not checked.
    let (recs, _) = load_llava(&path, None).unwrap();
    assert_eq!(recs.len(), 3);
    let rep = scan(
        ScanSource::Llava,
        &path,
        &ScanOptions {
            image_root: Some(dir.path().join("images")),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((rep.ok, rep.skipped), (2, 6));
    // Not a JSON array: an error naming the file.
    write(&path, b"{\"id\": 1}");
    assert!(load_llava(&path, None)
        .unwrap_err()
        .to_string()
        .contains("mix.json"));
}

#[test]
fn scan_hostile_folder_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cases = hostile_files(dir.path());
    let rep = scan(ScanSource::Photos, dir.path(), &ScanOptions::default()).unwrap();
    let want_ok = cases.iter().filter(|(_, r)| r.is_none()).count() as u64;
    assert_eq!(
        (rep.ok, rep.skipped),
        (want_ok, cases.len() as u64 - want_ok),
        "{}",
        rep.summary_json()
    );
    for (name, want) in &cases {
        let e = rep.entries.iter().find(|e| &e.path == name).unwrap();
        assert_eq!(e.reason.as_deref(), *want, "{name}");
    }
    let v: serde_json::Value = serde_json::from_str(&rep.summary_json()).unwrap();
    assert_eq!(v["reasons"]["too_many_pixels"], 2);
    assert_eq!(rep.entries_jsonl().lines().count(), cases.len());
    // The same files as ImageNet class folders.
    let root = tempfile::tempdir().unwrap();
    let class = root.path().join("n00");
    std::fs::create_dir_all(&class).unwrap();
    hostile_files(&class);
    let rep2 = scan(ScanSource::Imagenet, root.path(), &ScanOptions::default()).unwrap();
    assert_eq!((rep2.ok, rep2.skipped), (rep.ok, rep.skipped));
}

#[test]
fn imagenet_flat_val_with_solution_csv() {
    let dir = tempfile::tempdir().unwrap();
    let val = dir.path().join("val");
    for (i, id) in [
        "ILSVRC2012_val_00000002",
        "ILSVRC2012_val_00000001",
        "ILSVRC2012_val_00000003",
    ]
    .iter()
    .enumerate()
    {
        write(
            &val.join(format!("{id}.JPEG")),
            &jpeg_bytes(&pattern(30, 20, i as u32), 90),
        );
    }
    let csv = dir.path().join("LOC_val_solution.csv");
    write(
        &csv,
        b"ImageId,PredictionString\nILSVRC2012_val_00000001,n02 1 2 3 4 n02 5 6 7 8\nILSVRC2012_val_00000002,n01 1 2 3 4\nILSVRC2012_val_00000003,n02 0 0 9 9\n",
    );
    let ds = ImageFolder::open_flat(&val, &csv, ImageFolderConfig::eval(8)).unwrap();
    assert_eq!(ds.classes(), ["n01", "n02"]);
    let files: Vec<(String, usize)> = ds
        .files()
        .iter()
        .map(|(p, l)| (p.to_string_lossy().into_owned(), *l))
        .collect();
    assert_eq!(
        files,
        [
            ("ILSVRC2012_val_00000001.JPEG".to_string(), 1),
            ("ILSVRC2012_val_00000002.JPEG".to_string(), 0),
            ("ILSVRC2012_val_00000003.JPEG".to_string(), 1)
        ]
    );
    let n: usize = ds
        .loader(LoaderConfig::eval(2))
        .unwrap()
        .map(|b| b.len())
        .sum();
    assert_eq!(n, 3);
    // An id without a file is an error naming it.
    write(
        &csv,
        b"ImageId,PredictionString\nILSVRC2012_val_00000009,n01 1 2 3 4\n",
    );
    let e = ImageFolder::open_flat(&val, &csv, ImageFolderConfig::eval(8)).unwrap_err();
    assert!(e.to_string().contains("ILSVRC2012_val_00000009"), "{e}");
}
