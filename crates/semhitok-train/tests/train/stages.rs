//! The four stages on a fixed tiny problem (synthetic 32 px images, EfficientNet-Lite0 stride-8
//! teacher, 4x4 tokens): the loss falls below a bound, lr = 0 moves no trainable parameter, and
//! stage 2 leaves the SPC (weights and semantic ids) bit-identical.

use super::common::serial;
use semhitok_nn::model::{Part, SemHiTokConfig};
use semhitok_train::config::TrainConfig;
use semhitok_train::rundir::read_metrics;
use semhitok_train::stages::{build_batches, build_task, f32_bits, load_model};
use semhitok_train::synthetic::SyntheticBatches;
use semhitok_train::trainer::{train, Batch, Batches, TrainOptions, TrainReport};
use std::path::{Path, PathBuf};
use tch::Device;

fn assets() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.assets/weights/efficientnet_lite0.safetensors");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask assets`",
        p.display()
    );
    p
}

pub(super) fn cfg(dir: &Path, stage: &str, steps: u64, sets: &[String]) -> TrainConfig {
    let base = format!(
        r#"
[run]
name = "t-{stage}"
out_dir = "{}"
stage = "{stage}"
seed = 1

[teacher]
kind = "efficientnet-lite0"
weights = "{}"
stride = 8

[data]
kind = "synthetic"
image_size = 32
batch_size = 4

[optim]
lr = 3e-3
betas = [0.9, 0.95]
weight_decay = 0.0
warmup_steps = 2
grad_clip = 1.0

[schedule]
steps = {steps}
log_every = 5
ckpt_every = {steps}
keep_last = 1
"#,
        dir.display(),
        assets().display()
    );
    let mut t: toml::Table = toml::from_str(&base).unwrap();
    let mut model = SemHiTokConfig::tiny(32, 8, 40, 16, 4);
    if stage == "joint" {
        model = model.with_fusion(semhitok_nn::fusion::Fusion::SemanticOnly);
    }
    t.insert("model".into(), toml::Value::try_from(model).unwrap());
    TrainConfig::from_toml_str(&toml::to_string(&t).unwrap(), Path::new("test.toml"), sets)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn quiet() -> TrainOptions {
    TrainOptions {
        quiet: true,
        ..Default::default()
    }
}

/// The fixed tiny problem: the same 4 synthetic images every step.
struct Fixed(tch::Tensor);

impl Batches for Fixed {
    fn next_batch(&mut self, device: Device) -> semhitok_train::Result<Batch> {
        Ok(Batch::Images(self.0.to_device(device)))
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn restore(&mut self, _: &serde_json::Value) -> semhitok_train::Result<()> {
        Ok(())
    }
}

pub(super) fn run(c: &TrainConfig) -> TrainReport {
    let mut task = build_task(c).unwrap_or_else(|e| panic!("{e}"));
    let mut data = Fixed(
        SyntheticBatches::new(5, 4, 32)
            .next_images(Device::Cpu)
            .unwrap(),
    );
    train(&c.loop_config(), task.as_mut(), &mut data, &quiet()).unwrap_or_else(|e| panic!("{e}"))
}

fn mean(r: &TrainReport, range: std::ops::Range<usize>) -> f64 {
    let n = range.len() as f64;
    r.losses[range].iter().map(|(_, l)| l).sum::<f64>() / n
}

pub(super) fn spc_run(root: &Path, steps: u64) -> PathBuf {
    let d = root.join("spc");
    run(&cfg(&d, "spc", steps, &[]));
    d
}

#[test]
fn spc_loss_falls() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("spc");
    let r = run(&cfg(&d, "spc", 40, &[]));
    let (first, last) = (mean(&r, 0..3), mean(&r, 35..40));
    assert!(last < 0.7 * first, "spc loss {first} -> {last}");
}

#[test]
fn pre_loss_falls_and_spc_is_untouched() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let spc = spc_run(tmp.path(), 10);
    let pre_dir = tmp.path().join("pre");
    let c = cfg(
        &pre_dir,
        "pre",
        40,
        &[format!("init.spc=\"{}\"", spc.display())],
    );
    let r = run(&c);
    let (first, last) = (mean(&r, 0..3), mean(&r, 35..40));
    assert!(last < 0.6 * first, "pre loss {first} -> {last}");

    // Stage-2 invariant: SPC weights and semantic ids bit-identical after `pre`.
    let a = load_model(&spc, Device::Cpu, true).unwrap();
    let b = load_model(&pre_dir, Device::Cpu, false).unwrap();
    let wa: Vec<_> = a
        .model()
        .named_variables(Part::Spc)
        .iter()
        .map(|(k, t)| (k.clone(), f32_bits(t)))
        .collect();
    let wb: Vec<_> = b
        .model()
        .named_variables(Part::Spc)
        .iter()
        .map(|(k, t)| (k.clone(), f32_bits(t)))
        .collect();
    assert!(!wa.is_empty());
    assert_eq!(wa, wb, "SPC weights changed in stage 2");
    let images = SyntheticBatches::new(77, 8, 32)
        .next_images(Device::Cpu)
        .unwrap();
    let (ia, ib) = (
        a.semantic_ids(&images).unwrap(),
        b.semantic_ids(&images).unwrap(),
    );
    assert!(ia.equal(&ib), "semantic ids changed in stage 2");
    // and the pixel branch did learn something: reconstructions differ from a fresh decoder's
    assert!(
        b.reconstruct(&images)
            .unwrap()
            .isfinite()
            .all()
            .int64_value(&[])
            == 1
    );
}

#[test]
fn decoder_ft_and_joint_losses_fall() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let spc = spc_run(tmp.path(), 10);
    let pre_dir = tmp.path().join("pre");
    run(&cfg(
        &pre_dir,
        "pre",
        10,
        &[format!("init.spc=\"{}\"", spc.display())],
    ));
    let ft = cfg(
        &tmp.path().join("ft"),
        "decoder-ft",
        60,
        &[
            format!("init.spc=\"{}\"", spc.display()),
            format!("init.pre=\"{}\"", pre_dir.display()),
            "optim.lr=1e-3".into(),
        ],
    );
    let r = run(&ft);
    let (first, last) = (mean(&r, 0..5), mean(&r, 50..60));
    assert!(last < 0.85 * first, "decoder-ft loss {first} -> {last}");
    let j = cfg(
        &tmp.path().join("joint"),
        "joint",
        30,
        &[format!("init.spc=\"{}\"", spc.display())],
    );
    let r = run(&j);
    let (first, last) = (mean(&r, 0..3), mean(&r, 25..30));
    assert!(last < 0.7 * first, "joint loss {first} -> {last}");
}

#[test]
fn lr_zero_moves_no_trainable_parameter_in_any_stage() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let spc = spc_run(tmp.path(), 3);
    let pre_dir = tmp.path().join("pre");
    run(&cfg(
        &pre_dir,
        "pre",
        3,
        &[format!("init.spc=\"{}\"", spc.display())],
    ));
    let init = [
        format!("init.spc=\"{}\"", spc.display()),
        format!("init.pre=\"{}\"", pre_dir.display()),
        "optim.lr=0.0".to_string(),
    ];
    let gan = ["disc.enabled=true", "disc.ndf=8", "disc.lr=0.0"];
    for stage in ["spc", "pre", "decoder-ft", "joint"] {
        let mut sets = init.to_vec();
        if stage != "spc" {
            // pixel stages: the discriminator (its own lr) must not move either
            sets.extend(gan.iter().map(|s| s.to_string()));
        }
        let c = cfg(&tmp.path().join(format!("z-{stage}")), stage, 3, &sets);
        let mut task = build_task(&c).unwrap();
        let all = |t: &dyn semhitok_train::trainer::Task| -> Vec<(String, Vec<u32>)> {
            t.params()
                .iter()
                .chain(t.disc_params().iter())
                .map(|p| (p.name.clone(), f32_bits(&p.var)))
                .collect()
        };
        let before = all(task.as_ref());
        assert!(!before.is_empty(), "{stage}: no trainable parameters");
        if stage != "spc" {
            assert!(!task.disc_params().is_empty(), "{stage}: no discriminator");
        }
        let mut data = build_batches(&c).unwrap();
        let r = train(&c.loop_config(), task.as_mut(), data.as_mut(), &quiet()).unwrap();
        assert!(r.losses.iter().all(|(_, l)| l.is_finite()));
        assert_eq!(
            before,
            all(task.as_ref()),
            "{stage}: a parameter moved at lr = 0"
        );
    }
}

/// Stop a `pre` run at step 6 (checkpoint at 4), resume it, and compare every loss with the
/// uninterrupted run's, bit for bit. `sets` adds config overrides (e.g. the GAN).
fn pre_resume_is_bit_exact_with(sets: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let spc = spc_run(tmp.path(), 5);
    let mut init = vec![format!("init.spc=\"{}\"", spc.display())];
    init.extend(sets.iter().map(|s| s.to_string()));
    let a = cfg(&tmp.path().join("a"), "pre", 8, &init);
    let mut task = build_task(&a).unwrap();
    let mut data = build_batches(&a).unwrap();
    let full = train(&a.loop_config(), task.as_mut(), data.as_mut(), &quiet()).unwrap();
    let mut sets_b = init.clone();
    sets_b.push("schedule.ckpt_every=4".into());
    let c = cfg(&tmp.path().join("b"), "pre", 8, &sets_b);
    let mut task = build_task(&c).unwrap();
    let mut data = build_batches(&c).unwrap();
    train(
        &c.loop_config(),
        task.as_mut(),
        data.as_mut(),
        &TrainOptions {
            stop_after: Some(6),
            ..quiet()
        },
    )
    .unwrap();
    let mut task = build_task(&c).unwrap();
    let mut data = build_batches(&c).unwrap();
    let r = train(
        &c.loop_config(),
        task.as_mut(),
        data.as_mut(),
        &TrainOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(r.start_step, 4);
    assert_eq!(r.losses.len(), 4);
    for ((s1, l1), (s2, l2)) in full.losses[4..].iter().zip(&r.losses) {
        assert_eq!(
            (s1, l1.to_bits()),
            (s2, l2.to_bits()),
            "step {s1}: {l1} vs {l2}"
        );
    }
    // The discriminator losses (logged at steps 5 and 8) agree as well.
    let d = |dir: &Path| -> Vec<Option<u64>> {
        read_metrics(dir)
            .iter()
            .map(|r| r["disc_loss"].as_f64().map(f64::to_bits))
            .collect()
    };
    assert_eq!(d(&tmp.path().join("a")), d(&tmp.path().join("b")));
}

#[test]
fn pre_resume_is_bit_exact() {
    let _g = serial();
    pre_resume_is_bit_exact_with(&[]);
}

/// The GAN's state (PatchGAN weights and BatchNorm buffers, its AdamW moments, the LeCam EMAs)
/// is checkpointed: a resume across the discriminator's start continues exactly.
#[test]
fn pre_resume_with_gan_is_bit_exact() {
    let _g = serial();
    pre_resume_is_bit_exact_with(&GAN);
}

/// A small PatchGAN for 32 px images, switched on at step 2, adaptive weight and LeCam on.
const GAN: [&str; 6] = [
    "disc.enabled=true",
    "disc.start_step=2",
    "disc.ndf=8",
    "disc.adaptive_weight=true",
    "disc.lecam_weight=0.1",
    "disc.lecam_decay=0.9",
];

/// Before `disc.start_step` neither the discriminator nor the generator's adversarial term
/// exists (the PatchGAN keeps its initial weights); from it on both are logged, and the
/// discriminator learns to tell the real images from the reconstructions (its hinge loss falls
/// from ~1, the value of an uninformed critic).
#[test]
fn gan_switches_on_at_start_step_and_discriminator_learns() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let spc = spc_run(tmp.path(), 5);
    let mut sets = vec![
        format!("init.spc=\"{}\"", spc.display()),
        "disc.enabled=true".to_string(),
        "disc.start_step=10".to_string(),
        "disc.ndf=8".to_string(),
        "disc.lr=2e-3".to_string(),
        "disc.weight=0.1".to_string(),
        "schedule.log_every=1".to_string(),
    ];
    let dir = tmp.path().join("gan");
    let c = cfg(&dir, "pre", 40, &sets);
    let fresh: Vec<(String, Vec<u32>)> = build_task(&c)
        .unwrap()
        .disc_params()
        .iter()
        .map(|p| (p.name.clone(), f32_bits(&p.var)))
        .collect();
    assert!(!fresh.is_empty(), "no discriminator parameters");

    // Up to the start step: the PatchGAN is untouched and nothing adversarial is logged.
    sets.push("schedule.ckpt_every=10".into());
    let c = cfg(&dir, "pre", 40, &sets);
    let mut task = build_task(&c).unwrap();
    let mut data = Fixed(
        SyntheticBatches::new(5, 4, 32)
            .next_images(Device::Cpu)
            .unwrap(),
    );
    let opts = TrainOptions {
        stop_after: Some(10),
        ..quiet()
    };
    train(&c.loop_config(), task.as_mut(), &mut data, &opts).unwrap();
    let at_start: Vec<(String, Vec<u32>)> = task
        .disc_params()
        .iter()
        .map(|p| (p.name.clone(), f32_bits(&p.var)))
        .collect();
    assert_eq!(
        fresh, at_start,
        "the discriminator moved before disc.start_step"
    );
    let recs = read_metrics(&dir);
    assert_eq!(recs.len(), 10);
    assert!(recs
        .iter()
        .all(|r| r.get("disc_loss").is_none() && r.get("gan_g").is_none()));

    // From the start step on: both terms logged, and the critic learns.
    let r = train(
        &c.loop_config(),
        task.as_mut(),
        &mut data,
        &TrainOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert!(r.losses.iter().all(|(_, l)| l.is_finite()));
    let recs = read_metrics(&dir);
    let d: Vec<f64> = recs
        .iter()
        .filter_map(|r| r["disc_loss"].as_f64())
        .collect();
    assert_eq!(d.len(), 30, "disc_loss missing from steps 11..40");
    assert!(recs[10..].iter().all(|r| r["gan_g"].as_f64().is_some()));
    let (first, last) = (d[0], d[25..].iter().sum::<f64>() / 5.0);
    assert!((0.8..1.2).contains(&first), "initial hinge D loss {first}");
    assert!(last < 0.7 * first, "discriminator loss {first} -> {last}");
}

#[test]
fn discriminator_in_spc_stage_is_a_config_error() {
    let _g = serial(); // builds a model: uses LibTorch's global generator
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), "spc", 1, &["disc.enabled=true".into()]);
    let e = build_task(&c)
        .err()
        .expect("spc with a discriminator must fail");
    assert!(e.to_string().contains("disc.enabled"), "{e}");
}

/// On CUDA with bf16: training `pre` (GAN on from step 4) with the flat bf16 working copy of the
/// weights gives the losses of plain autocast (same bf16 values by construction; only CUDA's
/// non-deterministic reductions may differ in the last bits), and the checkpoint holds the f32
/// masters. Skipped without a CUDA device (runs in the GPU bundle).
#[test]
fn pre_bf16_weight_copy_matches_autocast_on_cuda() {
    let _g = serial();
    if !tch::Cuda::is_available() {
        eprintln!("pre_bf16_weight_copy_matches_autocast_on_cuda: no CUDA device, skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spc = spc_run(tmp.path(), 5);
    let go = |name: &str, copy: bool| {
        let dir = tmp.path().join(name);
        let c = cfg(
            &dir,
            "pre",
            12,
            &[
                format!("init.spc=\"{}\"", spc.display()),
                "run.device=\"cuda\"".into(),
                "run.precision=\"bf16\"".into(),
                format!("run.bf16_weight_copy={copy}"),
                "disc.enabled=true".into(),
                "disc.start_step=4".into(),
            ],
        );
        (run(&c), dir)
    };
    let (plain, _) = go("plain", false);
    let (copy, dir) = go("copy", true);
    assert_eq!(plain.losses.len(), 12);
    for ((s, a), (_, b)) in plain.losses.iter().zip(&copy.losses) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1e-3),
            "step {s}: autocast {a} vs bf16 copy {b}"
        );
    }
    let ck = dir.join("checkpoints/step-00000012/tensors.safetensors");
    let tensors = tch::Tensor::read_safetensors(&ck).unwrap_or_else(|e| panic!("{ck:?}: {e}"));
    // Every trained matrix went to the checkpoint as its f32 master, not as the bf16 copy.
    let mut n = 0;
    for (k, t) in tensors.iter().filter(|(k, _)| k.starts_with("model.")) {
        assert_ne!(t.kind(), tch::Kind::BFloat16, "{k} saved in bf16");
        n += usize::from(k.ends_with(".weight") && t.dim() >= 2);
    }
    assert!(n > 10, "only {n} weight matrices in {ck:?}");
}

/// Issue 13 item 6: the SPC's k-means initialisation collects vectors over several steps (64
/// per step here, 150 needed); a checkpoint taken in between holds them, so resuming from it
/// initialises the codebook at the same step, from the same vectors, as the uninterrupted run.
#[test]
fn spc_resume_during_multi_step_kmeans_init_is_bit_exact() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let sets = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["model.spc.kmeans_vectors=150".to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = cfg(&tmp.path().join("a"), "spc", 6, &sets(&[]));
    let mut task = build_task(&a).unwrap();
    let mut data = build_batches(&a).unwrap();
    let full = train(&a.loop_config(), task.as_mut(), data.as_mut(), &quiet()).unwrap();
    let b = cfg(
        &tmp.path().join("b"),
        "spc",
        6,
        &sets(&["schedule.ckpt_every=2"]),
    );
    let run_b = |opts: TrainOptions| {
        let mut task = build_task(&b).unwrap();
        let mut data = build_batches(&b).unwrap();
        train(&b.loop_config(), task.as_mut(), data.as_mut(), &opts).unwrap()
    };
    run_b(TrainOptions {
        stop_after: Some(3),
        ..quiet()
    });
    let ck = semhitok_train::checkpoint::load_latest(&tmp.path().join("b"))
        .unwrap()
        .unwrap();
    assert_eq!(ck.state.step, 2);
    assert_eq!(
        ck.tensors["task.spc.kmeans_pending"].size(),
        vec![128, 8],
        "the step-2 checkpoint holds the 2 x 64 vectors collected so far"
    );
    let r = run_b(TrainOptions {
        resume: true,
        ..quiet()
    });
    assert_eq!(r.start_step, 2);
    for ((s1, l1), (s2, l2)) in full.losses[2..].iter().zip(&r.losses) {
        assert_eq!(
            (s1, l1.to_bits()),
            (s2, l2.to_bits()),
            "step {s1}: {l1} vs {l2}"
        );
    }
}

/// Issue 13 item 9: a checkpoint write that fails for lack of space (here a file-size limit,
/// RLIMIT_FSIZE, with SIGXFSZ ignored so the write returns EFBIG as on a full disk) removes its
/// temporary directory; a later resume in place works and removes leftovers of earlier crashes.
#[test]
fn failed_checkpoint_write_leaves_nothing_and_resume_cleans_leftovers() {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let c = cfg(&run, "spc", 4, &["schedule.ckpt_every=2".into()]);
    let file = tmp.path().join("c.toml");
    std::fs::write(&file, toml::to_string(&c).unwrap()).unwrap();
    let train_cmd = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_semhitok"));
        cmd.args(["train", "--quiet", "--config"]).arg(&file);
        cmd
    };
    let mut limited = train_cmd();
    unsafe {
        limited.pre_exec(|| {
            // A checkpoint of this model (weights + AdamW moments) is several hundred KiB;
            // config.toml, run.json and metrics.jsonl stay far below 64 KiB.
            let lim = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: 64 << 10,
            };
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = limited.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the limited run succeeded: {stderr}");
    assert!(stderr.contains("tensors.safetensors"), "{stderr}");
    let entries = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|r| {
                r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let ckdir = run.join("checkpoints");
    assert!(
        entries(&ckdir).is_empty(),
        "left behind: {:?}",
        entries(&ckdir)
    );
    // A crash of an earlier process in the middle of a write leaves a .tmp directory: the
    // resume removes it before writing.
    let junk = ckdir.join(".tmp-step-00000099");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("tensors.safetensors"), vec![0u8; 1000]).unwrap();
    let out = train_cmd().args(["--resume", "auto"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("removed an interrupted checkpoint write"),
        "{stderr}"
    );
    assert_eq!(entries(&ckdir), vec!["step-00000004".to_string()]);
}

/// On CUDA with bf16: `pre` with the trained ViTs' fused autograd nodes, the layer norm
/// with its residual add (`SEMHITOK_FUSED_VIT_NORM`) and the linear layers that write their
/// gradients into `.grad` (`SEMHITOK_FUSED_LINEAR`, with and without the fc1 + GELU node,
/// `SEMHITOK_FUSED_GELU`), alone and together, gives the losses of
/// LibTorch's ops within the drift their fp32 sums in another order allow over 8 steps, and their
/// kernels ran. Skipped without CUDA.
#[test]
fn pre_fused_vit_nodes_match_libtorch_on_cuda() {
    use semhitok_nn::cuda::{linear, linear_gelu, vit_norm};
    let _g = serial();
    if !tch::Cuda::is_available() {
        eprintln!("pre_fused_vit_nodes_match_libtorch_on_cuda: no CUDA device, skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spc = spc_run(tmp.path(), 5);
    let defaults = (
        vit_norm::enabled(),
        linear::enabled(),
        linear_gelu::enabled(),
    );
    let go = |name: &str, norm: bool, lin: bool, gelu: bool| {
        let c = cfg(
            &tmp.path().join(name),
            "pre",
            8,
            &[
                format!("init.spc=\"{}\"", spc.display()),
                "run.device=\"cuda\"".into(),
                "run.precision=\"bf16\"".into(),
            ],
        );
        vit_norm::set_enabled(norm);
        linear::set_enabled(lin);
        linear_gelu::set_enabled(gelu);
        let (n0, l0, g0) = (
            vit_norm::launches(),
            linear::direct_writes(),
            linear_gelu::launches(),
        );
        let r = run(&c);
        assert_eq!(
            linear_gelu::launches() > g0,
            lin && gelu,
            "{name}: the GELU backward kernel ran"
        );
        // Back to the defaults.
        vit_norm::set_enabled(defaults.0);
        linear::set_enabled(defaults.1);
        linear_gelu::set_enabled(defaults.2);
        assert_eq!(
            vit_norm::launches() > n0,
            norm,
            "{name}: fused norm kernels ran"
        );
        assert_eq!(
            linear::direct_writes() > l0,
            lin,
            "{name}: fused linear wrote gradients"
        );
        r
    };
    let plain = go("plain", false, false, false);
    assert_eq!(plain.losses.len(), 8);
    for (name, norm, lin, gelu) in [
        ("norm", true, false, false),
        ("linear", false, true, false),
        ("linear_gelu", false, true, true),
        ("all", true, true, true),
    ] {
        let fused = go(name, norm, lin, gelu);
        for ((s, a), (_, b)) in plain.losses.iter().zip(&fused.losses) {
            eprintln!("{name} step {s}: {a} vs {b}");
            assert!(
                (a - b).abs() <= 1e-2 * a.abs().max(1e-3),
                "{name}, step {s}: LibTorch ops {a} vs fused {b}"
            );
        }
    }
}
