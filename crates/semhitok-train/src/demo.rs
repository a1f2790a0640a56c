//! The embedded-default demo (issue 6 §6): tiny SPC, then SGHC (`pre`) and the semantic-only
//! decoder baseline on photo crops, on CPU; evaluation on held-out photos; report, grids and
//! `runs/demo/metrics.json`. Fails when the semantic ids change in stage 2 or when SGHC does
//! not beat the baseline on both PSNR and rFID.

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::eval::{evaluate, heldout_images, protocol, EvalReport};
use crate::report::{curve_from_metrics, plot_curves_robust};
use crate::rundir::read_metrics;
use crate::rundir::RunStart;
use crate::stages::{load_model, run_stage, Loaded};
use semhitok_nn::fid::FidInception;
use semhitok_nn::model::Part;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// `semhitok demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Folder of the three presets (embedded-spc.toml, embedded-pre.toml, embedded-sem-only.toml).
    #[arg(long, default_value = "configs")]
    pub configs: PathBuf,
    /// Extra `key=value` overrides applied to all three stages (e.g. `schedule.steps=50`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Held-out images evaluated.
    #[arg(long, default_value_t = 256)]
    pub n_eval: usize,
    /// FID Inception TorchScript.
    #[arg(long, default_value = ".assets/weights/fid_inception_v3.pt")]
    pub fid_weights: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Train the two stage-2 models one after the other in this process (default: at the same
    /// time, in two `semhitok train` child processes of 1 LibTorch thread each; on 2 cores that
    /// takes ~20 % less time than two consecutive 2-thread runs, because these small models do not
    /// keep two threads busy).
    #[arg(long)]
    pub sequential: bool,
}

/// The `key=value` overrides of one demo stage: its out dir, `extra`, then the user's `--set`s.
fn stage_sets(a: &DemoArgs, out: &Path, extra: &[String]) -> Vec<String> {
    let mut set = vec![format!("run.out_dir=\"{}\"", out.display())];
    set.extend(extra.iter().cloned());
    set.extend(a.set.iter().cloned());
    set
}

fn stage_cfg(a: &DemoArgs, file: &str, out: &Path, extra: &[String]) -> Result<TrainConfig> {
    TrainConfig::load(&a.configs.join(file), &stage_sets(a, out, extra))
}

fn spc_bits(m: &Loaded) -> Vec<(String, Vec<u32>)> {
    m.model()
        .named_variables(Part::Spc)
        .into_iter()
        .map(|(k, t)| (k, crate::stages::f32_bits(&t)))
        .collect()
}

/// Run the demo; returns the metrics JSON written to `out/metrics.json`. With `launcher` (and
/// without `--sequential`), the two stage-2 runs go to it, each with `run.threads=1`; otherwise
/// they train one after the other in this process.
pub fn run(
    a: &DemoArgs,
    argv: &[String],
    launcher: Option<Stage2Launcher<'_>>,
) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let (spc_dir, pre_dir, sem_dir) = (
        a.out.join("spc"),
        a.out.join("sghc"),
        a.out.join("semantic-only"),
    );
    for d in [&spc_dir, &pre_dir, &sem_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
    }
    let spc_cfg = stage_cfg(a, "embedded-spc.toml", &spc_dir, &[])?;
    if spc_cfg.run.threads > 0 {
        tch::set_num_threads(spc_cfg.run.threads as i32);
    }
    let init = [format!("init.spc=\"{}\"", spc_dir.display())];
    let pre_cfg = stage_cfg(a, "embedded-pre.toml", &pre_dir, &init)?;
    let sem_cfg = stage_cfg(a, "embedded-sem-only.toml", &sem_dir, &init)?;

    eprintln!("[demo] 1/4 stage spc ({} steps)", spc_cfg.schedule.steps);
    let t = Instant::now();
    run_stage(&spc_cfg, RunStart::Fresh, argv.to_vec(), a.quiet)?;
    let t_spc = t.elapsed().as_secs_f64();

    // Semantic ids of the held-out images straight after stage 1.
    let spc_model = load_model(&spc_dir, Device::Cpu, true)?;
    let root = spc_cfg
        .data
        .root
        .clone()
        .ok_or_else(|| Error::Input("embedded-spc.toml has no data.root".into()))?;
    let (images, keys) = heldout_images(&spc_model, &root, a.n_eval)?;
    let ids_before = spc_model.semantic_ids(&images)?;
    let spc_weights = spc_bits(&spc_model);
    drop(spc_model);

    let parallel = launcher.filter(|_| !a.sequential);
    let (t_pre, t_sem) = if let Some(launch) = parallel {
        eprintln!(
            "[demo] 2-3/4 stage pre: SGHC and the semantic-only baseline ({} steps each, in parallel)",
            pre_cfg.schedule.steps
        );
        let jobs = [
            ("sghc", "embedded-pre.toml", &pre_dir, &pre_cfg),
            (
                "semantic-only",
                "embedded-sem-only.toml",
                &sem_dir,
                &sem_cfg,
            ),
        ];
        let extra = [init[0].clone(), "run.threads=1".to_string()];
        let runs: Vec<Stage2Run> = jobs
            .iter()
            .map(|(name, file, dir, cfg)| Stage2Run {
                name: name.to_string(),
                config: a.configs.join(file),
                out_dir: dir.to_path_buf(),
                sets: stage_sets(a, dir, &extra),
                steps: cfg.schedule.steps,
            })
            .collect();
        let secs = launch(&runs, a.quiet)?;
        match secs.as_slice() {
            [p, s] => (*p, *s),
            _ => return Err(Error::Input("stage-2 launcher returned no times".into())),
        }
    } else {
        eprintln!(
            "[demo] 2/4 stage pre: SGHC ({} steps)",
            pre_cfg.schedule.steps
        );
        let t = Instant::now();
        run_stage(&pre_cfg, RunStart::Fresh, argv.to_vec(), a.quiet)?;
        let t_pre = t.elapsed().as_secs_f64();
        eprintln!(
            "[demo] 3/4 stage pre: semantic-only baseline ({} steps)",
            sem_cfg.schedule.steps
        );
        let t = Instant::now();
        run_stage(&sem_cfg, RunStart::Fresh, argv.to_vec(), a.quiet)?;
        (t_pre, t.elapsed().as_secs_f64())
    };

    eprintln!(
        "[demo] 4/4 evaluation on {} held-out images",
        images.size()[0]
    );
    let t = Instant::now();
    let sghc = load_model(&pre_dir, Device::Cpu, false)?;
    let base = load_model(&sem_dir, Device::Cpu, false)?;
    let ids_after = sghc.semantic_ids(&images)?;
    let ids_base = base.semantic_ids(&images)?;
    let ids_same = ids_after.equal(&ids_before) && ids_base.equal(&ids_before);
    let weights_same = spc_bits(&sghc) == spc_weights && spc_bits(&base) == spc_weights;
    let unchanged = ids_same && weights_same;
    let fid = FidInception::load(&a.fid_weights, Device::Cpu)?;
    let proto = protocol(&root, keys.len(), spc_cfg.data.image_size, &keys);
    let report = evaluate(
        &[("sghc", &sghc), ("semantic_only", &base)],
        &images,
        &fid,
        &a.out,
        spc_cfg.eval.grid_images,
        proto,
        None, // LPIPS needs VGG16 weights, which no package ships
        None, // the reference statistics of these images, computed with the models'
    )?;
    let t_eval = t.elapsed().as_secs_f64();

    let (s, b) = (&report.models[0], &report.models[1]);
    let metrics = serde_json::json!({
        "sghc": {"psnr": s.psnr, "rfid": s.rfid, "ssim": s.ssim, "teacher_cosine": s.teacher_cosine, "usage": s.usage},
        "semantic_only": {"psnr": b.psnr, "rfid": b.rfid, "ssim": b.ssim, "teacher_cosine": b.teacher_cosine, "usage": b.usage},
        "semantic_ids_unchanged": unchanged,
        "spc_weights_unchanged": weights_same,
        "n_eval_images": report.n_images,
        "protocol": report.protocol,
        "seconds": {"spc": t_spc, "pre_sghc": t_pre, "pre_semantic_only": t_sem, "eval": t_eval, "total": t0.elapsed().as_secs_f64()},
        "torch_threads": tch::get_num_threads(),
    });
    let mpath = a.out.join("metrics.json");
    std::fs::write(
        &mpath,
        serde_json::to_string_pretty(&metrics).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&mpath, e))?;
    write_report(
        &a.out,
        &report,
        &metrics,
        &[
            ("spc", &spc_dir),
            ("sghc", &pre_dir),
            ("semantic-only", &sem_dir),
        ],
    )?;
    eprintln!(
        "[demo] SGHC psnr {:.2} dB rFID {:.2} | semantic-only psnr {:.2} dB rFID {:.2} | ids unchanged: {unchanged} | {:.0} s",
        s.psnr,
        s.rfid,
        b.psnr,
        b.rfid,
        t0.elapsed().as_secs_f64()
    );
    if !unchanged {
        return Err(Error::Input(format!(
            "stage 2 changed the semantic tokenizer (ids equal: {ids_same}, SPC weights equal: {weights_same}); see {}",
            mpath.display()
        )));
    }
    if !(s.psnr > b.psnr && s.rfid < b.rfid) {
        return Err(Error::Input(format!(
            "SGHC did not beat the semantic-only baseline (psnr {:.3} vs {:.3}, rFID {:.3} vs {:.3}); see {}",
            s.psnr,
            b.psnr,
            s.rfid,
            b.rfid,
            mpath.display()
        )));
    }
    Ok(metrics)
}

/// One of the demo's two stage-2 runs, as a [`Stage2Launcher`] receives it: train
/// `config` with the `sets` overrides (the out dir first) for `steps` steps.
#[derive(Debug, Clone)]
pub struct Stage2Run {
    /// `sghc` or `semantic-only`.
    pub name: String,
    /// The preset file.
    pub config: PathBuf,
    /// Where the run writes (also set through `sets`).
    pub out_dir: PathBuf,
    /// `key=value` overrides, in order.
    pub sets: Vec<String>,
    /// Optimizer steps of the run.
    pub steps: u64,
}

/// Trains the demo's stage-2 runs side by side (the `semhitok` binary runs them as child
/// processes; library crates never spawn any) and returns each run's wall seconds.
pub type Stage2Launcher<'a> = &'a dyn Fn(&[Stage2Run], bool) -> Result<Vec<f64>>;

fn write_report(
    out: &Path,
    r: &EvalReport,
    metrics: &serde_json::Value,
    runs: &[(&str, &PathBuf)],
) -> Result<()> {
    let mut curves_spc = vec![];
    let mut curves_pix = vec![];
    for (name, dir) in runs {
        let recs = read_metrics(dir);
        if *name == "spc" {
            curves_spc.push(curve_from_metrics("spc: 1 - cos + commit", &recs, "loss"));
        } else {
            curves_pix.push(curve_from_metrics(&format!("{name}: L2 rec"), &recs, "rec"));
        }
    }
    let spc_png = out.join("loss_spc.png");
    let pix_png = out.join("loss_pixel.png");
    plot_curves_robust(&curves_spc, "stage 1 (SPC) loss", &spc_png)?;
    plot_curves_robust(&curves_pix, "stage 2 pixel reconstruction loss", &pix_png)?;
    let mut md = String::new();
    md.push_str("# SemHiTok embedded-default demo\n\n");
    md.push_str(
        "Tiny SPC on EfficientNet-Lite0 features, then stage 2 twice from the same frozen SPC: ",
    );
    md.push_str("SGHC (semantic + pixel sub-codebook codes, channel concat) and the semantic-only pixel decoder baseline. ");
    md.push_str(
        "Trained on random crops of the embedded photos, evaluated on the held-out photos.\n\n",
    );
    md.push_str("| model | PSNR (dB) | SSIM | rFID | teacher cos | semantic usage | unified usage |\n|---|---|---|---|---|---|---|\n");
    for m in &r.models {
        md.push_str(&format!(
            "| {} | {:.2} | {:.3} | {:.2} | {:.3} | {:.1}% | {:.1}% |\n",
            m.name,
            m.psnr,
            m.ssim,
            m.rfid,
            m.teacher_cosine,
            100.0 * m.usage["semantic"]["fraction"].as_f64().unwrap_or(0.0),
            100.0 * m.usage["unified"]["fraction"].as_f64().unwrap_or(0.0),
        ));
    }
    md.push_str(&format!(
        "\nSemantic ids unchanged by stage 2 (bit-identical ids on the eval images and SPC weights): **{}**\n\n",
        metrics["semantic_ids_unchanged"]
    ));
    md.push_str(&format!(
        "Evaluation protocol: {}\n\n",
        serde_json::to_string_pretty(&r.protocol["rfid"]).unwrap_or_default()
    ));
    md.push_str(&format!(
        "Reference set: {}, N = {}, crop: {}.\n\n",
        r.protocol["reference_set"], r.n_images, r.protocol["crop"]
    ));
    md.push_str("![grid](grid.png)\n\nColumns: original | SGHC | semantic-only.\n\n");
    md.push_str("![spc loss](loss_spc.png)\n\nStage 1 total loss (log scale).\n\n");
    md.push_str("![pixel loss](loss_pixel.png)\n\nStage 2 L2 reconstruction loss (log scale): blue SGHC, orange semantic-only.\n\n");
    md.push_str(&format!(
        "Wall time (s): {}\n",
        serde_json::to_string(&metrics["seconds"]).unwrap_or_default()
    ));
    let p = out.join("report.md");
    std::fs::write(&p, md).map_err(|e| Error::io(&p, e))
}
