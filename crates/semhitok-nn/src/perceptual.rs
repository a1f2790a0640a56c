//! A perceptual loss on the embedded EfficientNet-Lite0 (real ImageNet weights), the stand-in for
//! VGG-LPIPS when no VGG16 weights are at hand (SemHiTok's decoder loss uses LPIPS; see
//! [`crate::lpips`]). LPIPS-style with uniform weights: at the ends of the stride-2, 4, 8, 16 and 32
//! stages, features are unit-normalized over channels, squared differences are summed over channels
//! and averaged over space, and the five terms are summed. Values are not comparable with LPIPS.

use crate::efficientnet::{
    load_efficientnet, EfficientNetLite, EfficientNetLiteConfig, FoldedEfficientNet,
};
use crate::error::{Error, Result};
use crate::lpips::normalize_channels;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// EfficientNet-Lite0 perceptual distance. Frozen: gradients flow to the inputs only.
#[derive(Debug)]
pub struct EffNetPerceptual {
    net: FoldedEfficientNet,
    taps: Vec<usize>,
}

impl EffNetPerceptual {
    /// Load Lite0 from `path` (`.assets/weights/efficientnet_lite0.safetensors`) on `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let (vs, net) =
            load_efficientnet(&EfficientNetLiteConfig::efficientnet_lite0(), path, device)?;
        let taps = [2, 4, 8, 16, 32]
            .iter()
            .map(|&s| {
                net.last_block_with_stride(s)
                    .ok_or_else(|| Error::Config(format!("efficientnet has no stride-{s} block")))
            })
            .collect::<Result<Vec<_>>>()?;
        // Batch norms folded into the convolutions; channels-last on CPU, where LibTorch's
        // depthwise convolutions (forward and input-gradient) are markedly faster in NHWC.
        let net = net.fold(device == Device::Cpu)?;
        drop(vs);
        Ok(Self { net, taps })
    }

    /// in0, in1: [B, 3, H, W] in [-1, 1] (equal shapes, H, W >= 32) -> distance [B] (>= 0, 0 iff the
    /// normalized features agree).
    pub fn forward(&self, in0: &Tensor, in1: &Tensor) -> Result<Tensor> {
        let ok = |t: &Tensor| matches!(t.size().as_slice(), &[_, 3, h, w] if h >= 32 && w >= 32);
        if !ok(in0) || in0.size() != in1.size() {
            let bad = if ok(in0) { in1 } else { in0 };
            return Err(Error::shape(
                "effnet perceptual inputs (in [-1, 1], equal shapes)",
                format!("[B, 3, H, W] with H, W >= 32, both {:?}", in0.size()),
                bad,
            ));
        }
        let f0 = self
            .net
            .block_outputs(&EfficientNetLite::normalize(in0)?, &self.taps)?;
        let f1 = self
            .net
            .block_outputs(&EfficientNetLite::normalize(in1)?, &self.taps)?;
        let terms = f0
            .iter()
            .zip(&f1)
            .map(|(a, b)| {
                let d = normalize_channels(a)?
                    .f_sub(&normalize_channels(b)?)?
                    .f_square()?;
                Ok(d.f_sum_dim_intlist(1, false, Kind::Float)?.f_mean_dim(
                    &[1i64, 2][..],
                    false,
                    Kind::Float,
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_stack(&terms, 0)?.f_sum_dim_intlist(0, false, Kind::Float)?)
    }

    /// Mean distance over the batch (a scalar loss).
    pub fn loss(&self, in0: &Tensor, in1: &Tensor) -> Result<Tensor> {
        Ok(self.forward(in0, in1)?.f_mean(Kind::Float)?)
    }
}
