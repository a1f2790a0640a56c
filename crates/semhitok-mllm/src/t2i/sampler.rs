//! Next-visual-token choice on the device, reproducible across devices.
//!
//! The logits are the visual range only ([R, K * m]: the sampler never sees a text or special
//! token, which is what masking the non-visual logits to -inf would give, without computing
//! them). In float64 on the logits' device: temperature, top-k (every logit >= the k-th largest
//! stays, ties included), softmax, top-p (every probability >= the smallest one of the
//! nucleus stays, ties included; the nucleus is the shortest prefix of the descending order
//! whose mass before the last member is < p), then **inverse CDF in id order**: with the
//! cumulative sums `c` of the kept probabilities and a uniform `u` in (0, 1] from the host,
//! the token is `#{i : c_i < u * c_last}`, always a kept token (its probability is > 0).
//! Nothing depends on sort stability or a device RNG, so CPU and CUDA pick the same token for
//! the same logits and uniforms unless a uniform (or p) falls within float64 rounding (~1e-15
//! relative) of a cumulative sum.

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Temperature, top-k and top-p (LlamaGen's defaults: 1, 0 = off, 1 = off).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisualSampling {
    /// Softmax temperature (> 0).
    pub temperature: f64,
    /// Keep the k most likely visual tokens (0 = all).
    pub top_k: i64,
    /// Keep the nucleus of probability p (1.0 = all), in (0, 1].
    pub top_p: f64,
}

impl Default for VisualSampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl VisualSampling {
    /// Errors naming the setting when out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "sampling temperature {} must be finite and > 0",
                self.temperature
            )));
        }
        if self.top_k < 0 {
            return Err(Error::Config(format!(
                "sampling top_k {} must be >= 0",
                self.top_k
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "sampling top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }

    /// logits [R, N] (any float kind) -> the filtered, unnormalised probabilities [R, N] f64
    /// (zero where filtered out), on the logits' device.
    pub fn filtered_probs(&self, logits: &Tensor) -> Result<Tensor> {
        self.validate()?;
        let n = match logits.size().as_slice() {
            &[_, n] if n > 0 => n,
            _ => {
                return Err(Error::Shape {
                    what: "visual logits",
                    expected: "[R, N >= 1]".into(),
                    got: logits.size(),
                })
            }
        };
        let mut l = logits
            .f_to_kind(Kind::Double)?
            .f_div_scalar(self.temperature)?;
        if self.top_k > 0 && self.top_k < n {
            let (vals, _) = l.f_topk(self.top_k, -1, true, false)?;
            let kth = vals.f_narrow(1, self.top_k - 1, 1)?; // [R, 1]
            l = l.f_masked_fill(&l.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
        }
        let mut p = l.f_softmax(-1, Kind::Double)?;
        if self.top_p < 1.0 {
            let (sorted, _) = p.f_sort(-1, true)?; // values only: ties are equal, order-free
            let incl = sorted.f_cumsum(-1, Kind::Double)?;
            let zero = Tensor::f_zeros([sorted.size()[0], 1], (Kind::Double, p.device()))?;
            let before = Tensor::f_cat(&[&zero, &incl.f_narrow(1, 0, n - 1)?], 1)?;
            // Members: sorted positions whose preceding mass is < p (position 0 always).
            let n_keep =
                before
                    .f_lt(self.top_p)?
                    .f_sum_dim_intlist([1i64].as_slice(), true, Kind::Int64)?; // [R, 1], >= 1
            let thr = sorted.f_gather(1, &n_keep.f_sub_scalar(1)?, false)?; // [R, 1]
            p = p.f_where_self(&p.f_ge_tensor(&thr)?, &p.f_zeros_like()?)?;
        }
        Ok(p)
    }

    /// Pick one token per row: logits [R, N], uniforms [R] in (0, 1] (f64, any device) ->
    /// indices [R] int64 in `0..N` on the logits' device (no host sync).
    pub fn pick(&self, logits: &Tensor, uniforms: &Tensor) -> Result<Tensor> {
        let p = self.filtered_probs(logits)?;
        pick_inverse_cdf(&p, uniforms)
    }
}

/// Inverse CDF over unnormalised probabilities p [R, N] (f64, >= 0, row sums > 0) with
/// uniforms [R] in (0, 1]: `#{i : cumsum(p)_i < u * sum(p)}` per row, [R] int64.
pub fn pick_inverse_cdf(p: &Tensor, uniforms: &Tensor) -> Result<Tensor> {
    let (r, n) = (p.size()[0], p.size()[1]);
    if uniforms.size() != [r] {
        return Err(Error::Shape {
            what: "sampling uniforms",
            expected: format!("[{r}]"),
            got: uniforms.size(),
        });
    }
    let cdf = p.f_cumsum(-1, Kind::Double)?;
    let total = cdf.f_narrow(1, n - 1, 1)?; // [R, 1]
    let x = uniforms
        .f_to_device(p.device())?
        .f_to_kind(Kind::Double)?
        .f_unsqueeze(1)?
        .f_mul(&total)?;
    Ok(cdf
        .f_lt_tensor(&x)?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?
        .f_clamp_max(n - 1)?)
}
