//! The adversarial part of the pixel stages (`[disc]`): a PatchGAN with its own variables, the
//! generator term added to the pixel loss and the discriminator loss the trainer's second
//! optimizer minimises.
//!
//! Schedule (LlamaGen / taming `adopt_weight`): before `disc.start_step` neither term exists
//! (the discriminator is not trained and the generator sees no adversarial gradient); from it on
//! both are on. Generator term: `w * g_loss(D(recon))` with `w = disc.weight`, times the VQGAN
//! adaptive weight when `disc.adaptive_weight` (taming `calculate_adaptive_weight` at the pixel
//! decoder's last layer). Discriminator term: `d_loss(D(real), D(recon.detach()))` plus
//! `disc.lecam_weight` x LeCam (IBQ). D runs in train mode in both passes (BatchNorm batch
//! statistics), as taming and LlamaGen do.
//!
//! Everything a resume needs is a tensor in [`Gan::state`]: the PatchGAN's weights and BatchNorm
//! buffers (`disc.main.N.*`) and the LeCam EMAs (`disc.lecam`: `[seen, ema_real, ema_fake]`, f64).

use crate::config::DiscConfig;
use crate::error::Result;
use crate::optim::Param;
use semhitok_nn::discriminator::{adaptive_weight, GanLoss, LeCam, PatchGan, PatchGanConfig};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Checkpoint prefix of the discriminator's tensors inside the task state.
pub const PREFIX: &str = "disc.";

/// PatchGAN + losses + schedule of one pixel stage.
pub struct Gan {
    vs: VarStore,
    net: PatchGan,
    loss: GanLoss,
    weight: f64,
    start_step: u64,
    adaptive: bool,
    lecam_weight: f64,
    lecam_decay: f64,
    /// `[seen (0/1), ema_real, ema_fake]` (f64, CPU): LeCam's EMAs as a checkpointed tensor.
    lecam_state: Tensor,
}

impl std::fmt::Debug for Gan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gan")
            .field("loss", &self.loss)
            .field("weight", &self.weight)
            .field("start_step", &self.start_step)
            .finish()
    }
}

/// The generator side of one micro-batch.
#[derive(Debug)]
pub struct GenTerm {
    /// `w * g_loss` (to add to the total).
    pub loss: Tensor,
    /// `g_loss` alone, detached (logged as `gan_g`).
    pub g_loss: Tensor,
    /// The effective weight `w`, detached (logged as `gan_w`).
    pub weight: Tensor,
}

impl Gan {
    /// A fresh PatchGAN (taming init, seeded by LibTorch's global generator) on `device`;
    /// `None` when `cfg.enabled` is false.
    pub fn new(cfg: &DiscConfig, device: Device) -> Result<Option<Self>> {
        if !cfg.enabled {
            return Ok(None);
        }
        let vs = VarStore::new(device);
        let net = PatchGanConfig {
            input_nc: 3,
            ndf: cfg.ndf,
            n_layers: cfg.n_layers,
        }
        .init(vs.root())?;
        Ok(Some(Self {
            vs,
            net,
            loss: cfg.loss,
            weight: cfg.weight,
            start_step: cfg.start_step,
            adaptive: cfg.adaptive_weight,
            lecam_weight: cfg.lecam_weight,
            lecam_decay: cfg.lecam_decay,
            lecam_state: Tensor::zeros([3], (Kind::Double, Device::Cpu)),
        }))
    }

    /// Whether both adversarial terms are on at optimizer step `step`.
    pub fn active(&self, step: u64) -> bool {
        step >= self.start_step
    }

    /// Trainable discriminator parameters, named `disc.…`, sorted.
    pub fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = semhitok_nn::role::trainable(&self.vs)
            .into_iter()
            .map(|(n, var, role)| Param {
                name: format!("{PREFIX}{n}"),
                var,
                role,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every discriminator tensor (weights, BatchNorm buffers, LeCam EMAs), named `disc.…`.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut m: BTreeMap<String, Tensor> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (format!("{PREFIX}{n}"), t))
            .collect();
        m.insert(format!("{PREFIX}lecam"), self.lecam_state.shallow_clone());
        m
    }

    /// Generator term for reconstructions `recon` `[B, 3, H, W]` (graph kept). `nll` is the
    /// pixel loss the adaptive weight balances against (reconstruction + perceptual), and
    /// `last_layer` the pixel decoder's last weight (requires grad).
    pub fn generator(&self, recon: &Tensor, nll: &Tensor, last_layer: &Tensor) -> Result<GenTerm> {
        let logits = self.net.forward_t(recon, true)?;
        let g = self.loss.g_loss(&logits)?;
        let w = if self.adaptive {
            adaptive_weight(nll, &g, last_layer)?.f_mul_scalar(self.weight)?
        } else {
            Tensor::f_from_slice(&[self.weight as f32])?
                .f_reshape([])?
                .f_to_device(recon.device())?
        };
        Ok(GenTerm {
            loss: g.f_mul(&w)?,
            g_loss: g.f_detach()?,
            weight: w,
        })
    }

    /// Discriminator loss on real images and (detached) reconstructions `[B, 3, H, W]` -> scalar
    /// (LeCam EMAs updated first, as IBQ / LlamaGen do).
    pub fn discriminator(&mut self, real: &Tensor, fake: &Tensor) -> Result<Tensor> {
        let lr = self.net.forward_t(&real.f_detach()?, true)?;
        let lf = self.net.forward_t(&fake.f_detach()?, true)?;
        let mut d = self.loss.d_loss(&lr, &lf)?;
        if self.lecam_weight > 0.0 {
            let mut lecam = self.lecam();
            lecam.update(&lr, &lf)?;
            self.store_lecam(&lecam)?;
            d = d.f_add(&lecam.loss(&lr, &lf)?.f_mul_scalar(self.lecam_weight)?)?;
        }
        Ok(d)
    }

    fn lecam(&self) -> LeCam {
        let v = |i: i64| self.lecam_state.double_value(&[i]);
        let mut l = LeCam::new(self.lecam_decay);
        if v(0) != 0.0 {
            l.ema_real = Some(v(1));
            l.ema_fake = Some(v(2));
        }
        l
    }

    fn store_lecam(&mut self, l: &LeCam) -> Result<()> {
        let (r, f) = (l.ema_real.unwrap_or(0.0), l.ema_fake.unwrap_or(0.0));
        let seen = if l.ema_real.is_some() { 1.0 } else { 0.0 };
        tch::no_grad(|| {
            self.lecam_state
                .f_copy_(&Tensor::f_from_slice(&[seen, r, f])?)
                .map(|_| ())
        })?;
        Ok(())
    }
}
