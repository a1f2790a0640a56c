//! PatchGAN discriminator and the GAN losses of the pixel decoder's training (SemHiTok Sec. 4.1 follows
//! LlamaGen's VQGAN recipe).
//!
//! [`PatchGan`] mirrors taming-transformers `taming/modules/discriminator/model.py` `NLayerDiscriminator`
//! (also LlamaGen `tokenizer/tokenizer_image/discriminator_patchgan.py`): ndf 64, 3 layers, BatchNorm,
//! LeakyReLU 0.2, weight names `main.N.*`, taming's `weights_init`. The losses mirror taming
//! `vqperceptual.py` (`hinge_d_loss`, `vanilla_d_loss`, `calculate_adaptive_weight`) and LlamaGen's
//! `non_saturating_gen_loss`; [`LeCam`] is the LeCam-GAN regulariser (Tseng et al. 2021) with EMAs
//! of the mean real / fake logits. Golden test: `tests/nn/discriminator.rs`.

use crate::efficientnet::BatchNorm2d;
use crate::error::{Error, Result};
use crate::layers::Conv2d;
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

/// NLayerDiscriminator sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchGanConfig {
    /// Input channels (3).
    pub input_nc: i64,
    /// Width of the first conv (64).
    pub ndf: i64,
    /// Number of stride-2 convs (3).
    pub n_layers: i64,
}

impl PatchGanConfig {
    /// taming / LlamaGen default: 3 channels, ndf 64, 3 layers (2.76 M parameters).
    pub fn taming() -> Self {
        Self {
            input_nc: 3,
            ndf: 64,
            n_layers: 3,
        }
    }

    /// Create the variables under `vs` (`main.N.*`) with taming's init and return the model.
    pub fn init(&self, vs: nn::Path<'_>) -> Result<PatchGan> {
        PatchGan::new(self, vs)
    }
}

#[derive(Debug)]
struct Layer {
    conv: Conv2d,
    bn: Option<BatchNorm2d>,
    act: bool,
}

/// NLayerDiscriminator: images [B, C, H, W] -> patch logits [B, 1, h, w].
#[derive(Debug)]
pub struct PatchGan {
    layers: Vec<Layer>,
    input_nc: i64,
    /// (stride) of each conv, for the minimum-size check.
    strides: Vec<i64>,
}

impl PatchGan {
    fn new(cfg: &PatchGanConfig, vs: nn::Path<'_>) -> Result<Self> {
        if cfg.input_nc < 1 || cfg.ndf < 1 || cfg.n_layers < 1 {
            return Err(Error::Config(format!(
                "patchgan sizes must be positive: {cfg:?}"
            )));
        }
        let main = &vs / "main";
        let w_init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let bn_init = nn::Init::Randn {
            mean: 1.0,
            stdev: 0.02,
        };
        let conv = |i: usize, cin, cout, stride, bias| {
            let c = nn::ConvConfig {
                stride,
                padding: 1,
                bias,
                ws_init: w_init,
                ..Default::default()
            };
            Conv2d::new(&main / i, cin, cout, 4, c)
        };
        // Sequential indices: conv, [bn], lrelu per layer.
        let mut layers = vec![Layer {
            conv: conv(0, cfg.input_nc, cfg.ndf, 2, true),
            bn: None,
            act: true,
        }];
        let (mut idx, mut mult, mut strides) = (2usize, 1i64, vec![2]);
        for n in 1..=cfg.n_layers {
            let prev = mult;
            mult = (1i64 << n.min(3)).min(8);
            let stride = if n < cfg.n_layers { 2 } else { 1 };
            let (cin, cout) = (cfg.ndf * prev, cfg.ndf * mult);
            layers.push(Layer {
                conv: conv(idx, cin, cout, stride, false),
                bn: Some(BatchNorm2d::new(
                    &main / (idx + 1),
                    cout,
                    1e-5,
                    0.1,
                    bn_init,
                )),
                act: true,
            });
            strides.push(stride);
            idx += 3;
        }
        layers.push(Layer {
            conv: conv(idx, cfg.ndf * mult, 1, 1, true),
            bn: None,
            act: false,
        });
        strides.push(1);
        Ok(Self {
            layers,
            input_nc: cfg.input_nc,
            strides,
        })
    }

    /// Output grid for an `h x w` input (k 4, padding 1): stride 2 halves (floor), stride 1 loses one;
    /// `None` when the input is too small for one output patch.
    pub fn out_size(&self, h: i64, w: i64) -> Option<(i64, i64)> {
        self.strides.iter().try_fold((h, w), |(h, w), s| {
            (h >= 2 && w >= 2).then(|| ((h - 2) / s + 1, (w - 2) / s + 1))
        })
    }

    /// xs: [B, C, H, W] -> logits [B, 1, h, w] ([`Self::out_size`]); `train` uses batch statistics in
    /// the batch norms and updates their running statistics (taming trains it that way).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ok = match xs.size().as_slice() {
            &[_, c, h, w] => c == self.input_nc && self.out_size(h, w).is_some(),
            _ => false,
        };
        if !ok {
            return Err(Error::Shape {
                what: "patchgan input".into(),
                expected: format!(
                    "[B, {}, H, W] with H and W large enough for one output patch (>= {})",
                    self.input_nc,
                    self.min_size()
                ),
                got: xs.size(),
            });
        }
        // On the CPU the convolutions run faster channels-last (the weights follow the input's
        // layout); the output is [B, 1, H', W'] either way.
        let mut h = if xs.device() == tch::Device::Cpu {
            crate::device::to_channels_last(xs)?
        } else {
            xs.shallow_clone()
        };
        for l in &self.layers {
            h = l.conv.forward(&h)?;
            if let Some(bn) = &l.bn {
                h = bn.forward_t(&h, train)?;
            }
            if l.act {
                h = leaky_relu_02(&h)?;
            }
        }
        Ok(h)
    }

    fn min_size(&self) -> i64 {
        (1..4096)
            .find(|&s| self.out_size(s, s).is_some())
            .unwrap_or(4096)
    }
}

/// Leaky ReLU with slope 0.2 (taming's `nn.LeakyReLU(0.2, True)`).
fn leaky_relu_02(xs: &Tensor) -> Result<Tensor> {
    Ok(xs.f_maximum(&xs.f_mul_scalar(0.2)?)?)
}

/// The adversarial loss family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GanLoss {
    /// D: mean(relu(1 - real)) / 2 + mean(relu(1 + fake)) / 2; G: -mean(fake).
    Hinge,
    /// D: softplus (taming's "vanilla"); G: BCE(fake, 1) = mean(softplus(-fake)) (LlamaGen).
    #[serde(alias = "vanilla")]
    NonSaturating,
}

impl GanLoss {
    /// Discriminator loss from real / fake logits (any shape) -> scalar.
    pub fn d_loss(self, real: &Tensor, fake: &Tensor) -> Result<Tensor> {
        let (r, f) = match self {
            GanLoss::Hinge => (
                real.f_neg()?.f_add_scalar(1.0)?.f_relu()?,
                fake.f_add_scalar(1.0)?.f_relu()?,
            ),
            GanLoss::NonSaturating => (real.f_neg()?.f_softplus()?, fake.f_softplus()?),
        };
        Ok(r.f_mean(Kind::Float)?
            .f_add(&f.f_mean(Kind::Float)?)?
            .f_mul_scalar(0.5)?)
    }

    /// Generator loss from the fake logits -> scalar.
    pub fn g_loss(self, fake: &Tensor) -> Result<Tensor> {
        Ok(match self {
            GanLoss::Hinge => fake.f_mean(Kind::Float)?.f_neg()?,
            GanLoss::NonSaturating => fake.f_neg()?.f_softplus()?.f_mean(Kind::Float)?,
        })
    }
}

/// taming's `calculate_adaptive_weight`: ||d nll / d W|| / (||d g / d W|| + 1e-4), clamped to
/// [0, 1e4] and detached, where W is the decoder's last-layer weight (`last_layer`, requires grad).
/// Both losses' graphs are kept, so the caller can still backpropagate them. Multiply the result by the
/// configured discriminator weight.
pub fn adaptive_weight(nll_loss: &Tensor, g_loss: &Tensor, last_layer: &Tensor) -> Result<Tensor> {
    if !last_layer.requires_grad() {
        return Err(Error::Config(
            "adaptive_weight: the decoder's last-layer weight must require grad".into(),
        ));
    }
    let gn = Tensor::f_run_backward(&[nll_loss], &[last_layer], true, false)?;
    let gg = Tensor::f_run_backward(&[g_loss], &[last_layer], true, false)?;
    let norm = |t: &Tensor| t.f_square()?.f_sum(Kind::Float)?.f_sqrt();
    let w = norm(&gn[0])?.f_div(&norm(&gg[0])?.f_add_scalar(1e-4)?)?;
    Ok(w.f_clamp(0.0, 1e4)?.f_detach()?)
}

/// LeCam regulariser: EMAs of the mean real and fake logits (`decay`, e.g. 0.999) and
/// `mean(relu(real - ema_fake)^2) + mean(relu(ema_real - fake)^2)`, added to the discriminator loss
/// with a weight (e.g. 0.001).
#[derive(Debug, Clone, PartialEq)]
pub struct LeCam {
    pub decay: f64,
    /// `None` until the first update (the first update sets the EMA to the batch mean).
    pub ema_real: Option<f64>,
    pub ema_fake: Option<f64>,
}

impl LeCam {
    /// A fresh regulariser.
    pub fn new(decay: f64) -> Self {
        Self {
            decay,
            ema_real: None,
            ema_fake: None,
        }
    }

    /// Fold this step's mean logits into the EMAs (values are detached).
    pub fn update(&mut self, real: &Tensor, fake: &Tensor) -> Result<()> {
        let m = |t: &Tensor| -> Result<f64> {
            Ok(t.f_detach()?.f_mean(Kind::Float)?.f_double_value(&[])?)
        };
        let (r, f) = (m(real)?, m(fake)?);
        let d = self.decay;
        self.ema_real = Some(self.ema_real.map_or(r, |e| d * e + (1.0 - d) * r));
        self.ema_fake = Some(self.ema_fake.map_or(f, |e| d * e + (1.0 - d) * f));
        Ok(())
    }

    /// The regulariser for this step's logits -> scalar (0 before the first update).
    pub fn loss(&self, real: &Tensor, fake: &Tensor) -> Result<Tensor> {
        match (self.ema_real, self.ema_fake) {
            (Some(er), Some(ef)) => {
                let a = real
                    .f_sub_scalar(ef)?
                    .f_relu()?
                    .f_square()?
                    .f_mean(Kind::Float)?;
                let b = fake
                    .f_neg()?
                    .f_add_scalar(er)?
                    .f_relu()?
                    .f_square()?
                    .f_mean(Kind::Float)?;
                Ok(a.f_add(&b)?)
            }
            _ => Ok(Tensor::f_zeros([], (Kind::Float, real.device()))?),
        }
    }
}
