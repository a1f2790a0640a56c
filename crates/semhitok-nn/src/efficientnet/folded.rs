//! The folded copy of a frozen EfficientNet-Lite: batch norms folded into the convolutions
//! (channels-last on the CPU), what the teacher and the perceptual loss run.

use crate::device::to_channels_last;
use crate::error::Result;
use crate::layers::Conv2d;
use tch::Tensor;

use super::{check_taps, BatchNorm2d, EfficientNetLite};

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
