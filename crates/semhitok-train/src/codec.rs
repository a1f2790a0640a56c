//! `semhitok encode` / `decode`: images -> semantic, pixel and unified ids
//! (`OUT.safetensors` + `OUT.json`), and ids -> PNG.
//!
//! Both go through the inference API ([`Tokenizer`]) on a model folder (`semhitok export`) or a
//! training run, on any device, in batches of `--batch` with a progress bar. Encoding takes each
//! image's ADM center crop at the model's size (semhitok-data decodes the files). Unreadable
//! images do not stop the batch: the good ones are encoded and the bad ones are listed with their
//! reason in `OUT.json` (`failed`) and on stderr.

use crate::error::{Error, Result};
use crate::eval::progress;
use crate::stages::load_tokenizer;
use semhitok_nn::pretrained::Tokenizer;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Ok(Device::Cuda(n)),
            None => Err(Error::Input(format!(
                "--device {s}: expected cpu, cuda or cuda:N"
            ))),
        },
    }
}

/// `semhitok encode`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    /// A model folder (`semhitok export`), or a `pre` / `decoder-ft` / `joint` checkpoint or run dir.
    #[arg(long, alias = "checkpoint")]
    pub model: PathBuf,
    /// Output prefix: writes PREFIX.safetensors and PREFIX.json.
    #[arg(long)]
    pub out: PathBuf,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per forward.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Encode precision on CUDA (see `semhitok tokenize --help`); recorded in PREFIX.json.
    #[arg(long, value_enum, default_value_t = crate::encode_precision::EncodePrecision::Fp32)]
    pub precision: crate::encode_precision::EncodePrecision,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// `semhitok decode`.
#[derive(Debug, Clone, clap::Args)]
pub struct DecodeArgs {
    /// The model folder or checkpoint the ids were encoded with.
    #[arg(long, alias = "checkpoint")]
    pub model: PathBuf,
    /// A `.safetensors` written by `encode` (tensor `unified`, integer [B, h, w]).
    #[arg(long)]
    pub ids: PathBuf,
    /// Output folder for `00000.png`, ...
    #[arg(long)]
    pub out: PathBuf,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per forward.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
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

/// An image file as the model reads it: decoded by semhitok-data, ADM center crop at `size`,
/// `[1, 3, S, S]` f32 in [-1, 1] (the evaluation crop of the trainer).
pub fn load_image(p: &Path, size: u32) -> std::result::Result<Tensor, semhitok_data::SkipReason> {
    let limits = semhitok_data::DecodeLimits::default();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let im = semhitok_data::photos::load_file(p, &limits)
        .and_then(|im| semhitok_data::Transform::center_crop(size).apply(&im, &mut rng))?;
    let mut px = vec![0u8; 3 * (size * size) as usize];
    semhitok_data::transform::write_chw_u8(&im, &mut px);
    // The one u8 -> [-1, 1] rule of the training batches (bit-equal to the data crate's
    // `write_chw_f32`: test `u8_batches_normalise_on_device_as_the_f32_path`).
    crate::stages::u8_batch_tensor(&px, &[1, 3, size as i64, size as i64], Device::Cpu)
        .map_err(|e| semhitok_data::SkipReason::Corrupt(format!("to a tensor: {e}")))
}

/// Encode image files with a model folder or trained checkpoint.
pub fn encode_cmd(a: &EncodeArgs) -> Result<EncodeReport> {
    let mut tok = load_tokenizer(&a.model, parse_device(&a.device)?)?;
    let precision = a.precision.apply(&mut tok)?;
    let size = tok.config().preprocessing.image_size as u32;
    let (mut good, mut names, mut failed) = (vec![], vec![], vec![]);
    for p in &a.images {
        match load_image(p, size) {
            Ok(t) => {
                good.push(t);
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
    let bs = a.batch.max(1);
    let bar = progress(good.len() as u64, "encode");
    let (mut sem, mut pix, mut uni) = (vec![], vec![], vec![]);
    for chunk in good.chunks(bs) {
        let enc = tok.encode(&Tensor::cat(chunk, 0))?;
        sem.push(enc.semantic_ids.to_device(Device::Cpu));
        pix.push(enc.pixel_ids.to_device(Device::Cpu));
        uni.push(enc.unified_ids.to_device(Device::Cpu));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let (sem, pix, uni) = (
        Tensor::cat(&sem, 0),
        Tensor::cat(&pix, 0),
        Tensor::cat(&uni, 0),
    );
    if let Some(parent) = a.out.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    let st = a.out.with_extension("safetensors");
    let tmp = a.out.with_extension("safetensors.tmp");
    Tensor::write_safetensors(
        &[
            ("semantic", sem.to_kind(Kind::Int64)),
            ("pixel", pix.to_kind(Kind::Int64)),
            ("unified", uni.to_kind(Kind::Int64)),
        ],
        &tmp,
    )?;
    std::fs::rename(&tmp, &st).map_err(|e| Error::io(&st, e))?;
    let g = uni.size();
    let v = &tok.config().vocab;
    let report = EncodeReport {
        encoded: names.clone(),
        failed,
        grid: [g[1], g[2]],
        semantic_codebook_size: v.semantic_codebook_size,
        sub_codebook_size: v.sub_codebook_size,
        unified_vocab_size: v.unified_vocab_size,
    };
    let as_vec = |t: &Tensor| -> Vec<i64> { Vec::try_from(t.flatten(0, -1)).unwrap_or_default() };
    let images: Vec<serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({
                "path": n,
                "semantic": as_vec(&sem.get(i as i64)),
                "pixel": as_vec(&pix.get(i as i64)),
                "unified": as_vec(&uni.get(i as i64)),
            })
        })
        .collect();
    let json = serde_json::json!({
        "model": a.model.display().to_string(),
        "decode_mode": tok.config().decode_mode,
        "precision": precision,
        "summary": report,
        "ids_layout": "row-major [h, w]; unified = semantic * m + pixel",
        "images": images,
    });
    let jp = a.out.with_extension("json");
    crate::atomic::write_atomic(
        &jp,
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
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

/// The `unified` tensor of an ids file written by [`encode_cmd`], checked against `tok` (integer
/// dtype, grid, every id in `0..K*m`; errors name the file and the first bad position).
pub fn read_ids(path: &Path, tok: &Tokenizer) -> Result<Tensor> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| Error::Input(format!("{}: not a readable ids file: {e}", path.display())))?;
    let unified = tensors
        .into_iter()
        .find(|(k, _)| k == "unified")
        .map(|(_, t)| t)
        .ok_or_else(|| {
            Error::Input(format!(
                "{}: no tensor `unified` (write it with `semhitok encode`)",
                path.display()
            ))
        })?;
    tok.check_ids(&unified)
        .map_err(|e| Error::Input(format!("{}: tensor `unified`: {e}", path.display())))
}

/// Decode ids written by [`encode_cmd`] into PNG files; returns their paths.
pub fn decode_cmd(a: &DecodeArgs) -> Result<Vec<PathBuf>> {
    let tok = load_tokenizer(&a.model, parse_device(&a.device)?)?;
    let unified = read_ids(&a.ids, &tok)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let n = unified.size()[0];
    let bs = a.batch.max(1) as i64;
    let bar = progress(n as u64, "decode");
    let mut out = vec![];
    let mut start = 0;
    while start < n {
        let len = bs.min(n - start);
        let images = tok.decode(&unified.narrow(0, start, len)).map_err(|e| {
            Error::Input(format!(
                "{}: cannot decode with {}: {e}",
                a.ids.display(),
                a.model.display()
            ))
        })?;
        let images = images.to_device(Device::Cpu);
        for i in 0..len {
            let p = a.out.join(format!("{:05}.png", start + i));
            crate::report::save_png(&images.get(i).clamp(-1.0, 1.0), &p)?;
            out.push(p);
        }
        bar.inc(len as u64);
        start += len;
    }
    bar.finish_and_clear();
    eprintln!("decoded {} image(s) into {}", out.len(), a.out.display());
    Ok(out)
}
