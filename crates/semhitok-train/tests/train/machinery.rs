//! The training loop on a toy task: exact resume, lr = 0, truncated checkpoints, NaN stop,
//! checkpoint rotation, run-dir provenance.

use super::common::{bit_equal, quiet, serial, snapshot, tiny_config, ToyTask};
use semhitok_train::checkpoint;
use semhitok_train::synthetic::SyntheticBatches;
use semhitok_train::trainer::{train, TrainOptions};
use semhitok_train::Error;

#[test]
fn resume_is_bit_exact_on_cpu() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let cfg_a = tiny_config(&a_dir, 10, 4, &[]);
    let mut task = ToyTask::new(1);
    let mut data = SyntheticBatches::new(3, 4, 16);
    let full = train(&cfg_a.loop_config(), &mut task, &mut data, &quiet()).unwrap();
    assert_eq!(full.losses.len(), 10);
    let full_state = snapshot(&task.vs);

    // Interrupted after 6 steps (last checkpoint at 4), then resumed in a fresh process state.
    let cfg_b = tiny_config(&b_dir, 10, 4, &[]);
    let mut task_b = ToyTask::new(1);
    let mut data_b = SyntheticBatches::new(3, 4, 16);
    let first = train(
        &cfg_b.loop_config(),
        &mut task_b,
        &mut data_b,
        &TrainOptions {
            stop_after: Some(6),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(first.losses.len(), 6);
    let mut task_c = ToyTask::new(99); // different init: everything must come from the checkpoint
    let mut data_c = SyntheticBatches::new(3, 4, 16);
    let resumed = train(
        &cfg_b.loop_config(),
        &mut task_c,
        &mut data_c,
        &TrainOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(resumed.start_step, 4);
    assert_eq!(resumed.losses.len(), 6);
    for ((s1, l1), (s2, l2)) in full.losses[4..].iter().zip(&resumed.losses) {
        assert_eq!(s1, s2);
        assert_eq!(l1.to_bits(), l2.to_bits(), "step {s1}: {l1} vs {l2}");
    }
    assert!(
        bit_equal(&full_state, &snapshot(&task_c.vs)),
        "final weights differ"
    );
    // metrics.jsonl of the resumed run has each step once.
    let m = semhitok_train::rundir::read_metrics(&b_dir);
    let steps: Vec<u64> = m.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    // provenance written before the first step
    assert!(b_dir.join("config.toml").exists() && b_dir.join("run.json").exists());
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b_dir.join("run.json")).unwrap()).unwrap();
    assert!(run["git_rev"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn lr_zero_moves_no_parameter() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), 5, 5, &["optim.lr=0.0"]);
    let mut task = ToyTask::new(2);
    let before = snapshot(&task.vs);
    let mut data = SyntheticBatches::new(3, 4, 16);
    let r = train(&cfg.loop_config(), &mut task, &mut data, &quiet()).unwrap();
    assert!(r.losses.iter().all(|(_, l)| l.is_finite() && *l > 0.0));
    assert!(bit_equal(&before, &snapshot(&task.vs)));
}

#[test]
fn loss_falls_on_toy_problem() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), 60, 60, &["optim.lr=1e-2"]);
    let mut task = ToyTask::new(3);
    let mut data = SyntheticBatches::new(3, 4, 16);
    let r = train(&cfg.loop_config(), &mut task, &mut data, &quiet()).unwrap();
    let first = r.losses[0].1;
    let last: f64 = r.losses[50..].iter().map(|(_, l)| l).sum::<f64>() / 10.0;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn truncated_latest_checkpoint_falls_back_to_previous() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), 8, 4, &[]);
    let mut task = ToyTask::new(4);
    let mut data = SyntheticBatches::new(3, 4, 16);
    train(&cfg.loop_config(), &mut task, &mut data, &quiet()).unwrap();
    let all = checkpoint::list(tmp.path()).unwrap();
    assert_eq!(all.len(), 2);
    let t = all[1].join("tensors.safetensors");
    let len = std::fs::metadata(&t).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&t).unwrap();
    f.set_len(len / 2).unwrap();
    let err = checkpoint::load(&all[1]).unwrap_err().to_string();
    assert!(
        err.contains("truncated") && err.contains("step-00000008"),
        "{err}"
    );
    let ck = checkpoint::load_latest(tmp.path()).unwrap().unwrap();
    assert_eq!(ck.state.step, 4);
    let mut task2 = ToyTask::new(4);
    let mut data2 = SyntheticBatches::new(3, 4, 16);
    let r = train(
        &cfg.loop_config(),
        &mut task2,
        &mut data2,
        &TrainOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(r.start_step, 4);
    assert_eq!(r.losses.len(), 4);
}

#[test]
fn nan_loss_stops_with_diagnostic_and_keeps_last_good_checkpoint() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), 10, 4, &[]);
    let mut task = ToyTask::new(5);
    task.nan_at = Some(6);
    let mut data = SyntheticBatches::new(3, 4, 16);
    let err = train(&cfg.loop_config(), &mut task, &mut data, &quiet()).unwrap_err();
    match &err {
        Error::NonFinite { step, detail } => {
            // Numbered as metrics.jsonl numbers steps: step index 6 is the 7th optimizer step.
            assert_eq!(*step, 7);
            assert!(detail.contains("step-00000004"), "{detail}");
        }
        e => panic!("expected NonFinite, got {e}"),
    }
    assert!(tmp.path().join("nan-diagnostic.json").exists());
    let all = checkpoint::list(tmp.path()).unwrap();
    assert_eq!(all.len(), 1);
    let ck = checkpoint::load(&all[0]).unwrap();
    assert_eq!(ck.state.step, 4);
    assert!(ck
        .tensors
        .values()
        .all(|t| t.isfinite().all().int64_value(&[]) == 1));
}

#[test]
fn keeps_only_last_n_checkpoints() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), 10, 2, &[]);
    let mut task = ToyTask::new(6);
    let mut data = SyntheticBatches::new(3, 4, 16);
    train(&cfg.loop_config(), &mut task, &mut data, &quiet()).unwrap();
    let names: Vec<String> = checkpoint::list(tmp.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-00000006", "step-00000008", "step-00000010"]);
    let ck = checkpoint::load_latest(tmp.path()).unwrap().unwrap();
    assert!(ck.tensors.keys().any(|k| k.starts_with("ema.")));
    assert!(ck.tensors.keys().any(|k| k.starts_with("optim.gen.m.")));
}
