//! Training on real dataset layouts (generated here): every `[data] kind` trains a few steps of
//! one stage, every stage trains on one kind, resume on tar shards is exact, a missing dataset is
//! an error naming the key and the path before any model is built, u8 batches normalise on the
//! device exactly as the data crate's f32 path.

use super::common::{quiet, serial, tiny_config, ToyTask};
use super::stages::cfg;
use semhitok_train::rundir::read_metrics;
use semhitok_train::rundir::RunStart;
use semhitok_train::stages::{
    build_batches, build_eval_stream, build_task, merge_data_states, run_stage, u8_batch_tensor,
};
use semhitok_train::trainer::{train, TrainOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

fn jpeg(w: u32, h: u32, salt: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 255 / w) as u8).wrapping_add(salt as u8 * 37),
            ((y * 255 / h) as u8).wrapping_add(salt as u8 * 11),
            ((x + y + salt) * 13 % 256) as u8,
        ])
    });
    let mut out = Vec::new();
    img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
        &mut out, 85,
    ))
    .unwrap();
    out
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// `root/<synset>/*.JPEG`: 3 classes x 4 images of ImageNet-like aspect, plus one corrupt file
/// and one unreadable entry (a directory under an image name).
fn imagenet_tree(root: &Path) -> PathBuf {
    for (c, syn) in ["n01440764", "n01443537", "n01484850"].iter().enumerate() {
        for i in 0..4u32 {
            let (w, h) = (50 + 7 * i, 38 + 3 * c as u32);
            write(
                &root.join(syn).join(format!("{syn}_{i}.JPEG")),
                &jpeg(w, h, i + 4 * c as u32),
            );
        }
    }
    write(
        &root.join("n01443537/corrupt.JPEG"),
        b"\xFF\xD8\xFF not really",
    );
    std::fs::create_dir_all(root.join("n01484850/unreadable.JPEG")).unwrap();
    root.to_path_buf()
}

/// Webdataset shards packed from a flat folder of 14 captioned images, 5 per shard.
fn shards(dir: &Path) -> PathBuf {
    let src = dir.join("flat");
    for i in 0..14u32 {
        write(
            &src.join(format!("img{i:02}.jpg")),
            &jpeg(44 + i, 36, 50 + i),
        );
        write(
            &src.join(format!("img{i:02}.txt")),
            format!("caption {i}").as_bytes(),
        );
    }
    let out = dir.join("shards");
    let r = semhitok_data::pack(
        &src,
        &out,
        &semhitok_data::PackOptions {
            shard_size: 5,
            limits: Default::default(),
        },
    )
    .unwrap();
    assert_eq!((r.samples, r.shards.len()), (14, 3));
    out
}

fn photos(dir: &Path) -> PathBuf {
    for i in 0..4u32 {
        write(
            &dir.join(format!("p{i}.jpg")),
            &jpeg(90 + 9 * i, 70, 90 + i),
        );
    }
    dir.to_path_buf()
}

fn gz(path: &Path, bytes: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

/// Fashion-MNIST IDX files with 12 images per split.
fn fashion_mnist(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for prefix in ["train", "t10k"] {
        let n = 12u32;
        let mut img = vec![0, 0, 8, 3];
        for v in [n, 28, 28] {
            img.extend_from_slice(&v.to_be_bytes());
        }
        img.extend((0..n * 28 * 28).map(|i| (i * 7 % 251) as u8));
        gz(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")), &img);
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&n.to_be_bytes());
        lab.extend((0..n).map(|i| (i % 10) as u8));
        gz(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &lab);
    }
    dir.to_path_buf()
}

fn kind_sets(kind: &str, root: &Path) -> Vec<String> {
    vec![
        format!("data.kind=\"{kind}\""),
        format!("data.root=\"{}\"", root.display()),
        "data.workers=2".into(),
    ]
}

/// Trains `stage` on `kind` for `steps` through the `semhitok train` path; returns the run dir.
fn train_on(out: &Path, stage: &str, kind: &str, root: &Path, steps: u64, init: &[String]) {
    let mut sets = kind_sets(kind, root);
    sets.extend(init.iter().cloned());
    let c = cfg(out, stage, steps, &sets);
    let r = run_stage(&c, RunStart::Fresh, vec!["test".into()], true)
        .unwrap_or_else(|e| panic!("{stage} on {kind}: {e}"));
    assert_eq!(r.steps_done, steps, "{stage} on {kind}");
    assert!(
        r.losses.iter().all(|(_, l)| l.is_finite()),
        "{stage} on {kind}"
    );
    assert!(r.last_checkpoint.is_some());
    let m = read_metrics(out);
    assert!(!m.is_empty());
    assert!(
        m.iter()
            .all(|r| r["data_s"].as_f64().is_some_and(|s| s >= 0.0)),
        "metrics record the data wait"
    );
}

#[test]
fn every_kind_trains_spc_and_every_stage_trains_on_a_kind() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let inet = imagenet_tree(&t.join("imagenet"));
    let wds = shards(t);
    let ph = photos(&t.join("photos"));
    let fm = fashion_mnist(&t.join("fmnist"));
    for (kind, root) in [
        ("imagenet", &inet),
        ("webdataset", &wds),
        ("photos", &ph),
        ("fashion-mnist", &fm),
    ] {
        train_on(&t.join(format!("spc-{kind}")), "spc", kind, root, 3, &[]);
    }
    // The other stages, each on another kind, chained as the paper's runs are.
    let spc = format!("init.spc=\"{}\"", t.join("spc-imagenet").display());
    train_on(&t.join("pre"), "pre", "webdataset", &wds, 2, &[spc.clone()]);
    let pre = format!("init.pre=\"{}\"", t.join("pre").display());
    train_on(
        &t.join("ft"),
        "decoder-ft",
        "photos",
        &ph,
        2,
        &[spc.clone(), pre.clone()],
    );
    train_on(
        &t.join("pre-ft"),
        "pre",
        "imagenet",
        &inet,
        2,
        &[spc.clone(), pre],
    );
    train_on(&t.join("joint"), "joint", "fashion-mnist", &fm, 2, &[spc]);
}

/// Stop a toy run on tar shards at step 6 (checkpoint at 4: mid-shard, mid-epoch), resume, and
/// compare every loss with the uninterrupted run's, bit for bit.
#[test]
fn resume_on_shards_and_class_folders_is_bit_exact() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let roots = [
        ("webdataset", shards(tmp.path())),
        ("imagenet", imagenet_tree(&tmp.path().join("inet"))),
    ];
    for (kind, root) in &roots {
        let sets: Vec<String> = kind_sets(kind, root);
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let run = |dir: &str, ckpt: u64, opts: TrainOptions| {
            let c = tiny_config(&tmp.path().join(format!("{kind}-{dir}")), 9, ckpt, &sets);
            let mut task = ToyTask::new(3);
            let mut data = build_batches(&c).unwrap();
            train(&c.loop_config(), &mut task, data.as_mut(), &opts).unwrap()
        };
        let full = run("a", 100, quiet());
        run(
            "b",
            4,
            TrainOptions {
                stop_after: Some(6),
                ..quiet()
            },
        );
        let resumed = run(
            "b",
            4,
            TrainOptions {
                resume: true,
                ..quiet()
            },
        );
        assert_eq!(resumed.start_step, 4, "{kind}");
        let bits = |v: &[(u64, f64)]| v.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
        assert_eq!(
            bits(&resumed.losses),
            bits(&full.losses[4..]),
            "{kind}: resumed losses"
        );
    }
}

#[test]
fn missing_data_names_key_and_path_before_any_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let nowhere = tmp.path().join("no-such-dataset");
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    let pattern = format!("{}/{{00000..00009}}.tar", tmp.path().display());
    let cases: Vec<(Vec<String>, &str, String)> = vec![
        (
            kind_sets("imagenet", &nowhere),
            "data.root",
            nowhere.display().to_string(),
        ),
        (
            kind_sets("webdataset", &nowhere),
            "data.root",
            nowhere.display().to_string(),
        ),
        (
            kind_sets("photos", &nowhere),
            "data.root",
            nowhere.display().to_string(),
        ),
        (
            kind_sets("fashion-mnist", &nowhere),
            "data.root",
            nowhere.display().to_string(),
        ),
        (
            kind_sets("imagenet", &tmp.path().join("empty")),
            "data.root",
            tmp.path().join("empty").display().to_string(),
        ),
        (
            vec![
                "data.kind=\"webdataset\"".into(),
                format!("data.shards=\"{pattern}\""),
            ],
            "data.shards",
            pattern.clone(),
        ),
    ];
    for (sets, key, path) in cases {
        // A SigLIP teacher without weights would be built in seconds; the error must come first.
        let c = cfg(&out, "spc", 2, &sets);
        let e = run_stage(&c, RunStart::Fresh, vec![], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(&path), "{sets:?}: {e}");
        // The config file it came from, not a placeholder (issue 13 item 10).
        assert!(e.contains("test.toml"), "{sets:?}: {e}");
        assert!(
            !out.exists(),
            "{sets:?}: nothing written before the data check"
        );
        assert!(build_task(&c).is_ok(), "the model itself is fine");
    }
}

#[test]
fn u8_batches_normalise_on_device_as_the_f32_path() {
    let px: Vec<u8> = (0..=255).chain(0..=255).chain(0..=255).collect();
    let t = u8_batch_tensor(&px, &[1, 3, 16, 16], tch::Device::Cpu).unwrap();
    let got: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
    let want: Vec<f32> = px.iter().map(|&v| v as f32 * (1.0 / 127.5) - 1.0).collect();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

/// Two ranks of a webdataset run checkpoint their merged data state; three ranks resume from it
/// and together see exactly the samples of the epoch the two had not consumed.
#[test]
fn merged_rank_states_resume_at_another_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let root = shards(tmp.path());
    let out = tmp.path().join("run");
    let batches = |rank: usize, world: usize| {
        let mut sets = kind_sets("webdataset", &root);
        sets.push(format!("data.rank={rank}"));
        sets.push(format!("data.world_size={world}"));
        build_batches(&tiny_config(
            &out,
            5,
            5,
            &sets.iter().map(String::as_str).collect::<Vec<_>>(),
        ))
        .unwrap()
    };
    let mut seen = 0;
    let mut states = vec![];
    for rank in 0..2 {
        let mut b = batches(rank, 2);
        for _ in 0..1 {
            seen += b.next_batch(tch::Device::Cpu).unwrap().len() as i64;
        }
        states.push(b.state());
    }
    let merged = merge_data_states(&states).unwrap();
    let e = batches(1, 2).restore(&states[0]).unwrap_err().to_string();
    assert!(e.contains("merge"), "{e}");
    // The epoch (14 samples, batch 4, drop_last per stream) ends for each new rank; count what the
    // three ranks read before their first batch of epoch 1.
    let mut rest = 0;
    for rank in 0..3 {
        let mut b = batches(rank, 3);
        b.restore(&merged).unwrap();
        let st0 = b.state();
        let epoch_of = |v: &serde_json::Value| v["ranks"][0][1]["epoch"].as_u64().unwrap();
        assert_eq!(epoch_of(&st0), 0, "rank {rank} resumes in epoch 0: {st0}");
        loop {
            let n = b.next_batch(tch::Device::Cpu).unwrap().len() as i64;
            if epoch_of(&b.state()) > 0 {
                break;
            }
            rest += n;
        }
    }
    assert!(
        seen + rest <= 14,
        "no sample twice in epoch 0: {seen} + {rest}"
    );
    assert!(
        seen + rest >= 14 - 3 * 3,
        "at most each stream's partial last batch is dropped"
    );
}

/// `[eval.data]` on ImageNet's flat `val/` layout with its solution CSV: every image once, in
/// order, ADM center crops at `data.image_size`; a missing CSV names its key.
#[test]
fn eval_data_reads_the_flat_val_layout_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let val = tmp.path().join("val");
    let mut csv = String::from("ImageId,PredictionString\n");
    for i in 0..7u32 {
        let id = format!("ILSVRC2012_val_{i:08}");
        write(&val.join(format!("{id}.JPEG")), &jpeg(60 + 5 * i, 45, i));
        csv.push_str(&format!("{id},n0{} 1 2 3 4\n", i % 3));
    }
    let csv_path = tmp.path().join("LOC_val_solution.csv");
    write(&csv_path, csv.as_bytes());
    let sets = [
        "eval.data.kind=\"imagenet\"".to_string(),
        format!("eval.data.root=\"{}\"", val.display()),
        format!("eval.data.solution_csv=\"{}\"", csv_path.display()),
    ];
    let c = cfg(&tmp.path().join("run"), "spc", 1, &sets);
    let (mut stream, desc) = build_eval_stream(&c, 3)
        .unwrap()
        .expect("[eval.data] is set");
    assert!(
        desc.contains("imagenet") && desc.contains("solution csv"),
        "{desc}"
    );
    let (images, keys) = semhitok_train::eval::stream_images(stream.as_mut(), 100).unwrap();
    assert_eq!(images.size(), [7, 3, 32, 32]);
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "in order");
    assert_eq!(keys.len(), 7);
    let mut bad = sets.to_vec();
    bad[2] = format!(
        "eval.data.solution_csv=\"{}\"",
        tmp.path().join("nope.csv").display()
    );
    let c = cfg(&tmp.path().join("run"), "spc", 1, &bad);
    let e = build_eval_stream(&c, 3)
        .err()
        .expect("missing csv")
        .to_string();
    assert!(
        e.contains("eval.data.solution_csv") && e.contains("nope.csv"),
        "{e}"
    );
}
