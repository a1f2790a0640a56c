//! Answering from spliced embeddings with the KV cache: greedy decoding (LLaVA-1.5's evaluation
//! setting, `temperature = 0`), batched with left padding.
//!
//! The prompt of each row is given as embeddings (text embeddings with the projected image
//! features spliced in, [`super::splice::splice_embeddings`]); rows are left-padded to one
//! length, prefilled once with the padding mask, then decoded one token per step from ids.

use crate::error::{Error, Result};
use crate::llm::{Input, LlamaModel, LogitsAt};
use tch::{Device, Kind, Tensor};

/// Greedy answers for `prompts`: each `[L_i, D]` in the model's kind on its device. Stops a row
/// at any of `eos` (not included) or after `max_new_tokens`. Returns the new ids per row.
pub fn answer_greedy(
    model: &LlamaModel,
    prompts: &[Tensor],
    eos: &[u32],
    max_new_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let _g = tch::no_grad_guard();
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    let d = model.config().hidden_size;
    let mut lmax = 0;
    for (i, p) in prompts.iter().enumerate() {
        let s = p.size();
        if s.len() != 2 || s[1] != d || s[0] < 1 {
            return Err(Error::Shape {
                what: "answer prompt embeddings",
                expected: format!("[L >= 1, {d}] (row {i})"),
                got: s,
            });
        }
        lmax = lmax.max(s[0]);
    }
    let b = prompts.len() as i64;
    let dev = model.device();
    let kind = model.kind();
    let mut rows = vec![];
    let mut mask = vec![0i64; (b * lmax) as usize];
    for (i, p) in prompts.iter().enumerate() {
        let l = p.size()[0];
        let pad = lmax - l;
        let pad_t = Tensor::f_zeros([pad, d], (kind, dev))?;
        rows.push(Tensor::f_cat(
            &[pad_t, p.f_to_kind(kind)?.f_to_device(dev)?],
            0,
        )?);
        for j in pad..lmax {
            mask[(i as i64 * lmax + j) as usize] = 1;
        }
    }
    let x = Tensor::f_stack(&rows, 0)?; // [B, Lmax, D]
    let has_pad = prompts.iter().any(|p| p.size()[0] != lmax);
    let mask = Tensor::from_slice(&mask)
        .f_view([b, lmax])?
        .f_to_device(dev)?;
    let mut cache = model.new_cache(b, lmax + max_new_tokens as i64 + 1)?;
    let mut logits = model.forward(
        Input::Embeds(&x),
        if has_pad { Some(&mask) } else { None },
        &mut cache,
        LogitsAt::Last,
    )?;
    let n = prompts.len();
    let mut out: Vec<Vec<u32>> = vec![vec![]; n];
    let mut done = vec![false; n];
    for step in 0..max_new_tokens {
        let next = logits.f_select(1, 0)?.f_argmax(-1, false)?; // [B]
        let host: Vec<i64> = Vec::<i64>::try_from(next.f_to_device(Device::Cpu)?)?;
        for r in 0..n {
            if done[r] {
                continue;
            }
            let t = host[r] as u32;
            if eos.contains(&t) {
                done[r] = true;
            } else {
                out[r].push(t);
            }
        }
        if done.iter().all(|&x| x) || step + 1 == max_new_tokens {
            break;
        }
        logits = model.forward(
            Input::Ids(&next.f_unsqueeze(1)?.f_to_kind(Kind::Int64)?),
            None,
            &mut cache,
            LogitsAt::Last,
        )?;
    }
    Ok(out)
}
