//! `semhitok tokenize`: a whole dataset to unified-id shards for LLM training, resumable and
//! splittable across processes. The layout (documented for Python readers in
//! `docs/tokens-format.md`):
//!
//! ```text
//! OUT/meta.json                  format, model, source, label names, grid [h, w], K, m, K*m,
//!                                shard_size, samples
//! OUT/shard-00000.safetensors    `unified` int32 [n, h, w] (row-major grid, unified = k * m + j),
//!                                `labels` int64 [n] (-1: none) when the source has labels
//! OUT/shard-00000.json           keys, captions (null: none) and skipped [(key, reason)] of the shard
//! OUT/complete.json              written once every shard exists: shard list and counts
//! ```
//!
//! Shard `s` holds the source samples `s * shard_size .. (s + 1) * shard_size` in source order,
//! minus the ones that could not be decoded (listed in its JSON, never fatal); for a webdataset
//! (`wds:PATH`) shard `s` is the `s`-th tar of the sorted shard list, its samples in tar order,
//! with the `.txt` (else `.json` `caption`) captions and `.cls` labels. Rank `r` of `W`
//! writes the shards `s` with `s % W == r`, so the files do not depend on the split. A shard is
//! committed by renaming its safetensors into place after its JSON, so a shard whose
//! `.safetensors` exists is complete; a restart skips those and redoes the rest (the work of a
//! killed shard is lost, nothing else), giving files byte-identical to one uninterrupted run.

use crate::atomic::{tmp_path, write_atomic};
use crate::codec::parse_device;
use crate::encode_precision::EncodePrecision;
use crate::error::{Error, Result};
use crate::eval::progress;
use crate::stages::load_tokenizer;
use semhitok_data::{IndexedSource, Item, LoaderConfig, PixelFormat, SkipReason};
use semhitok_nn::pretrained::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Format tag of `meta.json`.
pub const FORMAT: &str = "semhitok-tokens/1";

/// `semhitok tokenize`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenizeArgs {
    /// A model folder (`semhitok export`) or a trained run / checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// `KIND:PATH`: `imagenet:ROOT` (class folders), `fashion-mnist:DIR` (test split) or
    /// `fashion-mnist-train:DIR`, `photos:DIR` (the held-out evaluation crops of a photo folder),
    /// `wds:DIR|FILE.tar` (webdataset shards, e.g. `semhitok data pack`: one token shard per
    /// tar, captions from `.txt` / `.json` `caption`, labels from `.cls`).
    #[arg(long)]
    pub data: String,
    /// Only the first N source samples (indexed sources; not with `wds:`).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Encode precision on CUDA: `fp32` (canonical ids), `bf16-teacher` (the teacher in bf16),
    /// `bf16` (teacher, SPC head and pixel encoder in bf16; the searches stay fp32). The bf16
    /// paths are faster and change a share of the ids (measured in docs/benchmarks/tokenize.md);
    /// the choice is recorded in meta.json, and a resumed job must use the same one. No effect on
    /// the CPU.
    #[arg(long, value_enum, default_value_t = EncodePrecision::Fp32)]
    pub precision: EncodePrecision,
    /// Images per forward.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Source samples per shard.
    #[arg(long, default_value_t = 4096)]
    pub shard_size: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// This process's rank (default: `$RANK`, else 0).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Number of processes (default: `$WORLD_SIZE`, else 1).
    #[arg(long)]
    pub world_size: Option<usize>,
    /// Fault injection for the resume tests: after committing this many shards, write a partial
    /// temporary file of the next one and abort the process.
    #[arg(long, hide = true)]
    pub crash_after_shards: Option<usize>,
}

/// What one `tokenize` call did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TokenizeReport {
    pub shards_total: usize,
    /// Shards this rank wrote now.
    pub shards_written: usize,
    /// Shards of this rank found complete (a resumed run).
    pub shards_present: usize,
    pub images: usize,
    pub skipped: usize,
    pub seconds: f64,
    /// Whether every shard exists (then `complete.json` was written).
    pub complete: bool,
}

/// What `--data` is cut into shards from.
enum Plan {
    /// An indexed source: shard `s` = samples `s * shard_size ..`.
    Indexed(Arc<dyn IndexedSource>),
    /// Webdataset tars: shard `s` = tar `s`.
    Tars(Vec<PathBuf>),
}

impl Plan {
    fn shards(&self, shard_size: usize) -> usize {
        match self {
            Plan::Indexed(src) => src.len().div_ceil(shard_size),
            Plan::Tars(t) => t.len(),
        }
    }
}

/// The samples of one tar, decoded on demand (the input size's ADM center crop).
struct TarSamples {
    raws: Vec<semhitok_data::wds::RawSample>,
    cfg: semhitok_data::WdsConfig,
    size: u32,
}

impl IndexedSource for TarSamples {
    fn len(&self) -> usize {
        self.raws.len()
    }
    fn key(&self, index: usize) -> String {
        self.raws[index].key.clone()
    }
    fn output_size(&self) -> (u32, u32) {
        (self.size, self.size)
    }
    fn get(
        &self,
        index: usize,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> std::result::Result<Item, SkipReason> {
        semhitok_data::wds::decode_sample(&self.raws[index], &self.cfg, rng)
    }
}

/// Tar `path` as a source; a damaged archive keeps the samples before the damage and returns
/// the reason as an extra skip `(tar name, reason)`.
fn open_tar(path: &Path, size: u32) -> (Arc<dyn IndexedSource>, Option<(String, SkipReason)>) {
    let mut raws = vec![];
    let res = semhitok_data::wds::for_each_sample(path, |r| {
        raws.push(r);
        std::ops::ControlFlow::Continue(())
    });
    let cfg = semhitok_data::WdsConfig {
        transform: semhitok_data::Transform::center_crop(size),
        shuffle_buffer: 0,
        require_caption: false,
        limits: semhitok_data::DecodeLimits::default(),
    };
    let broken = res.err().map(|r| (path.display().to_string(), r));
    (Arc::new(TarSamples { raws, cfg, size }), broken)
}

/// `[data]` source of `tokenize`. The one place that maps a `--data` string to a source of
/// semhitok-data (to be replaced by the unified `[data] kind` of the data crate).
pub fn open_source(spec: &str, tok: &Tokenizer) -> Result<Arc<dyn IndexedSource>> {
    let size = tok.config().preprocessing.image_size as u32;
    let (kind, path) = spec.split_once(':').ok_or_else(|| {
        Error::Input(format!(
            "--data {spec}: expected KIND:PATH (imagenet, fashion-mnist, fashion-mnist-train, photos, wds)"
        ))
    })?;
    let path = PathBuf::from(path);
    let tf = semhitok_data::Transform::center_crop(size);
    Ok(match kind {
        "imagenet" => Arc::new(semhitok_data::ImageFolder::open(
            &path,
            semhitok_data::ImageFolderConfig::eval(size),
        )?),
        "fashion-mnist" | "fashion-mnist-train" => {
            let split = if kind == "fashion-mnist" {
                semhitok_data::Split::Test
            } else {
                semhitok_data::Split::Train
            };
            Arc::new(semhitok_data::FashionMnist::open(&path, split, tf)?)
        }
        "photos" => {
            // The split of the run the model was trained on, when the folder records it.
            let mut cfg = semhitok_data::PhotoCropsConfig::demo(size);
            let d = &tok.config().source["data"];
            if let Some(f) = d["heldout_fraction"].as_f64() {
                cfg.heldout = semhitok_data::Heldout::Fraction(f);
            }
            if let Some(s) = d["max_short_side"].as_u64() {
                cfg.max_short_side = s as u32;
            }
            if let Some(k) = d["eval_crops_per_image"].as_u64() {
                cfg.eval_crops_per_image = k as usize;
            }
            semhitok_data::PhotoCrops::open(&path, cfg)?.eval_source()
        }
        k => {
            return Err(Error::Input(format!(
                "--data {spec}: unknown kind `{k}` (imagenet, fashion-mnist, fashion-mnist-train, photos, wds)"
            )))
        }
    })
}

/// The names of the labels of `--data` (index = label) where the source has fixed ones:
/// Fashion-MNIST's ([`semhitok_data::FASHION_MNIST_CLASSES`]); `None` otherwise.
pub fn label_names(spec: &str) -> Option<Vec<&'static str>> {
    // (webdataset `.cls` labels have no names here.)
    match spec.split_once(':').map(|(k, _)| k) {
        Some("fashion-mnist" | "fashion-mnist-train") => {
            Some(semhitok_data::FASHION_MNIST_CLASSES.to_vec())
        }
        _ => None,
    }
}

/// Samples `start .. start + len` of a source, as a source.
struct Range {
    inner: Arc<dyn IndexedSource>,
    start: usize,
    len: usize,
}

impl IndexedSource for Range {
    fn len(&self) -> usize {
        self.len
    }
    fn key(&self, index: usize) -> String {
        self.inner.key(self.start + index)
    }
    fn output_size(&self) -> (u32, u32) {
        self.inner.output_size()
    }
    fn get(
        &self,
        index: usize,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> std::result::Result<Item, SkipReason> {
        self.inner.get(self.start + index, rng)
    }
}

fn shard_name(s: usize) -> String {
    format!("shard-{s:05}")
}

fn env_usize(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::Input(format!("${name} = `{v}` is not a non-negative integer"))),
        Err(_) => Ok(None),
    }
}

/// Tokenize `a.data` with `a.model` into `a.out` (see the module docs).
pub fn run(a: &TokenizeArgs) -> Result<TokenizeReport> {
    let t0 = std::time::Instant::now();
    let rank = match a.rank {
        Some(r) => r,
        None => env_usize("RANK")?.unwrap_or(0),
    };
    let world = match a.world_size {
        Some(w) => w,
        None => env_usize("WORLD_SIZE")?.unwrap_or(1),
    };
    if world == 0 || rank >= world {
        return Err(Error::Input(format!(
            "--rank {rank} must be < --world-size {world} (>= 1)"
        )));
    }
    if a.shard_size == 0 || a.batch == 0 {
        return Err(Error::Input("--shard-size and --batch must be >= 1".into()));
    }
    let mut tok = load_tokenizer(&a.model, parse_device(&a.device)?)?;
    let precision = a.precision.apply(&mut tok)?;
    let plan = match a.data.split_once(':') {
        Some(("wds", path)) => {
            if a.limit.is_some() {
                return Err(Error::Input(format!(
                    "--limit: not with --data {} (a webdataset is tokenized tar by tar)",
                    a.data
                )));
            }
            Plan::Tars(semhitok_data::wds::list_shards(Path::new(path))?)
        }
        _ => {
            let mut src = open_source(&a.data, &tok)?;
            if let Some(l) = a.limit {
                if l == 0 {
                    return Err(Error::Input("--limit must be >= 1".into()));
                }
                let len = l.min(src.len());
                src = Arc::new(Range {
                    inner: src,
                    start: 0,
                    len,
                });
            }
            Plan::Indexed(src)
        }
    };
    let shards = plan.shards(a.shard_size);
    let (samples, shard_size, tars) = match &plan {
        Plan::Indexed(src) => (
            serde_json::json!(src.len()),
            serde_json::json!(a.shard_size),
            serde_json::Value::Null,
        ),
        Plan::Tars(t) => (
            serde_json::Value::Null,
            serde_json::Value::Null,
            serde_json::json!(t
                .iter()
                .map(|p| p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned())
                .collect::<Vec<_>>()),
        ),
    };
    let c = tok.config();
    let meta = serde_json::json!({
        "format": FORMAT,
        "model": a.model.display().to_string(),
        "model_source": c.source,
        "decode_mode": c.decode_mode,
        "precision": precision,
        "data": a.data,
        "label_names": label_names(&a.data),
        "limit": a.limit,
        "samples": samples,
        "shard_size": shard_size,
        "source_tars": tars,
        "shards": shards,
        "grid": c.grid,
        "semantic_codebook_size": c.vocab.semantic_codebook_size,
        "sub_codebook_size": c.vocab.sub_codebook_size,
        "unified_vocab_size": c.vocab.unified_vocab_size,
        "ids_dtype": "int32",
        "image_size": c.preprocessing.image_size,
        "crop": c.preprocessing.crop,
    });
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let meta_path = a.out.join("meta.json");
    let meta_text = serde_json::to_string_pretty(&meta).unwrap_or_default();
    match std::fs::read_to_string(&meta_path) {
        Ok(old) if old == meta_text => {}
        Ok(old) => {
            let old: serde_json::Value = serde_json::from_str(&old).unwrap_or_default();
            let keys: Vec<&str> = meta
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| old.get(k.as_str()) != Some(*v))
                .map(|(k, _)| k.as_str())
                .collect();
            return Err(Error::Input(format!(
                "{} belongs to another tokenization (different {}): use a new --out",
                meta_path.display(),
                keys.join(", ")
            )));
        }
        Err(_) => write_atomic(&meta_path, meta_text.as_bytes())?,
    }
    let mine: Vec<usize> = (0..shards).filter(|s| s % world == rank).collect();
    // Temporary files of this rank's shards left by a killed run.
    for e in std::fs::read_dir(&a.out).map_err(|e| Error::io(&a.out, e))? {
        let p = e.map_err(|e| Error::io(&a.out, e))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let stale = name.as_deref().and_then(|n| {
            let s: usize = n.strip_prefix(".shard-")?.get(..5)?.parse().ok()?;
            (n.contains(".tmp-") && s % world == rank).then_some(())
        });
        if stale.is_some() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    let todo: Vec<usize> = mine
        .iter()
        .copied()
        .filter(|s| {
            !a.out
                .join(format!("{}.safetensors", shard_name(*s)))
                .is_file()
        })
        .collect();
    let mut report = TokenizeReport {
        shards_total: shards,
        shards_present: mine.len() - todo.len(),
        ..Default::default()
    };
    let todo_samples: usize = match &plan {
        Plan::Indexed(src) => todo
            .iter()
            .map(|s| a.shard_size.min(src.len() - s * a.shard_size))
            .sum(),
        Plan::Tars(_) => 0,
    };
    let bar = progress(todo_samples as u64, "tokenize");
    for (done, &s) in todo.iter().enumerate() {
        if a.crash_after_shards == Some(done) {
            let partial = tmp_path(&a.out.join(format!("{}.safetensors", shard_name(s))));
            let _ = std::fs::write(&partial, b"partial shard of a killed run");
            eprintln!("tokenize: --crash-after-shards {done}: aborting");
            std::process::abort();
        }
        let part = match &plan {
            Plan::Indexed(src) => {
                let start = s * a.shard_size;
                let len = a.shard_size.min(src.len() - start);
                let range: Arc<dyn IndexedSource> = Arc::new(Range {
                    inner: src.clone(),
                    start,
                    len,
                });
                Part {
                    source: range,
                    first_sample: Some(start),
                    broken: None,
                }
            }
            Plan::Tars(t) => {
                let size = tok.config().preprocessing.image_size as u32;
                let (source, broken) = open_tar(&t[s], size);
                bar.inc_length(source.len() as u64);
                Part {
                    source,
                    first_sample: None,
                    broken,
                }
            }
        };
        let (imgs, skipped) = tokenize_shard(&tok, part, s, a, &bar)?;
        report.images += imgs;
        report.skipped += skipped;
        report.shards_written += 1;
    }
    bar.finish_and_clear();
    let all_present = (0..shards).all(|s| {
        a.out
            .join(format!("{}.safetensors", shard_name(s)))
            .is_file()
    });
    if all_present {
        write_complete(&a.out, shards)?;
    }
    report.complete = all_present;
    report.seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "tokenize: rank {rank}/{world}: {} shards written ({} images, {} skipped), {} already present, {:.1} s{}",
        report.shards_written,
        report.images,
        report.skipped,
        report.shards_present,
        report.seconds,
        if all_present { "; all shards complete" } else { "" }
    );
    Ok(report)
}

/// The samples of one output shard.
struct Part {
    source: Arc<dyn IndexedSource>,
    /// Index of its first sample in the source (indexed sources).
    first_sample: Option<usize>,
    /// A tar damaged after its last readable sample: (tar, reason), listed as a skip.
    broken: Option<(String, SkipReason)>,
}

/// Tokenize shard `s`; returns (images, skipped).
fn tokenize_shard(
    tok: &Tokenizer,
    part: Part,
    s: usize,
    a: &TokenizeArgs,
    bar: &indicatif::ProgressBar,
) -> Result<(usize, usize)> {
    let range = part.source;
    let len = range.len();
    let start = part.first_sample;
    let mut lc = LoaderConfig::eval(a.batch);
    lc.workers = a.workers;
    lc.format = PixelFormat::U8;
    let mut loader = semhitok_data::Loader::new(range, lc)?;
    let (mut ids, mut keys, mut labels, mut captions) = (vec![], vec![], vec![], vec![]);
    let mut seen = 0;
    for b in loader.by_ref() {
        let px = b
            .as_u8()
            .ok_or_else(|| Error::Input("loader returned f32 pixels, expected u8".into()))?;
        let shape: Vec<i64> = b.shape.iter().map(|&v| v as i64).collect();
        let x = Tensor::from_slice(px).view(shape.as_slice());
        let enc = tok.encode(&x)?;
        ids.push(enc.unified_ids.to_device(Device::Cpu).to_kind(Kind::Int));
        keys.extend(b.keys.iter().cloned());
        labels.extend(b.labels.iter().copied());
        captions.extend(b.captions.iter().cloned());
        bar.inc(b.len() as u64);
        seen += b.len();
    }
    let mut stats = loader.skip_stats().clone();
    if let Some((tar, r)) = &part.broken {
        stats.examples.push((tar.clone(), r.to_string()));
        stats.skipped += 1;
    }
    bar.inc((len - seen) as u64);
    let [gh, gw] = tok.config().grid;
    let unified = if ids.is_empty() {
        Tensor::zeros([0, gh, gw], (Kind::Int, Device::Cpu))
    } else {
        Tensor::cat(&ids, 0)
    };
    let mut tensors = vec![("unified".to_string(), unified)];
    if labels.iter().any(Option::is_some) {
        let l: Vec<i64> = labels.iter().map(|l| l.unwrap_or(-1)).collect();
        tensors.push(("labels".to_string(), Tensor::from_slice(&l)));
    }
    let has_captions = captions.iter().any(Option::is_some);
    let skipped: Vec<serde_json::Value> = stats
        .examples
        .iter()
        .map(|(k, r)| serde_json::json!({"key": k, "reason": r}))
        .collect();
    let json = serde_json::json!({
        "shard": s,
        "first_sample": start,
        "source_samples": len,
        "count": keys.len(),
        "keys": keys,
        "captions": if has_captions { serde_json::json!(captions) } else { serde_json::Value::Null },
        "skipped": skipped,
        "skipped_count": stats.skipped,
    });
    let base = a.out.join(shard_name(s));
    write_atomic(
        &base.with_extension("json"),
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let st = base.with_extension("safetensors");
    let tmp = tmp_path(&st);
    Tensor::write_safetensors(&tensors, &tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    crate::atomic::rename_into_place(&tmp, &st)?;
    for (k, r) in &stats.examples {
        eprintln!("skipped {k}: {r}");
    }
    Ok((keys.len(), stats.skipped as usize))
}

/// `complete.json`: every shard with its image count (read from the shard JSONs).
fn write_complete(out: &Path, shards: usize) -> Result<()> {
    let mut list = vec![];
    let (mut images, mut skipped) = (0u64, 0u64);
    for s in 0..shards {
        let p = out.join(format!("{}.json", shard_name(s)));
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
        let count = v["count"].as_u64().unwrap_or(0);
        images += count;
        skipped += v["skipped_count"].as_u64().unwrap_or(0);
        list.push(serde_json::json!({"name": shard_name(s), "count": count}));
    }
    let v = serde_json::json!({"shards": list, "images": images, "skipped": skipped});
    write_atomic(
        &out.join("complete.json"),
        serde_json::to_string_pretty(&v)
            .unwrap_or_default()
            .as_bytes(),
    )
}
