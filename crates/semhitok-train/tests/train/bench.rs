//! `semhitok bench` times every tokenizer stage (spc, pre, decoder-ft, joint) from random
//! weights, without the earlier stages' runs.

use super::common::serial;
use semhitok_train::bench::{run, BenchArgs};
use std::path::PathBuf;

fn args(config: &str, set: &[&str]) -> BenchArgs {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let teacher = root.join(".assets/weights/efficientnet_lite0.safetensors");
    let mut set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    set.push(format!("teacher.weights=\"{}\"", teacher.display()));
    set.push(format!("loss.effnet_weights=\"{}\"", teacher.display()));
    BenchArgs {
        config: root.join("configs").join(config),
        steps: 2,
        warmup: 1,
        peak_tflops: 989.0,
        profile: false,
        cuda_profiler_step: false,
        set,
    }
}

#[test]
fn bench_times_every_tokenizer_stage() {
    let _g = serial();
    // decoder-ft: the config must name a `pre` run (validation), which bench does not read.
    for (config, set, stage) in [
        ("embedded-spc.toml", vec![], "spc"),
        ("embedded-pre.toml", vec![], "pre"),
        (
            "embedded-pre.toml",
            vec![
                "run.stage=\"decoder-ft\"",
                "init.pre=\"no/such/run\"",
                "init.spc=\"no/such/run\"",
            ],
            "decoder-ft",
        ),
        ("embedded-joint.toml", vec![], "joint"),
    ] {
        let rec = run(&args(config, &set)).unwrap_or_else(|e| panic!("{stage}: {e:#}"));
        assert_eq!(rec["stage"], stage);
        assert!(
            rec["images_per_s"].as_f64().unwrap() > 0.0,
            "{stage}: {rec}"
        );
        // The embedded EfficientNet teacher has no FLOP formula (and so no MFU).
        assert!(rec["mfu"].is_null(), "{stage}: {rec}");
    }
}

/// The training FLOPs per image of the paper configs equal what the PyTorch reference
/// (`scripts/bench_train_gpu_torch.py`, its own formula over its own model) prints: pre 439.30,
/// spc 199.70, decoder-ft 692.68, joint 338.35 GFLOP.
#[test]
fn flops_per_image_of_the_paper_stages_match_the_pytorch_reference() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (config, gflops) in [
        ("paper-pre-vitb-256.toml", 439.3009152),
        ("paper-spc-256.toml", 199.70),
        ("paper-decoder-ft-vitl-256.toml", 692.68),
        ("paper-joint-256.toml", 338.35),
    ] {
        let cfg =
            semhitok_train::config::TrainConfig::load(&root.join("configs").join(config), &[])
                .unwrap_or_else(|e| panic!("{config}: {e:#}"));
        let got = semhitok_train::bench::flops_per_image(&cfg).expect("a SigLIP teacher") / 1e9;
        assert!(
            (got - gflops).abs() < 0.006,
            "{config}: {got} GFLOP, the reference says {gflops}"
        );
    }
}
