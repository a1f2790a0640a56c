//! The validation set of a tokenizer config ([`Validation`], measured by the trainer every
//! `schedule.eval_every` steps): `eval.val_images` held-out images (`[eval.data]`, else the
//! held-out photos of a photos `data.root`) spread evenly over the first `eval.n_images`, with the FID Inception and the
//! originals' statistics (from the reference cache when it holds them).

use crate::config::{Stage, TrainConfig};
use crate::error::Result;
use crate::fid_ref::{reference_stats, FidCache};
use crate::heldout::held_out;
use crate::trainer::Validation;
use semhitok_nn::fid::FidInception;

/// The validation set of `cfg` on this rank (`main`: rank 0 or a single process; the others
/// measure nothing), or `None` with `schedule.eval_every = 0`. A config without a held-out set
/// validates nothing and says so; without the FID Inception weights the set is measured
/// without rFID, said once.
pub fn build_validation(cfg: &TrainConfig, main: bool) -> Result<Option<Validation>> {
    if cfg.schedule.eval_every == 0 || !main {
        return Ok(None);
    }
    let e = &cfg.eval;
    let batch = (cfg.data.batch_size as usize).clamp(1, 64);
    // `val_images` spread over the first `eval.n_images` (at most 8x as many) held-out images.
    let candidates = e.n_images.clamp(e.val_images, 8 * e.val_images);
    let Some(held) = held_out(cfg, None, candidates, batch)? else {
        eprintln!(
            "validation off: {} has no held-out set ([eval.data], or data.kind = \"photos\")",
            cfg.origin().display()
        );
        return Ok(None);
    };
    let held = held.spread(e.val_images)?;
    if held.len() < 2 {
        eprintln!(
            "validation off: the held-out set gave {} image(s), validation needs 2",
            held.len()
        );
        return Ok(None);
    }
    // SPC reconstructs teacher features, not pixels: no rFID to measure.
    let fid = if cfg.run.stage == Stage::Spc {
        None
    } else if e.fid_weights.exists() {
        let net = FidInception::load(&e.fid_weights, cfg.run.device.device())?;
        let cache = FidCache::at(e.fid_cache.as_deref());
        let id = held.identity(&e.fid_weights, net.quant);
        let (r, _) = reference_stats(&net, &held.images, 16, Some((&cache, &id)))?;
        eprintln!(
            "validation: rFID reference statistics of the {} images: {}",
            held.len(),
            r.source
        );
        Some((net, r))
    } else {
        eprintln!(
            "validation: no rFID: the FID Inception {} is missing (`cargo xtask assets`, or set \
             eval.fid_weights)",
            e.fid_weights.display()
        );
        None
    };
    let set = format!("{} ({} images, {})", held.reference, held.len(), held.crop);
    eprintln!(
        "validation every {} steps on {set}",
        cfg.schedule.eval_every
    );
    let n = held.len();
    Ok(Some(Validation::new(
        held.images,
        batch,
        e.grid_images.min(n),
        fid,
        set,
    )?))
}
