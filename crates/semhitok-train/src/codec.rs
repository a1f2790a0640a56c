//! `semhitok encode` / `decode`: images -> semantic, pixel and unified ids
//! (`OUT.safetensors` + `OUT.json`), and ids -> PNG.
//!
//! Encoding takes each image's ADM center crop at the model's size (semhitok-data decodes the
//! files). Unreadable images do not stop the batch: the good ones are encoded and the bad ones
//! are listed with their reason in `OUT.json` (`failed`) and on stderr.

use crate::error::{Error, Result};
use crate::stages::load_model;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// `semhitok encode`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    /// A `pre` / `decoder-ft` checkpoint or run dir.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output prefix: writes PREFIX.safetensors and PREFIX.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// `semhitok decode`.
#[derive(Debug, Clone, clap::Args)]
pub struct DecodeArgs {
    /// The checkpoint the ids were encoded with.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A `.safetensors` written by `encode` (tensor `unified`, int64 [B, h, w]).
    #[arg(long)]
    pub ids: PathBuf,
    /// Output folder for `00000.png`, ...
    #[arg(long)]
    pub out: PathBuf,
}

/// What `encode` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncodeReport {
    pub encoded: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub grid: [i64; 2],
    pub semantic_codebook_size: i64,
    pub sub_codebook_size: i64,
    pub unified_vocab_size: i64,
}

/// Encode image files with a trained checkpoint.
pub fn encode_cmd(a: &EncodeArgs) -> Result<EncodeReport> {
    let m = load_model(&a.checkpoint, Device::Cpu, false)?;
    if m.stage == "joint" {
        return Err(Error::Input(format!(
            "{}: a `joint` checkpoint has no pixel sub-codebooks; encode needs a `pre` or `decoder-ft` checkpoint",
            m.checkpoint.display()
        )));
    }
    let size = m.cfg.data.image_size as u32;
    let tf = semhitok_data::Transform::center_crop(size);
    let limits = semhitok_data::DecodeLimits::default();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let (mut good, mut names, mut failed) = (vec![], vec![], vec![]);
    for p in &a.images {
        let img =
            semhitok_data::photos::load_file(p, &limits).and_then(|im| tf.apply(&im, &mut rng));
        match img {
            Ok(im) => {
                let mut buf = vec![0f32; 3 * (size * size) as usize];
                semhitok_data::transform::write_chw_f32(&im, &mut buf);
                good.push(Tensor::from_slice(&buf).view([1, 3, size as i64, size as i64]));
                names.push(p.display().to_string());
            }
            Err(reason) => {
                eprintln!("skipped {}: {}", p.display(), reason.as_str());
                failed.push((p.display().to_string(), reason.as_str().to_string()));
            }
        }
    }
    if good.is_empty() {
        return Err(Error::Input(format!(
            "none of the {} images could be read: {failed:?}",
            a.images.len()
        )));
    }
    let x = Tensor::cat(&good, 0);
    let enc = tch::no_grad(|| {
        let feats = m.teacher.features(&x)?;
        m.model.encode(&x, &feats).map_err(Error::from)
    })?;
    if let Some(parent) = a.out.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    let st = a.out.with_extension("safetensors");
    Tensor::write_safetensors(
        &[
            ("semantic", enc.semantic_ids.to_kind(Kind::Int64)),
            ("pixel", enc.pixel_ids.to_kind(Kind::Int64)),
            ("unified", enc.unified_ids.to_kind(Kind::Int64)),
        ],
        &st,
    )?;
    let g = enc.unified_ids.size();
    let sghc = &m.cfg.model.sghc;
    let report = EncodeReport {
        encoded: names.clone(),
        failed,
        grid: [g[1], g[2]],
        semantic_codebook_size: sghc.k_sem,
        sub_codebook_size: sghc.m,
        unified_vocab_size: sghc.vocab_size(),
    };
    let as_vec = |t: &Tensor| -> Vec<i64> { Vec::try_from(t.flatten(0, -1)).unwrap_or_default() };
    let images: Vec<serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({
                "path": n,
                "semantic": as_vec(&enc.semantic_ids.get(i as i64)),
                "pixel": as_vec(&enc.pixel_ids.get(i as i64)),
                "unified": as_vec(&enc.unified_ids.get(i as i64)),
            })
        })
        .collect();
    let json = serde_json::json!({
        "checkpoint": m.checkpoint.display().to_string(),
        "summary": report,
        "ids_layout": "row-major [h, w]; unified = semantic * m + pixel",
        "images": images,
    });
    let jp = a.out.with_extension("json");
    std::fs::write(&jp, serde_json::to_string_pretty(&json).unwrap_or_default())
        .map_err(|e| Error::io(&jp, e))?;
    eprintln!(
        "encoded {} image(s) -> {} and {}{}",
        report.encoded.len(),
        st.display(),
        jp.display(),
        if report.failed.is_empty() {
            String::new()
        } else {
            format!("; {} failed (listed in the JSON)", report.failed.len())
        }
    );
    Ok(report)
}

/// Decode ids written by [`encode_cmd`] into PNG files; returns their paths.
pub fn decode_cmd(a: &DecodeArgs) -> Result<Vec<PathBuf>> {
    let m = load_model(&a.checkpoint, Device::Cpu, false)?;
    let tensors = Tensor::read_safetensors(&a.ids)
        .map_err(|e| Error::Input(format!("{}: not a readable ids file: {e}", a.ids.display())))?;
    let unified = tensors
        .into_iter()
        .find(|(k, _)| k == "unified")
        .map(|(_, t)| t)
        .ok_or_else(|| {
            Error::Input(format!(
                "{}: no tensor `unified` (write it with `semhitok encode`)",
                a.ids.display()
            ))
        })?;
    // Ids are integers: a float tensor would be truncated (5.7 -> 5, NaN -> i64::MIN).
    if !matches!(
        unified.kind(),
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
    ) {
        return Err(Error::Input(format!(
            "{}: tensor `unified` has dtype {:?}; ids must be an integer dtype (int64/int32)",
            a.ids.display(),
            unified.kind()
        )));
    }
    let unified = if unified.dim() == 2 {
        unified.unsqueeze(0)
    } else {
        unified
    };
    let images = m.model.decode(&unified.to_kind(Kind::Int64)).map_err(|e| {
        Error::Input(format!(
            "{}: cannot decode with {}: {e}",
            a.ids.display(),
            m.checkpoint.display()
        ))
    })?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let mut out = vec![];
    for i in 0..images.size()[0] {
        let p = a.out.join(format!("{i:05}.png"));
        crate::report::save_png(&images.get(i).clamp(-1.0, 1.0), &p)?;
        out.push(p);
    }
    eprintln!("decoded {} image(s) into {}", out.len(), a.out.display());
    Ok(out)
}
