//! Data-parallel LLM stages (issues 17, 18 on issue 19's trainer): `llava-finetune` (LoRA) and
//! `t2i` as 2 Gloo ranks with batch B/2 equal 1 process with batch B after a few steps, up to
//! float summation order: the same records / token positions in the same order (rank r reads
//! its block of each global batch), the loss the mean over every loss token of the global batch
//! (each rank's token mean weighted by its share of the tokens), checkpoints and logs from rank 0.

use super::dist::{latest, max_diff, run_plain, run_ranks, TOL};
use super::llava::training::{config as llava_config, fixture as llava_fixture};
use super::t2i_run::{config as t2i_config, fixtures as t2i_fixtures};
use std::path::Path;

/// The logged loss and gradient norm of two runs, step by step, within `TOL` (relative).
fn same_logs(a: &Path, b: &Path, what: &str) {
    let (ma, mb) = (
        semhitok_train::rundir::read_metrics(a),
        semhitok_train::rundir::read_metrics(b),
    );
    assert!(!ma.is_empty() && ma.len() == mb.len(), "{ma:?} vs {mb:?}");
    for (ra, rb) in ma.iter().zip(&mb) {
        assert_eq!(ra["step"], rb["step"]);
        for key in ["loss", "grad_norm"] {
            let (x, y) = (ra[key].as_f64().unwrap(), rb[key].as_f64().unwrap());
            assert!(
                (x - y).abs() <= TOL * x.abs().max(1.0),
                "{what} step {}: {key} {x} (1 x B) vs {y} (2 x B/2)",
                ra["step"]
            );
        }
    }
}

#[test]
fn dist_llava_finetune_two_ranks_of_half_batch_equal_one_full_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let f = llava_fixture(tmp.path());
    let whole = llava_config(&f, &tmp.path().join("whole"), "llava-finetune", &[]);
    let halves = llava_config(&f, &tmp.path().join("halves"), "llava-finetune", &[]);
    let steps = ["--set", "schedule.steps=4"];
    run_plain(&tmp.path().join("whole.toml"), &steps);
    run_ranks(
        &tmp.path().join("halves.toml"),
        2,
        &["--set", "schedule.steps=4", "--set", "data.batch_size=2"],
    );
    let (a, b) = (latest(&whole.run.out_dir), latest(&halves.run.out_dir));
    assert_eq!((a.state.step, b.state.step), (4, 4));
    // 4 steps x 4 records, as a global position.
    assert_eq!(a.state.data_state, b.state.data_state);
    assert_eq!(a.state.data_state["index"], 16);
    let (d, key) = max_diff(&a, &b);
    eprintln!("llava-finetune: 2 ranks x 2 vs 1 x 4 after 4 steps: max |diff| {d:.3e} at {key}");
    assert!(d <= TOL, "max |diff| {d} at {key}");
    assert!(
        a.tensors.keys().any(|k| k.contains("lora_A")),
        "LoRA tensors trained"
    );
    same_logs(&whole.run.out_dir, &halves.run.out_dir, "llava-finetune");
    // Rank 0 alone finished the run (projector file, data report).
    assert!(halves
        .run
        .out_dir
        .join("mm_projector.safetensors")
        .is_file());
}

#[test]
fn dist_t2i_two_ranks_of_half_batch_equal_one_full_batch() {
    let tmp = tempfile::tempdir().unwrap();
    t2i_fixtures(tmp.path());
    // 24 samples, 4 per step: 8 steps cross an epoch; accumulation 2, caption dropout 0.2.
    let whole = t2i_config(tmp.path(), "whole", 8, &["data.batch_size=4".into()]);
    let halves = t2i_config(tmp.path(), "halves", 8, &["data.batch_size=2".into()]);
    let set = |b: &str| ["--set".to_string(), format!("data.batch_size={b}")];
    let (sw, sh) = (set("4"), set("2"));
    let sw: Vec<&str> = sw.iter().map(String::as_str).collect();
    let sh: Vec<&str> = sh.iter().map(String::as_str).collect();
    run_plain(&tmp.path().join("whole.toml"), &sw);
    run_ranks(&tmp.path().join("halves.toml"), 2, &sh);
    let (a, b) = (latest(&whole.run.out_dir), latest(&halves.run.out_dir));
    assert_eq!((a.state.step, b.state.step), (8, 8));
    assert_eq!(a.state.data_state, b.state.data_state);
    assert_eq!(a.state.data_state["epoch"], 2, "{}", a.state.data_state);
    let (d, key) = max_diff(&a, &b);
    eprintln!("t2i: 2 ranks x 2 vs 1 x 4 after 8 steps: max |diff| {d:.3e} at {key}");
    assert!(d <= TOL, "max |diff| {d} at {key}");
    same_logs(&whole.run.out_dir, &halves.run.out_dir, "t2i");
}
