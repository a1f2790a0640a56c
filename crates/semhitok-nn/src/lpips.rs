//! LPIPS (Zhang et al. 2018), the perceptual term of the pixel decoder's loss: VGG16 features + the
//! lpips v0.1 linear heads.
//!
//! Mirrors lpips 0.1.4 `lpips/lpips.py` (`LPIPS(net='vgg', version='0.1')`: `ScalingLayer`, five VGG
//! slices ending at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, channel-unit-normalized features,
//! squared differences weighted by `lin{k}.model.1.weight`, spatial mean, sum over layers). The VGG16
//! comes from a torchvision `vgg16` state dict saved as safetensors (`features.N.{weight,bias}`; the
//! classifier is ignored) -- no VGG16 weights ship offline, so the embedded default uses
//! [`crate::perceptual::EffNetPerceptual`] instead. The heads load from
//! `.assets/weights/lpips_vgg.safetensors` (lpips' `weights/v0.1/vgg.pth`). Golden test:
//! `tests/nn/lpips.rs`.

use crate::error::{Error, Result};
use crate::layers::Conv2d;
use crate::weights::{load_strict, LoadOptions};
use std::path::Path;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// The linear heads under the workspace's `.assets/`.
pub const LPIPS_VGG_ASSET: &str = "weights/lpips_vgg.safetensors";

/// torchvision `vgg16().features` conv indices and (cin, cout), grouped into LPIPS's five slices.
const VGG_SLICES: [&[(i64, i64, i64)]; 5] = [
    &[(0, 3, 64), (2, 64, 64)],
    &[(5, 64, 128), (7, 128, 128)],
    &[(10, 128, 256), (12, 256, 256), (14, 256, 256)],
    &[(17, 256, 512), (19, 512, 512), (21, 512, 512)],
    &[(24, 512, 512), (26, 512, 512), (28, 512, 512)],
];

/// Channel widths of the five tapped layers.
pub const VGG_TAP_CHANNELS: [i64; 5] = [64, 128, 256, 512, 512];

/// torchvision VGG16 convolutional trunk up to relu5_3 (names `features.N.*`).
#[derive(Debug)]
pub struct Vgg16Features {
    slices: Vec<Vec<Conv2d>>,
}

impl Vgg16Features {
    /// Create the 13 convs under `vs` (pass the root: names become `features.N.weight`).
    pub fn new(vs: nn::Path<'_>) -> Self {
        let f = &vs / "features";
        let c = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let slices = VGG_SLICES
            .iter()
            .map(|s| {
                s.iter()
                    .map(|&(i, cin, cout)| Conv2d::new(&f / i, cin, cout, 3, c))
                    .collect()
            })
            .collect();
        Self { slices }
    }

    /// x: [B, 3, H, W] (already LPIPS-scaled) -> relu1_2 .. relu5_3, each [B, C_k, H / 2^k, W / 2^k].
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut h = x.shallow_clone();
        let mut out = Vec::with_capacity(5);
        for (k, convs) in self.slices.iter().enumerate() {
            if k > 0 {
                h = h.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
            }
            for c in convs {
                h = c.forward(&h)?.f_relu()?;
            }
            out.push(h.shallow_clone());
        }
        Ok(out)
    }
}

/// lpips `normalize_tensor`: x / (||x||_channels + 1e-10), x: [B, C, H, W].
pub(crate) fn normalize_channels(x: &Tensor) -> Result<Tensor> {
    let n = x
        .f_square()?
        .f_sum_dim_intlist(1, true, x.kind())?
        .f_sqrt()?
        .f_add_scalar(1e-10)?;
    Ok(x.f_div(&n)?)
}

/// LPIPS-VGG v0.1. Frozen: gradients flow to the inputs only.
#[derive(Debug)]
pub struct Lpips {
    _vgg_vs: nn::VarStore,
    _lin_vs: nn::VarStore,
    vgg: Vgg16Features,
    lins: Vec<Tensor>,
    shift: Tensor,
    scale: Tensor,
}

impl Lpips {
    /// `vgg`: torchvision vgg16 state dict as safetensors (`features.N.*` strict, other keys ignored);
    /// `lins`: the v0.1 heads (`lin0.model.1.weight` .. `lin4.model.1.weight`, strict).
    pub fn load(vgg: &Path, lins: &Path, device: Device) -> Result<Self> {
        let mut vgg_vs = nn::VarStore::new(device);
        let net = Vgg16Features::new(vgg_vs.root());
        let opts = LoadOptions {
            strip_prefix: None,
            allow_unexpected: true,
        };
        load_strict(&mut vgg_vs, vgg, &opts)?;
        vgg_vs.freeze();
        let mut lin_vs = nn::VarStore::new(device);
        let root = lin_vs.root();
        let lin_w: Vec<Tensor> = VGG_TAP_CHANNELS
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                (&root / format!("lin{k}") / "model" / "1").ones_no_train("weight", &[1, c, 1, 1])
            })
            .collect();
        load_strict(&mut lin_vs, lins, &LoadOptions::default())?;
        lin_vs.freeze();
        let o = (Kind::Float, device);
        Ok(Self {
            _vgg_vs: vgg_vs,
            _lin_vs: lin_vs,
            vgg: net,
            lins: lin_w,
            shift: Tensor::f_from_slice(&[-0.030f32, -0.088, -0.188])?
                .f_to(o.1)?
                .f_view([1, 3, 1, 1])?,
            scale: Tensor::f_from_slice(&[0.458f32, 0.448, 0.450])?
                .f_to(o.1)?
                .f_view([1, 3, 1, 1])?,
        })
    }

    /// The VGG trunk.
    pub fn vgg(&self) -> &Vgg16Features {
        &self.vgg
    }

    /// images: [B, 3, H, W] in [-1, 1] -> LPIPS-scaled input ((x - shift) / scale).
    pub fn scale_input(&self, images: &Tensor) -> Result<Tensor> {
        Ok(images.f_sub(&self.shift)?.f_div(&self.scale)?)
    }

    /// in0, in1: [B, 3, H, W] in [-1, 1] (H, W >= 16) -> the five per-layer terms, each [B].
    pub fn forward_layers(&self, in0: &Tensor, in1: &Tensor) -> Result<Vec<Tensor>> {
        let ok = |t: &Tensor| matches!(t.size().as_slice(), &[_, 3, h, w] if h >= 16 && w >= 16);
        if !ok(in0) || in0.size() != in1.size() {
            let bad = if ok(in0) { in1 } else { in0 };
            return Err(Error::shape(
                "lpips inputs (in [-1, 1], equal shapes)",
                format!("[B, 3, H, W] with H, W >= 16, both {:?}", in0.size()),
                bad,
            ));
        }
        let f0 = self.vgg.forward(&self.scale_input(in0)?)?;
        let f1 = self.vgg.forward(&self.scale_input(in1)?)?;
        f0.iter()
            .zip(&f1)
            .zip(&self.lins)
            .map(|((a, b), w)| {
                let d = normalize_channels(a)?
                    .f_sub(&normalize_channels(b)?)?
                    .f_square()?;
                let l = d.f_conv2d::<Tensor>(w, None, [1, 1], [0, 0], [1, 1], 1)?;
                Ok(l.f_mean_dim(&[1i64, 2, 3][..], false, Kind::Float)?)
            })
            .collect()
    }

    /// in0, in1: [B, 3, H, W] in [-1, 1] -> LPIPS distance [B].
    pub fn forward(&self, in0: &Tensor, in1: &Tensor) -> Result<Tensor> {
        let layers = self.forward_layers(in0, in1)?;
        Ok(Tensor::f_stack(&layers, 0)?.f_sum_dim_intlist(0, false, Kind::Float)?)
    }
}
