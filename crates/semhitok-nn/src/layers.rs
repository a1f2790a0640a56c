//! The layers the networks of this crate share (ViT and SPC transformers, SigLIP, LPIPS'
//! VGG16, the PatchGAN, EfficientNet-Lite), with fallible forwards.
//!
//! tch's `nn::Linear`, `nn::LayerNorm` and `nn::Conv2D` implement `Module::forward`, which panics
//! on a shape or device error; every forward of this crate returns `Result`, so the layers here
//! wrap the same VarStore variables (created as tch's own constructors create them: the names
//! `weight` / `bias` under the caller's path, the same initialisers drawn in the same order) and
//! run the `f_*` operations instead. Each variable is created under its [`Role`] (a matrix or
//! kernel, its bias, or a norm's plain f32 affine), which the trainer's optimizer reads. Shared helpers for multi-head attention (the q/k/v split, SDPA) live
//! here too, so the transformers of this crate compute attention one way.

use crate::error::{Error, Result};
use crate::role::Role;
use tch::nn;
use tch::Tensor;

/// How a [`Linear`]'s weight is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinearInit {
    /// N(0, 0.02) weight, zero bias: timm's ViT init (`trunc_normal_(std=.02)` without the
    /// truncation), used by the ViT pixel encoder/decoder and the SPC head and decoder.
    Vit,
    /// tch's default (`nn::LinearConfig::default()`: Kaiming-uniform weight, uniform bias), for
    /// networks whose weights are always loaded (SigLIP, EfficientNet's classifier).
    Default,
}

/// `y = x W^T + b` over the VarStore variables `weight [out, in]` and `bias [out]`.
#[derive(Debug)]
pub struct Linear {
    /// weight [out, in]
    pub ws: Tensor,
    /// bias [out]
    pub bs: Option<Tensor>,
}

impl Linear {
    /// `weight` ([`Role::Matrix`]) and, if `bias`, `bias` ([`Role::MatrixBias`]) under `p`;
    /// initialised as `nn::linear` with `init` would (bias drawn first).
    pub fn new(p: nn::Path<'_>, inp: i64, out: i64, bias: bool, init: LinearInit) -> Self {
        let cfg = match init {
            LinearInit::Vit => nn::LinearConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                bs_init: Some(nn::Init::Const(0.0)),
                bias,
            },
            LinearInit::Default => nn::LinearConfig {
                bias,
                ..Default::default()
            },
        };
        let bs = cfg.bias.then(|| {
            let bound = 1.0 / (inp as f64).sqrt();
            let init = cfg.bs_init.unwrap_or(nn::Init::Uniform {
                lo: -bound,
                up: bound,
            });
            Role::MatrixBias.on(&p).var("bias", &[out], init)
        });
        let ws = Role::Matrix.on(&p).var("weight", &[out, inp], cfg.ws_init);
        Self { ws, bs }
    }

    /// [.., in] -> [.., out]. Unless `SEMHITOK_FUSED_LINEAR=0`, a trained layer on its bf16
    /// working copy under CUDA autocast goes through [`crate::cuda::linear`] (its gradients
    /// written straight into their bf16 buffers); the forward values are the same.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.fused_case(xs) {
            return crate::cuda::linear::linear(xs, &self.ws, self.bs.as_ref());
        }
        Ok(xs.f_linear(&self.ws, self.bs.as_ref())?)
    }

    /// `gelu(self.forward(xs))` with the exact (erf) GELU. In [`Self::forward`]'s fused case and
    /// with a bias, when `SEMHITOK_FUSED_GELU=1` (off by default), one node
    /// ([`crate::cuda::linear_gelu`]: the GELU backward and the bias gradient in one pass); the
    /// forward values are the same.
    /// [.., in] -> [.., out]
    pub fn forward_gelu(&self, xs: &Tensor) -> Result<Tensor> {
        if let (Some(b), true) = (&self.bs, crate::cuda::linear_gelu::enabled()) {
            if self.fused_case(xs) {
                return crate::cuda::linear_gelu::linear_gelu(xs, &self.ws, b);
            }
        }
        Ok(self.forward(xs)?.f_gelu("none")?)
    }

    /// A trained layer on its bf16 working copy under CUDA autocast, with the linear node on.
    fn fused_case(&self, xs: &Tensor) -> bool {
        let bf16 = |t: &Tensor| t.kind() == tch::Kind::BFloat16;
        crate::cuda::linear::enabled()
            && xs.device().is_cuda()
            && bf16(&self.ws)
            && self.ws.requires_grad()
            && self.bs.as_ref().map_or(true, bf16)
            && matches!(xs.kind(), tch::Kind::BFloat16 | tch::Kind::Float)
            && crate::amp::is_cuda_autocast_enabled()
    }
}

/// Layer norm over the last dimension with affine `weight [D]`, `bias [D]`.
#[derive(Debug)]
pub struct LayerNorm {
    ws: Option<Tensor>,
    bs: Option<Tensor>,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    /// `weight` (ones) and `bias` (zeros) under `p`, [`Role::Plain`] (as `nn::layer_norm`).
    pub fn new(p: nn::Path<'_>, dim: i64, eps: f64) -> Self {
        let cfg = nn::LayerNormConfig {
            eps,
            ..Default::default()
        };
        let p = Role::Plain.on(&p);
        Self {
            ws: Some(p.var("weight", &[dim], cfg.ws_init)),
            bs: Some(p.var("bias", &[dim], cfg.bs_init)),
            dim,
            eps,
        }
    }

    /// [.., D] -> [.., D]
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_layer_norm(
            [self.dim],
            self.ws.as_ref(),
            self.bs.as_ref(),
            self.eps,
            true,
        )?)
    }

    /// [`Self::forward`] for a norm whose output feeds a bf16-autocast GEMM: with
    /// `SEMHITOK_FUSED_VIT_NORM` on (the default), an fp32 input on CUDA under autocast goes through
    /// [`crate::cuda::vit_norm`] (one autograd node, bf16 out: the values autocast's cast at the
    /// GEMM would give); otherwise exactly [`Self::forward`]. [.., D] -> [.., D]
    pub fn forward_for_gemm(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some((w, b)) = self.fused_gemm_case(xs) {
            return crate::cuda::vit_norm::layer_norm_bf16(xs, w, b, self.eps);
        }
        self.forward(xs)
    }

    /// The residual add before the norm and [`Self::forward_for_gemm`]: `(s, normed)` with
    /// `s = x + d`. With `SEMHITOK_FUSED_VIT_NORM` on (the default), an fp32 `x` and a bf16 `d` (a GEMM's output)
    /// on CUDA under autocast go through one autograd node ([`crate::cuda::vit_norm`]: s exactly
    /// LibTorch's add); otherwise LibTorch's add and [`Self::forward`]. x, d: [.., D] -> [.., D]
    pub fn add_forward_for_gemm(&self, x: &Tensor, d: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some((w, b)) = self.fused_gemm_case(x) {
            if d.kind() == tch::Kind::BFloat16 && d.device() == x.device() {
                return crate::cuda::vit_norm::add_layer_norm_bf16(x, d, w, b, self.eps);
            }
        }
        let s = x.f_add(d)?;
        let y = self.forward_for_gemm(&s)?;
        Ok((s, y))
    }

    /// The affine parameters when the fused bf16-out norm applies to `xs`.
    fn fused_gemm_case(&self, xs: &Tensor) -> Option<(&Tensor, &Tensor)> {
        let (w, b) = (self.ws.as_ref()?, self.bs.as_ref()?);
        (crate::cuda::vit_norm::enabled()
            && xs.device().is_cuda()
            && xs.kind() == tch::Kind::Float
            && w.kind() == tch::Kind::Float
            && crate::amp::is_cuda_autocast_enabled())
        .then_some((w, b))
    }

    /// The residual add before this norm and the norm, for frozen (no-gradient) use: `(s, normed)`
    /// with `s = x + d` (`x` without `d`; `None` unless `keep_sum` and `d` is given). On CUDA
    /// with a bf16 stream this is one kernel ([`crate::cuda::layernorm`]: the roundings of
    /// autocast's bf16 add, fp32 norm and bf16 cast, fp32 statistics summed in another order),
    /// else LibTorch's add and [`Self::forward`]. x, d: [.., D] -> [.., D]
    pub fn add_forward(
        &self,
        x: &Tensor,
        d: Option<&Tensor>,
        keep_sum: bool,
    ) -> Result<(Option<Tensor>, Tensor)> {
        if let (Some(w), Some(b)) = (&self.ws, &self.bs) {
            let fused = crate::cuda::layernorm::add_layer_norm(x, d, w, b, self.eps, keep_sum)
                .map_err(|e| Error::Cuda(e.0))?;
            if let Some(out) = fused {
                return Ok(out);
            }
        }
        let s = match d {
            Some(d) => x.f_add(d)?,
            None => x.shallow_clone(),
        };
        let y = self.forward(&s)?;
        Ok(((keep_sum && d.is_some()).then_some(s), y))
    }
}

/// 2-D convolution over the VarStore variables `weight [out, in / groups, k, k]`, `bias [out]`
/// (zero padding).
#[derive(Debug)]
pub struct Conv2d {
    /// weight [out, in / groups, k, k]
    pub ws: Tensor,
    /// bias [out]
    pub bs: Option<Tensor>,
    stride: i64,
    padding: i64,
    groups: i64,
}

impl Conv2d {
    /// `weight` ([`Role::Matrix`]) and, if `cfg.bias`, `bias` ([`Role::MatrixBias`]) under
    /// `p`, initialised as `cfg` says (bias drawn first, as `nn::conv2d`).
    pub fn new(p: nn::Path<'_>, cin: i64, cout: i64, k: i64, cfg: nn::ConvConfig) -> Self {
        let bs = cfg
            .bias
            .then(|| Role::MatrixBias.on(&p).var("bias", &[cout], cfg.bs_init));
        let ws = Role::Matrix
            .on(&p)
            .var("weight", &[cout, cin / cfg.groups, k, k], cfg.ws_init);
        Self {
            ws,
            bs,
            stride: cfg.stride,
            padding: cfg.padding,
            groups: cfg.groups,
        }
    }

    /// Stride of the convolution.
    pub fn stride(&self) -> i64 {
        self.stride
    }

    /// [B, in, H, W] -> [B, out, H', W']
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_conv2d(
            &self.ws,
            self.bs.as_ref(),
            [self.stride],
            [self.padding],
            [1],
            self.groups,
        )?)
    }
}

/// qkv: [B, N, 3 C] (q, k, v stacked along channels, as timm's `qkv` and SigLIP's fused
/// projections) -> [q, k, v], each [B, heads, N, C / heads] (views). By `unbind`, not three
/// selects: its backward is one stack instead of three zero-filled scatters and two adds.
pub fn split_qkv(qkv: &Tensor, heads: i64) -> Result<[Tensor; 3]> {
    let (b, n, c3) = qkv.size3()?;
    // Unbinding dim 2 and transposing each part gives the same strided views as timm's
    // `permute(2, 0, 3, 1, 4).unbind(0)`, but its backward stacks the three gradients along dim 2
    // straight into a contiguous [B, N, 3, heads, hd] = [B, N, 3C] buffer; timm's order stacks
    // them into [3, B, heads, N, hd], whose permutation back needs one more full copy per block.
    let parts: [Tensor; 3] = qkv
        .f_reshape([b, n, 3, heads, c3 / (3 * heads)])?
        .f_unbind(2)? // 3 x [B, N, heads, hd]
        .try_into()
        .map_err(|_| Error::Config("qkv unbind".into()))?;
    let [q, k, v] = parts;
    Ok([
        q.f_transpose(1, 2)?,
        k.f_transpose(1, 2)?,
        v.f_transpose(1, 2)?,
    ])
}

/// [B, N, D] -> [B, heads, N, D / heads]
pub fn split_heads(xs: &Tensor, heads: i64) -> Result<Tensor> {
    let (b, n, d) = xs.size3()?;
    Ok(xs.f_view([b, n, heads, d / heads])?.f_transpose(1, 2)?)
}

/// Bidirectional (non-causal, unmasked) scaled dot-product attention, heads merged back:
/// q, k, v [B, heads, N, hd] -> [B, N, heads * hd].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let o =
        Tensor::f_scaled_dot_product_attention::<Tensor>(q, k, v, None, 0.0, false, None, false)?;
    let (b, h, n, hd) = o.size4()?;
    Ok(o.f_transpose(1, 2)?.f_reshape([b, n, h * hd])?)
}

/// A stride-P, P x P patchify convolution computed as one matmul over flattened patches: the
/// same result as the conv followed by `flatten(2).transpose(1, 2)`, but contiguous (a transposed
/// residual stream makes every later add and layer norm strided) and without cuDNN's slow
/// weight-gradient kernel for this shape on the GPU.
/// images: [B, C, H, W] (H, W multiples of P), weight: [D, C, P, P], bias: [D]
/// -> [B, (H / P) * (W / P), D], patches in row-major order.
pub fn patch_embed_gemm(
    images: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: i64,
) -> Result<Tensor> {
    let (b, c, h, w) = images.size4()?;
    let (gh, gw) = (h / p, w / p);
    let patches = images
        .f_reshape([b, c, gh, p, gw, p])?
        .f_permute([0, 2, 4, 1, 3, 5])? // [B, gh, gw, C, P, P]
        .f_reshape([b, gh * gw, c * p * p])?;
    Ok(patches.f_linear(&weight.f_reshape([weight.size()[0], -1])?, bias)?)
}
