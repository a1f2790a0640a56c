//! Text-to-image (issue 18 §4): vocabulary layout, sequence and loss mask, caption dropout,
//! guidance, the device sampler (against a host reference, across devices), and the guided
//! KV-cache generation against full recomputation on a tiny random model.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use semhitok_mllm::cfg::{guided_logits, Guidance, TextDropout};
use semhitok_mllm::llm::{Input, LlamaConfig, LlamaModel, Weights};
use semhitok_mllm::t2i::generate::{visual_head, visual_logits};
use semhitok_mllm::t2i::{
    generate_images, generate_visual, right_pad, CachedVisualLm, ImageRequest, T2iLayout,
    T2iSampling, VisualLogits, VisualSampling, IGNORE,
};
use semhitok_mllm::vocab::VisualVocab;
use semhitok_nn::test_device;
use tch::{Device, Kind, Tensor};

type R = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------- vocabulary

#[test]
fn paper_layout_starts_at_the_embedding_rows() {
    // Qwen2.5: 151,936 embedding rows for 151,665 tokens.
    let v = VisualVocab::paper(151_936).unwrap();
    assert_eq!(v.n_visual(), 196_608);
    assert_eq!(v.visual_start(), 151_936);
    assert_eq!(v.token_of(0).unwrap(), 151_936);
    assert_eq!(v.token_of(196_607).unwrap(), 151_936 + 196_607);
    assert_eq!(v.boi(), 151_936 + 196_608);
    assert_eq!(v.eoi(), v.boi() + 1);
    assert_eq!(v.total(), 151_936 + 196_608 + 2);
    assert_eq!(v.n_new(), 196_610);
    assert!(v.token_of(196_608).is_err());
    assert!(v.unified_of(v.boi()).is_err());
    assert!(v.unified_of(v.eoi()).is_err());
    assert!(
        v.unified_of(151_935).is_err(),
        "a padding row is not visual"
    );
    assert_eq!(
        v.token_of_pair(3, 11).unwrap(),
        v.token_of(3 * 12 + 11).unwrap()
    );
    assert!(v.token_of_pair(16384, 0).is_err());
    assert!(v.token_of_pair(0, 12).is_err());
    assert!(VisualVocab::new(u32::MAX - 10, 16384, 12).is_err());
    let cfg = tiny_config(40);
    assert_eq!(
        VisualVocab::for_model(&cfg, 4, 3).unwrap().visual_start(),
        40
    );
}

proptest! {
    #[test]
    fn vocab_round_trip(rows in 1u32..200_000, k in 1u32..20_000, m in 1u32..20, frac in 0.0f64..1.0) {
        let v = VisualVocab::new(rows, k, m).unwrap();
        let u = ((v.n_visual() as f64 - 1.0) * frac) as u32;
        let t = v.token_of(u).unwrap();
        prop_assert!(v.visual_range().contains(&t));
        prop_assert!(t >= rows && t < v.boi());
        prop_assert_eq!(v.unified_of(t).unwrap(), u);
        prop_assert!(v.unified_of(rows - 1).is_err());
    }
}

// ---------------------------------------------------------------- sequence

#[test]
fn sequence_layout_and_loss_mask() {
    let v = VisualVocab::new(100, 4, 3).unwrap(); // visual 100..112, boi 112, eoi 113
    let layout = T2iLayout::new(v, Some(1)).unwrap();
    let e = layout.example(&[5, 6], &[0, 11, 7]).unwrap();
    assert_eq!(e.input_ids, vec![1, 5, 6, 112, 100, 111, 107, 113]);
    let m = IGNORE;
    assert_eq!(e.labels, vec![m, m, m, m, 100, 111, 107, 113]);
    // Only the visual tokens and <eoi> carry loss.
    for (id, l) in e.input_ids.iter().zip(&e.labels) {
        let vis = v.visual_range().contains(&(*id as u32)) || *id == v.eoi() as i64;
        assert_eq!(*l != IGNORE, vis);
    }
    // The unconditional text is the empty caption.
    assert_eq!(layout.uncond_prompt(), vec![1, 112]);
    assert_eq!(
        layout.example(&[], &[2]).unwrap().input_ids,
        vec![1, 112, 102, 113]
    );
    assert_eq!(layout.prompt(&[7]).unwrap(), vec![1, 7, 112]);
    let no_bos = T2iLayout::new(v, None).unwrap();
    assert_eq!(no_bos.uncond_prompt(), vec![112]);
    assert!(layout.example(&[100], &[0]).is_err(), "a visual id as text");
    assert!(layout.example(&[1], &[12]).is_err(), "unified id K*m");
    assert!(T2iLayout::new(v, Some(100)).is_err());

    let short = layout.example(&[], &[3]).unwrap();
    let (ids, labels, mask) = right_pad(&[e.clone(), short], 0).unwrap();
    assert_eq!(ids.size(), [2, 8]);
    let ids1: Vec<i64> = Vec::try_from(ids.get(1)).unwrap();
    let lab1: Vec<i64> = Vec::try_from(labels.get(1)).unwrap();
    let mask1: Vec<bool> = Vec::try_from(mask.get(1)).unwrap();
    assert_eq!(ids1, vec![1, 112, 103, 113, 0, 0, 0, 0]);
    assert_eq!(lab1, vec![m, m, 103, 113, m, m, m, m]);
    assert_eq!(
        mask1,
        vec![true, true, true, true, false, false, false, false]
    );
    assert!(right_pad(&[], 0).is_err());
}

// ---------------------------------------------------------------- dropout and guidance

#[test]
fn caption_dropout_rate_over_many_seeds() {
    // 200 seeds x 2 epochs x 500 samples = 200,000 Bernoulli(0.1) draws: sd = 134; 5 sd.
    let mut dropped = 0u64;
    let mut n = 0u64;
    for seed in 0..200u64 {
        let d = TextDropout::new(0.1, seed).unwrap();
        for epoch in 0..2 {
            for i in 0..500 {
                dropped += d.drops(epoch, i) as u64;
                n += 1;
            }
        }
    }
    let (mean, sd) = (n as f64 * 0.1, (n as f64 * 0.1 * 0.9).sqrt());
    assert!(
        (dropped as f64 - mean).abs() < 5.0 * sd,
        "dropped {dropped} of {n}"
    );
    // Keyed on (seed, epoch, index): order-free and reproducible, epochs differ.
    let d = TextDropout::new(0.1, 7).unwrap();
    let again = TextDropout::new(0.1, 7).unwrap();
    assert!((0..1000).rev().all(|i| d.drops(3, i) == again.drops(3, i)));
    assert!((0..1000).any(|i| d.drops(0, i) != d.drops(1, i)));
    assert_eq!(
        d.apply(0, 0, &[1, 2], &[]).len(),
        if d.drops(0, 0) { 0 } else { 2 }
    );
    assert!(TextDropout::new(1.5, 0).is_err());
    assert!((0..1000).all(|i| !TextDropout::new(0.0, 1).unwrap().drops(0, i)));
}

#[test]
fn guided_logits_and_interval() {
    let c = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let u = Tensor::from_slice(&[0.5f32, 2.5, 0.0]);
    let g = guided_logits(&c, &u, 4.0).unwrap();
    assert_eq!(Vec::<f32>::try_from(g).unwrap(), vec![2.5, 0.5, 12.0]);
    let g1 = guided_logits(&c, &u, 1.0).unwrap();
    assert_eq!(Vec::<f32>::try_from(g1).unwrap(), vec![1.0, 2.0, 3.0]);
    assert!(guided_logits(&c, &Tensor::from_slice(&[1.0f32]), 2.0).is_err());
    let all = Guidance::scale(3.0);
    assert!(all.needs_uncond() && all.guides(0) && all.guides(10_000));
    assert!(!Guidance::scale(1.0).needs_uncond());
    let some = Guidance {
        scale: 3.0,
        interval: Some((2, 4)),
    };
    assert_eq!(
        (0..6).map(|t| some.guides(t)).collect::<Vec<_>>(),
        vec![false, false, true, true, false, false]
    );
    let empty = Guidance {
        scale: 3.0,
        interval: Some((2, 2)),
    };
    assert!(!empty.needs_uncond());
    assert!(Guidance {
        scale: 3.0,
        interval: Some((3, 2))
    }
    .validate()
    .is_err());
    assert!(Guidance::scale(f64::NAN).validate().is_err());
}

// ---------------------------------------------------------------- the device sampler

/// Host reference of the sampler's definition (sequential float64).
fn reference_pick(logits: &[f64], s: &VisualSampling, u: f64) -> usize {
    let n = logits.len();
    let mut l: Vec<f64> = logits.iter().map(|x| x / s.temperature).collect();
    if s.top_k > 0 && (s.top_k as usize) < n {
        let mut sorted = l.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[s.top_k as usize - 1];
        l.iter_mut()
            .filter(|x| **x < kth)
            .for_each(|x| *x = f64::NEG_INFINITY);
    }
    let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| (x - max).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut p: Vec<f64> = e.iter().map(|x| x / z).collect();
    if s.top_p < 1.0 {
        let mut sorted = p.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut before = 0.0;
        let mut keep = 0;
        for &q in &sorted {
            if before < s.top_p {
                keep += 1;
            }
            before += q;
        }
        let thr = sorted[keep - 1];
        p.iter_mut().filter(|q| **q < thr).for_each(|q| *q = 0.0);
    }
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for q in &p {
        acc += q;
        cdf.push(acc);
    }
    let x = u * acc;
    cdf.iter().filter(|&&c| c < x).count().min(n - 1)
}

fn probs_of(logits: &[f64], s: &VisualSampling) -> Vec<f64> {
    let t = Tensor::from_slice(logits).unsqueeze(0);
    Vec::try_from(s.filtered_probs(&t).unwrap().squeeze_dim(0)).unwrap()
}

fn settings() -> impl Strategy<Value = VisualSampling> {
    (
        0.3f64..3.0,
        prop_oneof![Just(0i64), 1i64..12],
        prop_oneof![Just(1.0f64), 0.05f64..1.0],
    )
        .prop_map(|(temperature, top_k, top_p)| VisualSampling {
            temperature,
            top_k,
            top_p,
        })
}

fn logits_strategy() -> impl Strategy<Value = Vec<f64>> {
    // Integers (many ties), continuous values, and -inf entries.
    prop::collection::vec(
        prop_oneof![
            (-4i32..4).prop_map(f64::from),
            -8.0f64..8.0,
            Just(f64::NEG_INFINITY),
        ],
        1..40,
    )
    .prop_filter("one finite logit", |v| v.iter().any(|x| x.is_finite()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// The pick is a kept token of the visual range and equals the host reference.
    #[test]
    fn sampler_picks_a_kept_visual_token(logits in logits_strategy(), s in settings(), u in 1e-9f64..=1.0) {
        let t = Tensor::from_slice(&logits).unsqueeze(0);
        let idx = s.pick(&t, &Tensor::from_slice(&[u])).unwrap().int64_value(&[0]) as usize;
        prop_assert!(idx < logits.len());
        let p = probs_of(&logits, &s);
        prop_assert!(p[idx] > 0.0, "picked a filtered token {idx}: {p:?}");
        prop_assert_eq!(idx, reference_pick(&logits, &s, u));
    }

    /// Through the whole guided generation on a model whose logits are random: every id is a
    /// unified id (no text or special token can come out).
    #[test]
    fn generation_never_returns_a_non_visual_id(seed in 0u64..1000, s in settings(), scale in 0.0f64..6.0) {
        let v = VisualVocab::new(30, 3, 4).unwrap();
        let layout = T2iLayout::new(v, Some(0)).unwrap();
        let mut lm = RandomLogits { n: v.n_visual() as i64, rng: ChaCha8Rng::seed_from_u64(seed), rows: vec![] };
        let reqs = [ImageRequest { caption: vec![3, 4], seed }, ImageRequest { caption: vec![], seed: seed + 1 }];
        let cfg = T2iSampling { sampling: s, guidance: Guidance::scale(scale) };
        let out = generate_visual(&mut lm, &layout, &reqs, 9, &cfg).unwrap();
        prop_assert_eq!(out.len(), 2);
        for row in out {
            prop_assert_eq!(row.len(), 9);
            for u in row {
                prop_assert!(u < v.n_visual());
                prop_assert!(v.visual_range().contains(&v.token_of(u).unwrap()));
            }
        }
    }
}

#[test]
fn top_k_1_is_argmax_and_frequencies_follow_softmax() {
    let vis = [0.0f64, 1.0, 2.0, -1.0, 0.5, 0.0];
    let s = VisualSampling::default();
    let n = 60_000;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let u: Vec<f64> = (0..n).map(|_| 1.0 - rng.gen::<f64>()).collect();
    let logits = Tensor::from_slice(&vis).unsqueeze(0).repeat([n as i64, 1]);
    let ids: Vec<i64> = Vec::try_from(s.pick(&logits, &Tensor::from_slice(&u)).unwrap()).unwrap();
    let z: f64 = vis.iter().map(|x| x.exp()).sum();
    for (i, x) in vis.iter().enumerate() {
        let p = x.exp() / z;
        let c = ids.iter().filter(|&&t| t == i as i64).count() as f64;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (c - n as f64 * p).abs() < 5.0 * sd,
            "token {i}: {c} vs {}",
            n as f64 * p
        );
    }
    let k1 = VisualSampling {
        top_k: 1,
        ..Default::default()
    };
    let p1 = VisualSampling {
        top_p: 1e-6,
        ..Default::default()
    };
    for &uu in &u[..50] {
        let one = Tensor::from_slice(&vis).unsqueeze(0);
        let us = Tensor::from_slice(&[uu]);
        assert_eq!(k1.pick(&one, &us).unwrap().int64_value(&[0]), 2);
        assert_eq!(p1.pick(&one, &us).unwrap().int64_value(&[0]), 2);
    }
    let bad = VisualSampling {
        temperature: 0.0,
        ..Default::default()
    };
    assert!(bad
        .pick(
            &Tensor::from_slice(&vis).unsqueeze(0),
            &Tensor::from_slice(&[0.5])
        )
        .is_err());
    assert!(s
        .pick(
            &Tensor::from_slice(&vis).unsqueeze(0),
            &Tensor::from_slice(&[0.5, 0.5])
        )
        .is_err());
}

/// Fixed logits (seeded, a realistic 4,096-wide row with bf16-like ties) and fixed uniforms:
/// the device picks exactly the host reference's tokens, on the CPU and on CUDA.
fn same_tokens_on_every_device(dev: Device) -> R {
    let (rows, n) = (16i64, 4096i64);
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let logits: Vec<f64> = (0..rows * n)
        .map(|_| {
            let x: f64 = rng.gen_range(-6.0..6.0);
            (x * 8.0).round() / 8.0 // coarse values: many exact ties
        })
        .collect();
    let u: Vec<f64> = (0..rows).map(|_| 1.0 - rng.gen::<f64>()).collect();
    let lt = Tensor::from_slice(&logits)
        .view([rows, n])
        .to_kind(Kind::Float);
    for s in [
        VisualSampling::default(),
        VisualSampling {
            temperature: 0.7,
            top_k: 100,
            top_p: 1.0,
        },
        VisualSampling {
            temperature: 1.3,
            top_k: 0,
            top_p: 0.8,
        },
        VisualSampling {
            temperature: 1.0,
            top_k: 500,
            top_p: 0.9,
        },
    ] {
        let got: Vec<i64> = Vec::try_from(
            s.pick(&lt.to_device(dev), &Tensor::from_slice(&u).to_device(dev))?
                .to_device(Device::Cpu),
        )?;
        let l32: Vec<f32> = Vec::try_from(lt.reshape([-1]))?;
        for r in 0..rows as usize {
            let row: Vec<f64> = l32[r * n as usize..(r + 1) * n as usize]
                .iter()
                .map(|&x| x as f64)
                .collect();
            assert_eq!(
                got[r] as usize,
                reference_pick(&row, &s, u[r]),
                "row {r} on {dev:?} with {s:?}"
            );
        }
    }
    Ok(())
}
test_device!(
    same_tokens_on_every_device,
    sampler_same_tokens_cpu,
    sampler_same_tokens_cuda
);

// ---------------------------------------------------------------- guided generation

/// Random visual logits per call (any row count): records the rows of each call.
struct RandomLogits {
    n: i64,
    rng: ChaCha8Rng,
    rows: Vec<i64>,
}

impl RandomLogits {
    fn draw(&mut self, r: i64) -> Tensor {
        self.rows.push(r);
        let v: Vec<f32> = (0..r * self.n)
            .map(|_| self.rng.gen_range(-5.0f32..5.0))
            .collect();
        Tensor::from_slice(&v).view([r, self.n])
    }
}

impl VisualLogits for RandomLogits {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn prefill(&mut self, ids: &Tensor, _mask: Option<&Tensor>) -> semhitok_mllm::Result<Tensor> {
        Ok(self.draw(ids.size()[0]))
    }
    fn step(&mut self, ids: &Tensor) -> semhitok_mllm::Result<Tensor> {
        Ok(self.draw(ids.size()[0]))
    }
}

/// Conditional rows prefer token 0 slightly over 1, unconditional rows prefer 0 strongly:
/// guidance (s = 3) turns the choice to 1.
struct TwoWay {
    b: i64,
    rows: Vec<i64>,
}

impl TwoWay {
    fn logits(&mut self, r: i64) -> Tensor {
        self.rows.push(r);
        let mut v = Vec::new();
        for i in 0..r {
            if i < self.b {
                v.extend([2.0f32, 1.9, 0.0]);
            } else {
                v.extend([2.0f32, 0.0, 0.0]);
            }
        }
        Tensor::from_slice(&v).view([r, 3])
    }
}

impl VisualLogits for TwoWay {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn prefill(&mut self, ids: &Tensor, _mask: Option<&Tensor>) -> semhitok_mllm::Result<Tensor> {
        Ok(self.logits(ids.size()[0]))
    }
    fn step(&mut self, ids: &Tensor) -> semhitok_mllm::Result<Tensor> {
        Ok(self.logits(ids.size()[0]))
    }
}

#[test]
fn guidance_uses_2b_rows_and_cfg_1_skips_the_unconditional_pass() {
    let v = VisualVocab::new(10, 1, 3).unwrap();
    let layout = T2iLayout::new(v, Some(0)).unwrap();
    let reqs: Vec<ImageRequest> = (0..4)
        .map(|i| ImageRequest {
            caption: vec![1, 2],
            seed: i,
        })
        .collect();
    let greedy = VisualSampling {
        top_k: 1,
        ..Default::default()
    };
    let run = |g: Guidance| {
        let mut m = TwoWay { b: 4, rows: vec![] };
        let cfg = T2iSampling {
            sampling: greedy,
            guidance: g,
        };
        let out = generate_visual(&mut m, &layout, &reqs, 5, &cfg).unwrap();
        (out, m.rows)
    };
    let (out, rows) = run(Guidance::scale(1.0));
    assert_eq!(rows, vec![4; 5], "cfg 1: only the B conditional rows");
    assert!(out.iter().all(|r| r == &vec![0; 5]));
    let (out, rows) = run(Guidance::scale(3.0));
    assert_eq!(rows, vec![8; 5], "cond and uncond rows as one batch of 2B");
    // 2 + 3 (1.9 - 0) = 7.7 > 2: token 1 under guidance.
    assert!(out.iter().all(|r| r == &vec![1; 5]), "{out:?}");
    let (out, _) = run(Guidance {
        scale: 3.0,
        interval: Some((1, 3)),
    });
    assert!(out.iter().all(|r| r == &vec![0, 1, 1, 0, 0]), "{out:?}");
}

pub fn tiny_config(vocab: i64) -> LlamaConfig {
    LlamaConfig::tiny(vocab)
}

/// A tiny random Llama with `rows` text rows, extended to `vocab`.
pub fn tiny_model(rows: i64, vocab: &VisualVocab, dev: Device) -> LlamaModel {
    let _rng = crate::rng_lock();
    let cfg = tiny_config(rows);
    let w = Weights::random(0.3, 7, Kind::Float, dev);
    let mut m = LlamaModel::new(&cfg, &w).unwrap();
    m.extend_vocab(vocab.n_new() as i64, 1.0, 3).unwrap();
    m
}

/// Reference: no cache; every step re-runs the whole (left-padded) history.
struct Recompute<'a> {
    model: &'a LlamaModel,
    head: Tensor,
    ids: Tensor,
    mask: Tensor,
}

impl Recompute<'_> {
    fn logits(&self) -> semhitok_mllm::Result<Tensor> {
        let (r, l) = (self.ids.size()[0], self.ids.size()[1]);
        let mut cache = self.model.new_cache(r, l)?;
        let h = self
            .model
            .forward_hidden(Input::Ids(&self.ids), Some(&self.mask), &mut cache)?;
        visual_logits(&h.narrow(1, l - 1, 1), &self.head)
    }
}

impl VisualLogits for Recompute<'_> {
    fn device(&self) -> Device {
        self.model.device()
    }
    fn prefill(&mut self, ids: &Tensor, mask: Option<&Tensor>) -> semhitok_mllm::Result<Tensor> {
        self.ids = ids.shallow_clone();
        self.mask = match mask {
            Some(m) => m.to_kind(Kind::Int64),
            None => ids.ones_like(),
        };
        self.logits()
    }
    fn step(&mut self, ids: &Tensor) -> semhitok_mllm::Result<Tensor> {
        self.ids = Tensor::cat(&[&self.ids, &ids.unsqueeze(1)], 1);
        self.mask = Tensor::cat(&[&self.mask, &ids.ones_like().unsqueeze(1)], 1);
        self.logits()
    }
}

#[test]
fn kv_cache_sampling_equals_full_recompute() {
    let v = VisualVocab::new(20, 4, 3).unwrap();
    let m = tiny_model(20, &v, Device::Cpu);
    let layout = T2iLayout::new(v, Some(1)).unwrap();
    let reqs = vec![
        ImageRequest {
            caption: vec![5, 6, 7],
            seed: 11,
        },
        ImageRequest {
            caption: vec![8],
            seed: 12,
        },
        ImageRequest {
            caption: vec![],
            seed: 13,
        },
    ];
    for g in [
        Guidance::scale(1.0),
        Guidance::scale(4.0),
        Guidance {
            scale: 2.0,
            interval: Some((3, 9)),
        },
    ] {
        let cfg = T2iSampling {
            sampling: VisualSampling {
                temperature: 1.0,
                top_k: 8,
                top_p: 0.95,
            },
            guidance: g,
        };
        let n = 16;
        let mut cached = CachedVisualLm::new(&m, &v, n).unwrap();
        let a = generate_visual(&mut cached, &layout, &reqs, n, &cfg).unwrap();
        let mut full = Recompute {
            model: &m,
            head: visual_head(&m, &v).unwrap(),
            ids: Tensor::zeros([1], (Kind::Int64, Device::Cpu)),
            mask: Tensor::zeros([1], (Kind::Int64, Device::Cpu)),
        };
        let b = generate_visual(&mut full, &layout, &reqs, n, &cfg).unwrap();
        assert_eq!(a, b, "{g:?}");
        // Per-sample seeds: a sample is the same alone or in a batch (batches of 1 here).
        let c = generate_images(&m, &layout, &reqs, n, &cfg, 1).unwrap();
        assert_eq!(a, c, "batch of 1 vs batch of 3, {g:?}");
        let distinct: std::collections::BTreeSet<u32> = a.iter().flatten().copied().collect();
        assert!(distinct.len() > 3, "the samples are not degenerate: {a:?}");
    }
    // A model that was not extended is refused, naming the sizes.
    let _rng = crate::rng_lock();
    let plain = LlamaModel::new(
        &tiny_config(20),
        &Weights::random(0.3, 7, Kind::Float, Device::Cpu),
    )
    .unwrap();
    let e = CachedVisualLm::new(&plain, &v, 4).unwrap_err().to_string();
    assert!(e.contains("20") && e.contains("extend"), "{e}");
}
