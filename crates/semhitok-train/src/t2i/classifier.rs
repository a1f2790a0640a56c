//! The Fashion-MNIST classifier that judges generated images (issue 18 §3): a small CNN in tch,
//! trained here on the embedded train split, its test accuracy reported.
//!
//! Input convention: the image the tokenizers see, i.e. the 28 px image through
//! `Transform::center_crop(size)` (upsampled to `size`, 32 for the Fashion-MNIST tokenizers),
//! made grey again (mean of the RGB channels), in [0, 1]: `[B, 1, size, size]`. Generated
//! images of another size are resized to `size` (bilinear, antialiased) before judging.
//!
//! Network: `conv3x3(1, 32) BN ReLU maxpool2 | conv3x3(32, 64) BN ReLU maxpool2 |
//! conv3x3(64, 64) BN ReLU | flatten | linear(64 (s/4)^2, 128) ReLU dropout(0.3) | linear(128, 10)`.
//! Weights (`--out FILE.safetensors`, VarStore names) are not committed: `semhitok
//! fmnist-classifier` regenerates them; `FILE.json` next to them records size, epochs, seed and
//! the measured test accuracy.

use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use semhitok_data::{FashionMnist, IndexedSource, Split, Transform};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Classes of Fashion-MNIST.
pub const N_CLASSES: i64 = 10;

/// The CNN.
#[derive(Debug)]
pub struct FmnistNet {
    c1: nn::Conv2D,
    b1: nn::BatchNorm,
    c2: nn::Conv2D,
    b2: nn::BatchNorm,
    c3: nn::Conv2D,
    b3: nn::BatchNorm,
    f1: nn::Linear,
    f2: nn::Linear,
    size: i64,
}

impl FmnistNet {
    /// Build under `p` for `size x size` inputs (`size` divisible by 4).
    pub fn new(p: &nn::Path<'_>, size: i64) -> Result<Self> {
        if size < 4 || size % 4 != 0 {
            return Err(Error::Input(format!(
                "classifier input size {size} must be a positive multiple of 4"
            )));
        }
        let conv = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let s4 = size / 4;
        Ok(Self {
            c1: nn::conv2d(p / "c1", 1, 32, 3, conv),
            b1: nn::batch_norm2d(p / "b1", 32, Default::default()),
            c2: nn::conv2d(p / "c2", 32, 64, 3, conv),
            b2: nn::batch_norm2d(p / "b2", 64, Default::default()),
            c3: nn::conv2d(p / "c3", 64, 64, 3, conv),
            b3: nn::batch_norm2d(p / "b3", 64, Default::default()),
            f1: nn::linear(p / "f1", 64 * s4 * s4, 128, Default::default()),
            f2: nn::linear(p / "f2", 128, N_CLASSES, Default::default()),
            size,
        })
    }
    /// Input side length.
    pub fn size(&self) -> i64 {
        self.size
    }
}

impl ModuleT for FmnistNet {
    /// x: [B, 1, size, size] in [0, 1] -> logits [B, 10].
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = x
            .apply(&self.c1)
            .apply_t(&self.b1, train)
            .relu()
            .max_pool2d_default(2);
        let x = x
            .apply(&self.c2)
            .apply_t(&self.b2, train)
            .relu()
            .max_pool2d_default(2);
        let x = x.apply(&self.c3).apply_t(&self.b3, train).relu();
        x.flatten(1, -1)
            .apply(&self.f1)
            .relu()
            .dropout(0.3, train)
            .apply(&self.f2)
    }
}

/// Fashion-MNIST `split` in the classifier's convention: grey u8 [N, 1, size, size] and labels
/// [N] int64 (CPU); the first `limit` images only when `limit > 0`.
pub fn load_split(dir: &Path, split: Split, size: u32, limit: usize) -> Result<(Tensor, Tensor)> {
    let ds = FashionMnist::open(dir, split, Transform::center_crop(size))?;
    let n = if limit > 0 {
        limit.min(ds.len())
    } else {
        ds.len()
    };
    let per = (size * size) as usize;
    let mut px = vec![0u8; n * per];
    let mut rng = ChaCha8Rng::seed_from_u64(0); // the center crop draws nothing
    for i in 0..n {
        let item = ds
            .get(i, &mut rng)
            .map_err(|e| Error::Input(format!("{}: sample {i}: {e:?}", dir.display())))?;
        // Grey replicated to RGB by the source: every channel holds the same value.
        for (o, rgb) in px[i * per..(i + 1) * per]
            .iter_mut()
            .zip(item.image.data.chunks_exact(3))
        {
            *o = ((rgb[0] as u16 + rgb[1] as u16 + rgb[2] as u16 + 1) / 3) as u8;
        }
    }
    let labels: Vec<i64> = ds.labels()[..n].iter().map(|&l| l as i64).collect();
    Ok((
        Tensor::from_slice(&px).view([n as i64, 1, size as i64, size as i64]),
        Tensor::from_slice(&labels),
    ))
}

/// Images u8 [N, C, H, W] (C = 1 or 3) -> the classifier's input [N, 1, size, size] f32 in [0, 1]
/// on `device`.
pub fn to_input(images: &Tensor, size: i64, device: Device) -> Result<Tensor> {
    let s = images.size();
    if s.len() != 4 || !(s[1] == 1 || s[1] == 3) || images.kind() != Kind::Uint8 {
        return Err(Error::Input(format!(
            "classifier images must be u8 [N, 1 or 3, H, W], got {:?} {:?}",
            images.kind(),
            s
        )));
    }
    let x = images
        .f_to_device(device)?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)?
        .f_mean_dim([1i64].as_slice(), true, Kind::Float)?;
    Ok(if s[2] != size || s[3] != size {
        x.f_internal_upsample_bilinear2d_aa([size, size], false, None, None)?
            .f_clamp(0.0, 1.0)?
    } else {
        x
    })
}

/// A trained classifier with its recorded metadata.
#[derive(Debug)]
pub struct FmnistClassifier {
    _vs: nn::VarStore,
    net: FmnistNet,
    device: Device,
    /// What `FILE.json` says.
    pub meta: ClassifierMeta,
}

/// `FILE.json` next to the weights.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClassifierMeta {
    /// Input side length.
    pub size: i64,
    /// Training epochs.
    pub epochs: usize,
    /// Seed of the run.
    pub seed: u64,
    /// Accuracy on the 10,000 test images (same convention), measured after training.
    pub test_accuracy: f64,
    /// Seconds the training took.
    pub train_secs: f64,
}

fn meta_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

impl FmnistClassifier {
    /// Load `weights` (+ `weights.json`) onto `device`.
    pub fn load(weights: &Path, device: Device) -> Result<Self> {
        let mp = meta_path(weights);
        let text = std::fs::read_to_string(&mp).map_err(|e| Error::Io {
            path: mp.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!(
                    "{e} (train it with `semhitok fmnist-classifier --out {}`)",
                    weights.display()
                ),
            ),
        })?;
        let meta: ClassifierMeta = serde_json::from_str(&text)
            .map_err(|e| Error::Input(format!("{}: {e}", mp.display())))?;
        let mut vs = nn::VarStore::new(device);
        let net = FmnistNet::new(&vs.root(), meta.size)?;
        vs.load(weights).map_err(|e| Error::Checkpoint {
            path: weights.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(Self {
            _vs: vs,
            net,
            device,
            meta,
        })
    }

    /// Predicted classes [N] int64 (CPU) of u8 images [N, C, H, W].
    pub fn predict(&self, images: &Tensor) -> Result<Tensor> {
        predict(&self.net, images, self.device)
    }
}

fn predict(net: &FmnistNet, images: &Tensor, device: Device) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let n = images.size()[0];
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let b = (n - i).min(500);
        let x = to_input(&images.f_narrow(0, i, b)?, net.size(), device)?;
        out.push(
            net.forward_t(&x, false)
                .f_argmax(-1, false)?
                .f_to_device(Device::Cpu)?,
        );
        i += b;
    }
    Ok(Tensor::f_cat(&out, 0)?)
}

/// Accuracy of predictions [N] against labels [N].
pub fn accuracy(pred: &Tensor, labels: &Tensor) -> Result<f64> {
    let n = labels.size()[0];
    if pred.size() != [n] || n == 0 {
        return Err(Error::Input(format!(
            "accuracy: {:?} predictions for {:?} labels",
            pred.size(),
            labels.size()
        )));
    }
    Ok(pred
        .f_eq_tensor(&labels.f_to_device(pred.device())?)?
        .f_sum(Kind::Int64)?
        .int64_value(&[]) as f64
        / n as f64)
}

/// `semhitok fmnist-classifier`: train the judge of generated Fashion-MNIST images.
#[derive(Debug, Clone, clap::Args)]
pub struct ClassifierArgs {
    /// The Fashion-MNIST IDX folder.
    #[arg(long, default_value = ".assets/fashion-mnist")]
    pub data: PathBuf,
    /// Weights to write (`.safetensors`; `FILE.json` next to them).
    #[arg(long, default_value = "runs/fmnist/classifier.safetensors")]
    pub out: PathBuf,
    /// Input side length (the tokenizers' input size).
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// Epochs over the 60,000 training images.
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch: i64,
    /// Seed (initialisation and shuffling).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Use only the first this many training images (quick checks; 0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Test on only the first this many test images (quick checks; 0 = all 10,000).
    #[arg(long, default_value_t = 0)]
    pub test_limit: usize,
}

/// Parse `cpu` / `cuda` / `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| Error::Input(format!("--device {s}: expected cpu, cuda or cuda:N"))),
    }
}

/// Train, report the test accuracy, write the weights atomically. Returns the metadata.
pub fn train(a: &ClassifierArgs) -> Result<ClassifierMeta> {
    let device = parse_device(&a.device)?;
    if a.epochs == 0 || a.batch < 1 {
        return Err(Error::Input("--epochs and --batch must be >= 1".into()));
    }
    let t0 = Instant::now();
    let (xs, ys) = load_split(&a.data, Split::Train, a.size, a.limit)?;
    let (xt, yt) = load_split(&a.data, Split::Test, a.size, a.test_limit)?;
    tch::manual_seed(a.seed as i64);
    let vs = nn::VarStore::new(device);
    let net = FmnistNet::new(&vs.root(), a.size as i64)?;
    let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
    let n = xs.size()[0];
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let steps_per_epoch = (n + a.batch - 1) / a.batch;
    let total = steps_per_epoch * a.epochs as i64;
    let mut step = 0i64;
    for epoch in 0..a.epochs {
        let mut order: Vec<i64> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(a.batch as usize) {
            // Cosine learning rate from 1e-3 to 0.
            let lr = 0.5e-3 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            opt.set_lr(lr);
            let idx = Tensor::from_slice(chunk);
            let x = to_input(&xs.f_index_select(0, &idx)?, a.size as i64, device)?;
            let y = ys.f_index_select(0, &idx)?.f_to_device(device)?;
            let loss = net.forward_t(&x, true).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]);
            step += 1;
        }
        let acc = accuracy(&predict(&net, &xt, device)?, &yt)?;
        eprintln!(
            "epoch {}/{}: train loss {:.4}, test accuracy {:.4} ({:.0} s)",
            epoch + 1,
            a.epochs,
            loss_sum / steps_per_epoch as f64,
            acc,
            t0.elapsed().as_secs_f64()
        );
    }
    let test_accuracy = accuracy(&predict(&net, &xt, device)?, &yt)?;
    let meta = ClassifierMeta {
        size: a.size as i64,
        epochs: a.epochs,
        seed: a.seed,
        test_accuracy,
        train_secs: t0.elapsed().as_secs_f64(),
    };
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    // tch picks the format from the extension: keep `.safetensors` on the temporary name.
    let tmp = a.out.with_file_name(format!(
        ".{}.tmp-{}.safetensors",
        a.out
            .file_stem()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    vs.save(&tmp).map_err(|e| Error::Checkpoint {
        path: tmp.clone(),
        msg: e.to_string(),
    })?;
    crate::atomic::rename_into_place(&tmp, &a.out)?;
    let json = serde_json::to_string_pretty(&meta).map_err(|e| Error::Input(e.to_string()))?;
    crate::atomic::write_atomic(&meta_path(&a.out), json.as_bytes())?;
    Ok(meta)
}
