//! Validation during training: `"kind": "val"` records, grids and TensorBoard events on the toy
//! task; a run with validation trains exactly as one without it and resumes bit for bit
//! (weight EMA swapped in and out); the `pre` stage validates PSNR, SSIM, rFID and codebook
//! usage on an `[eval.data]` set, its reference statistics cached outside the dataset.

use super::common::{bit_equal, quiet, serial, snapshot, tiny_config, ToyTask};
use super::stages::{cfg, spc_run};
use super::tensorboard::{read_events, Value};
use semhitok_train::rundir::read_metrics;
use semhitok_train::stages::{build_batches, build_task, build_validation};
use semhitok_train::synthetic::SyntheticBatches;
use semhitok_train::trainer::{train, train_validated, TrainOptions, TrainReport, Validation};
use std::path::{Path, PathBuf};
use tch::Device;

/// 6 fixed held-out images (16 px) of the toy task, no FID.
fn toy_val() -> Validation {
    let images = SyntheticBatches::new(11, 6, 16)
        .next_images(Device::Cpu)
        .unwrap();
    Validation::new(images, 4, 3, None, "toy").unwrap()
}

fn toy_run(
    dir: &Path,
    sets: &[&str],
    opts: &TrainOptions,
    val: Option<&Validation>,
) -> TrainReport {
    let cfg = tiny_config(dir, 10, 4, sets);
    let mut task = ToyTask::new(1);
    let mut data = SyntheticBatches::new(3, 4, 16);
    train_validated(&cfg.loop_config(), &mut task, &mut data, opts, val).unwrap()
}

fn val_records(dir: &Path) -> Vec<serde_json::Value> {
    read_metrics(dir)
        .into_iter()
        .filter(|r| r["kind"] == "val")
        .collect()
}

fn tb_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn toy_validation_logs_records_grids_and_tensorboard_events() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let val = toy_val();
    toy_run(&dir, &["schedule.eval_every=4"], &quiet(), Some(&val));
    // Every 4 steps and at the last one (10), EMA weights (tiny_config keeps an EMA).
    let recs = val_records(&dir);
    let steps: Vec<u64> = recs.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![4, 8, 10]);
    for r in &recs {
        assert_eq!(r["weights"], "ema", "{r}");
        assert_eq!(r["images"], 6, "{r}");
        let psnr = r["psnr"].as_f64().unwrap();
        let ssim = r["ssim"].as_f64().unwrap();
        assert!(psnr.is_finite() && psnr > 0.0 && ssim.is_finite(), "{r}");
        assert!(r.get("rfid").is_none(), "no FID network was given: {r}");
        let grid = dir.join(r["grid"].as_str().unwrap());
        // 3 images, originals over reconstructions: 3 columns x 2 rows of 16 px, 2 px gutters.
        assert_eq!(
            image::image_dimensions(&grid).unwrap(),
            (3 * 16 + 4 * 2, 2 * 16 + 3 * 2)
        );
    }
    // The training records are still one per step, without a kind.
    let train_steps: Vec<u64> = read_metrics(&dir)
        .iter()
        .filter(|r| r.get("kind").is_none())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(train_steps, (1..=10).collect::<Vec<_>>());

    // TensorBoard: one event file, its records framed with valid CRCs (checked by the reader).
    let files = tb_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let events = read_events(&files[0]);
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    let scalar = |tag: &str| -> Vec<(i64, f32)> {
        events
            .iter()
            .flat_map(|e| {
                e.values.iter().filter_map(move |(t, v)| match v {
                    Value::Simple(x) if t == tag => Some((e.step, *x)),
                    _ => None,
                })
            })
            .collect()
    };
    let loss = scalar("train/loss");
    assert_eq!(loss.len(), 10);
    let m = read_metrics(&dir);
    assert_eq!(loss[2].1, m[2]["loss"].as_f64().unwrap() as f32);
    assert_eq!(scalar("train/lr").len(), 10);
    assert_eq!(scalar("train/grad_norm").len(), 10);
    assert_eq!(scalar("train/data_s").len(), 10);
    let psnr = scalar("val/psnr");
    assert_eq!(psnr.iter().map(|p| p.0).collect::<Vec<_>>(), vec![4, 8, 10]);
    assert_eq!(psnr[1].1, recs[1]["psnr"].as_f64().unwrap() as f32);
    let images: Vec<(i64, u32, u32, Vec<u8>)> = events
        .iter()
        .flat_map(|e| {
            e.values.iter().filter_map(move |(t, v)| match v {
                Value::Image { height, width, png } if t == "val/reconstructions" => {
                    Some((e.step, *height, *width, png.clone()))
                }
                _ => None,
            })
        })
        .collect();
    assert_eq!(images.len(), 3);
    let (_, h, w, png) = &images[0];
    let decoded = image::load_from_memory(png).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (*w, *h));
    assert_eq!((*w, *h), (3 * 16 + 4 * 2, 2 * 16 + 3 * 2));

    // `[log] tensorboard = false`: no event file.
    let off = tmp.path().join("off");
    toy_run(&off, &["log.tensorboard=false"], &quiet(), None);
    assert!(!off.join("tb").exists());
}

/// Validation changes nothing of the training (same losses and weights, bit for bit, as a run
/// without it), and a run with validation resumes exactly, its validation numbers included.
#[test]
fn resume_with_validation_is_bit_exact() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let val = toy_val();
    let sets = ["schedule.eval_every=3"];
    let plain_dir = tmp.path().join("plain");
    let plain = toy_run(&plain_dir, &[], &quiet(), None);
    let a_dir = tmp.path().join("a");
    let cfg_a = tiny_config(&a_dir, 10, 4, &sets);
    let mut task_a = ToyTask::new(1);
    let mut data_a = SyntheticBatches::new(3, 4, 16);
    let full = train_validated(
        &cfg_a.loop_config(),
        &mut task_a,
        &mut data_a,
        &quiet(),
        Some(&val),
    )
    .unwrap();
    let bits =
        |r: &TrainReport| -> Vec<u64> { r.losses.iter().map(|(_, l)| l.to_bits()).collect() };
    assert_eq!(bits(&full), bits(&plain), "validation changed the training");

    // Interrupted after 6 steps (checkpoint at 4; validated at 3 and 6), resumed.
    let b_dir = tmp.path().join("b");
    let cfg_b = tiny_config(&b_dir, 10, 4, &sets);
    let first = toy_run(
        &b_dir,
        &sets,
        &TrainOptions {
            stop_after: Some(6),
            ..quiet()
        },
        Some(&val),
    );
    assert_eq!(first.losses.len(), 6);
    let mut task_c = ToyTask::new(99);
    let mut data_c = SyntheticBatches::new(3, 4, 16);
    let resumed = train_validated(
        &cfg_b.loop_config(),
        &mut task_c,
        &mut data_c,
        &TrainOptions {
            resume: true,
            ..quiet()
        },
        Some(&val),
    )
    .unwrap();
    assert_eq!(resumed.start_step, 4);
    assert_eq!(bits(&resumed), bits(&full)[4..].to_vec());
    assert!(bit_equal(&snapshot(&task_a.vs), &snapshot(&task_c.vs)));
    // The validation records of both runs: the same steps, the same numbers.
    let v = |d: &Path| -> Vec<(u64, u64, u64)> {
        val_records(d)
            .iter()
            .map(|r| {
                (
                    r["step"].as_u64().unwrap(),
                    r["psnr"].as_f64().unwrap().to_bits(),
                    r["ssim"].as_f64().unwrap().to_bits(),
                )
            })
            .collect()
    };
    assert_eq!(v(&b_dir), v(&a_dir));
    assert_eq!(
        v(&a_dir).iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![3, 6, 9, 10]
    );
    // The resumed call wrote a second event file with a SessionLog START at step 5, the first
    // step it runs (TensorBoard drops what the first call logged from step 5 on).
    let files = tb_files(&b_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let starts: Vec<Vec<i64>> = files
        .iter()
        .map(|f| {
            read_events(f)
                .iter()
                .filter(|e| e.session_start)
                .map(|e| e.step)
                .collect()
        })
        .collect();
    assert!(
        starts.contains(&vec![5]) && starts.contains(&vec![]),
        "{starts:?}"
    );
    // Without a validation set, eval_every only logs that it is skipped.
    let none = tmp.path().join("none");
    let r = toy_run(&none, &sets, &quiet(), None);
    assert_eq!(bits(&r), bits(&plain));
    assert!(val_records(&none).is_empty());
}

/// `root/<class>/*.png`: 6 held-out 40x36 images in 2 class folders.
pub(super) fn eval_tree(root: &Path) -> PathBuf {
    let imgs = SyntheticBatches::new(21, 6, 40)
        .next_images(Device::Cpu)
        .unwrap();
    for i in 0..6 {
        let d = root.join(format!("c{}", i % 2));
        std::fs::create_dir_all(&d).unwrap();
        semhitok_train::report::save_png(
            &imgs.get(i).narrow(1, 0, 36),
            &d.join(format!("i{i}.png")),
        )
        .unwrap();
    }
    root.to_path_buf()
}

/// `pre` with validation every 3 steps on an ImageNet-layout `[eval.data]`: PSNR, SSIM, rFID,
/// semantic / unified / pixel usage logged; the reference statistics cached under
/// `eval.fid_cache` (nothing written into the dataset) and found there the second time; the
/// run resumes bit for bit with validation on.
#[test]
fn pre_validates_and_resumes_bit_exactly() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let spc = spc_run(tmp.path(), 5);
    let eval_root = eval_tree(&tmp.path().join("heldout"));
    let cache = tmp.path().join("fid-cache");
    let fid =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.assets/weights/fid_inception_v3.pt");
    let sets = |ckpt_every: u64| -> Vec<String> {
        vec![
            format!("init.spc=\"{}\"", spc.display()),
            "schedule.eval_every=3".into(),
            format!("schedule.ckpt_every={ckpt_every}"),
            "eval.val_images=4".into(),
            "eval.grid_images=2".into(),
            format!("eval.fid_weights=\"{}\"", fid.display()),
            format!("eval.fid_cache=\"{}\"", cache.display()),
            "eval.data.kind=\"imagenet\"".into(),
            format!("eval.data.root=\"{}\"", eval_root.display()),
            "optim.ema_decay=0.9".into(),
        ]
    };
    let run = |dir: &Path, ckpt_every: u64, opts: TrainOptions| -> TrainReport {
        let c = cfg(dir, "pre", 8, &sets(ckpt_every));
        let val = build_validation(&c, true)
            .unwrap()
            .expect("a validation set");
        assert_eq!(val.len(), 4);
        let mut task = build_task(&c).unwrap();
        let mut data = build_batches(&c).unwrap();
        train_validated(
            &c.loop_config(),
            task.as_mut(),
            data.as_mut(),
            &opts,
            Some(&val),
        )
        .unwrap()
    };
    let before: Vec<PathBuf> = walk(&eval_root);
    let a = tmp.path().join("a");
    let full = run(&a, 8, quiet());
    let recs = val_records(&a);
    assert_eq!(
        recs.iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![3, 6, 8]
    );
    for r in &recs {
        for k in [
            "psnr",
            "ssim",
            "rfid",
            "usage_semantic",
            "usage_unified",
            "usage_pixel",
        ] {
            let v = r[k].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite(), "{k} of {r}");
        }
        for k in ["usage_semantic", "usage_unified", "usage_pixel"] {
            let v = r[k].as_f64().unwrap();
            assert!(v > 0.0 && v <= 1.0, "{k} of {r}");
        }
        assert!(r["rfid"].as_f64().unwrap() > 0.0, "{r}");
        assert!(a.join(r["grid"].as_str().unwrap()).exists());
    }
    // The cache holds the statistics (npz + sidecar); the dataset folder is unchanged.
    let cached: Vec<PathBuf> = walk(&cache);
    assert_eq!(cached.len(), 2, "{cached:?}");
    assert!(cached
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "npz")));
    assert_eq!(walk(&eval_root), before);

    // Stopped at 7 (checkpoint at 4 and 7... ckpt_every 4: at 4), resumed: bit-exact losses and
    // validation numbers; the second build found the statistics in the cache.
    let b = tmp.path().join("b");
    run(
        &b,
        4,
        TrainOptions {
            stop_after: Some(7),
            ..quiet()
        },
    );
    let r = run(
        &b,
        4,
        TrainOptions {
            resume: true,
            ..quiet()
        },
    );
    assert_eq!(r.start_step, 4);
    for ((s1, l1), (s2, l2)) in full.losses[4..].iter().zip(&r.losses) {
        assert_eq!((s1, l1.to_bits()), (s2, l2.to_bits()), "step {s1}");
    }
    let v = |d: &Path| -> Vec<(u64, Vec<u64>)> {
        val_records(d)
            .iter()
            .map(|r| {
                let keys = ["psnr", "ssim", "rfid", "usage_unified"];
                let bits = keys
                    .iter()
                    .map(|k| r[*k].as_f64().unwrap().to_bits())
                    .collect();
                (r["step"].as_u64().unwrap(), bits)
            })
            .collect()
    };
    assert_eq!(v(&a), v(&b));
    // Without validation the run trains the same losses.
    let plain = tmp.path().join("plain");
    let c = cfg(&plain, "pre", 8, &sets(8)[..1]);
    let mut task = build_task(&c).unwrap();
    let mut data = build_batches(&c).unwrap();
    let p = train(&c.loop_config(), task.as_mut(), data.as_mut(), &quiet()).unwrap();
    let with_ema: Vec<u64> = {
        // (`plain` has no weight EMA: the EMA does not enter the loss, so the losses agree.)
        full.losses.iter().map(|(_, l)| l.to_bits()).collect()
    };
    assert_eq!(
        p.losses
            .iter()
            .map(|(_, l)| l.to_bits())
            .collect::<Vec<_>>(),
        with_ema
    );
}

/// Every file under `root`, sorted.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Data-parallel: rank 0 validates and logs, rank 1 waits at the validation barrier; the
/// checkpoint is bit-identical to that of the same 2-rank run without validation.
#[test]
fn dist_validation_runs_on_rank_zero_and_changes_nothing() {
    use super::dist::{latest, run_ranks, write_cfg};
    let tmp = tempfile::tempdir().unwrap();
    let eval_root = eval_tree(&tmp.path().join("heldout"));
    let sets = |every: u64| -> Vec<String> {
        vec![
            format!("schedule.eval_every={every}"),
            "schedule.ckpt_every=10".into(),
            "eval.val_images=4".into(),
            "eval.data.kind=\"imagenet\"".into(),
            format!("eval.data.root=\"{}\"", eval_root.display()),
        ]
    };
    let mut with = cfg(&tmp.path().join("with"), "spc", 10, &sets(5));
    let mut without = cfg(&tmp.path().join("without"), "spc", 10, &sets(0));
    with.data.batch_size = 2;
    without.data.batch_size = 2;
    let err = run_ranks(&write_cfg(&with, tmp.path(), "with"), 2, &[]);
    assert!(err.contains("validation every 5 steps"), "{err}");
    run_ranks(&write_cfg(&without, tmp.path(), "without"), 2, &[]);
    let recs = val_records(&with.run.out_dir);
    assert_eq!(
        recs.iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![5, 10],
        "one record per validation (rank 0's)"
    );
    for r in &recs {
        assert!(r["usage_semantic"].as_f64().is_some_and(|u| u > 0.0), "{r}");
        assert!(
            r["teacher_cosine"].as_f64().is_some_and(f64::is_finite),
            "{r}"
        );
        assert!(r.get("psnr").is_none(), "spc reconstructs no pixels: {r}");
    }
    let (a, b) = (latest(&with.run.out_dir), latest(&without.run.out_dir));
    assert_eq!(a.state.step, 10);
    assert_eq!(a.state.tensors_sha256, b.state.tensors_sha256);
}
