//! Exponential moving average of the trained weights (`optim.ema_decay`).

use super::AdamW;
use std::collections::BTreeMap;
use tch::Tensor;

/// Exponential moving average of a set of weights: `ema = decay * ema + (1 - decay) * w`.
#[derive(Debug)]
pub struct Ema {
    pub decay: f64,
    /// (name, shadow copy, live variable)
    pub entries: Vec<(String, Tensor, Tensor)>,
    /// (flat shadow, flat live) when the shadows are views of one buffer laid out like the
    /// optimizer's flat parameters: one kernel per update.
    flat: Option<(Tensor, Tensor)>,
}

impl Ema {
    /// Shadow copies of `vars` (name, live variable).
    pub fn new(decay: f64, vars: Vec<(String, Tensor)>) -> Self {
        let _g = tch::no_grad_guard();
        let entries = vars
            .into_iter()
            .map(|(n, v)| {
                let shadow = v.detach().copy();
                (n, shadow, v)
            })
            .collect();
        Self {
            decay,
            entries,
            flat: None,
        }
    }

    /// Shadow copies of the optimizer's parameters, in one flat buffer when the optimizer has one.
    pub fn for_optimizer(decay: f64, opt: &AdamW) -> Self {
        let _g = tch::no_grad_guard();
        let named = |shadows: Vec<Tensor>| {
            opt.params()
                .iter()
                .zip(shadows)
                .map(|(p, s)| (p.name.clone(), s, p.var.shallow_clone()))
                .collect()
        };
        if let Some(live) = opt.flat_params() {
            let shadow = live.detach().copy();
            if let Some(views) = opt.views_into(&shadow) {
                return Self {
                    decay,
                    entries: named(views),
                    flat: Some((shadow, live.shallow_clone())),
                };
            }
        }
        Self::new(
            decay,
            opt.params()
                .iter()
                .map(|p| (p.name.clone(), p.var.shallow_clone()))
                .collect(),
        )
    }

    /// Blend the live weights into the shadow copies.
    pub fn update(&mut self) {
        let _g = tch::no_grad_guard();
        if let Some((shadow, live)) = &self.flat {
            let _ = shadow.shallow_clone().lerp_(live, 1.0 - self.decay);
            return;
        }
        for (_, shadow, live) in &mut self.entries {
            let _ = shadow.lerp_(&live.detach(), 1.0 - self.decay);
        }
    }

    /// Exchange the values of the live weights and their shadows (pure copies, so a second
    /// call restores both bit for bit): validation measures the EMA weights between two calls.
    pub fn swap(&mut self) -> Result<(), tch::TchError> {
        let _g = tch::no_grad_guard();
        let pairs: Vec<(Tensor, Tensor)> = match &self.flat {
            Some((shadow, live)) => vec![(shadow.shallow_clone(), live.shallow_clone())],
            None => self
                .entries
                .iter()
                .map(|(_, s, l)| (s.shallow_clone(), l.shallow_clone()))
                .collect(),
        };
        for (mut shadow, mut live) in pairs {
            let tmp = live.detach().copy();
            live.f_copy_(&shadow)?;
            shadow.f_copy_(&tmp)?;
        }
        Ok(())
    }

    /// Named shadow tensors (keys `ema.{name}`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|(n, s, _)| (format!("ema.{n}"), s.shallow_clone()))
            .collect()
    }

    /// Restore shadow tensors saved by [`Ema::state_tensors`].
    pub fn load_state(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        let _g = tch::no_grad_guard();
        for (n, s, _) in &mut self.entries {
            let key = format!("ema.{n}");
            let src = tensors
                .get(&key)
                .ok_or_else(|| format!("missing EMA tensor `{key}`"))?;
            s.copy_(src);
        }
        Ok(())
    }
}
