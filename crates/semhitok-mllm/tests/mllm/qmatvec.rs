//! Batch-1 products from GGUF blocks (`gguf::qmatvec`, `llm::quantized`): kernels vs an f64
//! reference on random blocks, the real SmolLM2 decode with and without the blocks, and the
//! blocks dropped when weights change.

use super::gguf::smollm2_path;
use proptest::prelude::*;
use semhitok_mllm::gguf::dequant::reference_element;
use semhitok_mllm::gguf::qmatvec::{Kernel, QMatrix, QRows};
use semhitok_mllm::gguf::{GgmlType, GgufFile};
use semhitok_mllm::llm::{Input, LlamaModel, LogitsAt};
use tch::{Device, Kind, Tensor};

/// Random blocks of `ty` with finite f16 scales in [2^-10, 2) (and mins for Q4_1).
fn blocks(ty: GgmlType, raw: &[u8], n: usize) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut out = raw[..n * bb].to_vec();
    for b in 0..n {
        let fields: &[usize] = if ty == GgmlType::Q4_1 { &[0, 2] } else { &[0] };
        for &o in fields {
            // f16 with exponent 5..15 (finite, not subnormal), sign from the random bit.
            let hi = &mut out[b * bb + o + 1];
            *hi = (*hi & 0x80) | (((*hi & 0x7f) % 11 + 5) << 2) | (*hi & 0x03);
        }
    }
    out
}

/// y_r vs sum_i w_ri x_i in f64 with the dequantized weights; returns the error relative to the
/// bound `(cols + 8) 2^-23 S_r`, S_r = sum over blocks of (|d| sum |q_i x_i| + |m| sum |x_i|)
/// (the magnitudes the factored f32 sums round).
fn worst(ty: GgmlType, data: &[u8], rows: usize, cols: usize, x: &[f32], y: &[f32]) -> f64 {
    let (bb, nb) = (ty.block_bytes(), cols / 32);
    let h = |b: &[u8], o: usize| {
        half::f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32() as f64
    };
    let mut w = 0f64;
    for r in 0..rows {
        let (mut want, mut s) = (0f64, 0f64);
        for b in 0..nb {
            let blk = &data[(r * nb + b) * bb..(r * nb + b + 1) * bb];
            let d = h(blk, 0).abs();
            let m = if ty == GgmlType::Q4_1 {
                h(blk, 2).abs()
            } else {
                0.0
            };
            for i in 0..32 {
                let xi = x[b * 32 + i] as f64;
                want += reference_element(ty, blk, i) as f64 * xi;
                let q = if ty == GgmlType::Q4_1 {
                    ((blk[4 + i % 16] >> (4 * (i / 16))) & 0x0f) as f64
                } else {
                    (blk[2 + i] as i8) as f64
                };
                s += d * (q * xi).abs() + m * xi.abs();
            }
        }
        let bound = (cols as f64 + 8.0) * f64::powi(2.0, -23) * s + 1e-30;
        w = w.max((y[r] as f64 - want).abs() / bound);
    }
    w
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Both kernels, 1 and 2 threads, within the f32 rounding bound of the exact product of the
    /// dequantized weights; the two kernels' results agree to the same bound.
    #[test]
    fn qmatvec_kernels_match_f64(
        q41 in any::<bool>(),
        rows in 1usize..200,
        nb in 1usize..6,
        raw in proptest::collection::vec(any::<u8>(), 200 * 5 * 34),
        xs in proptest::collection::vec(-4.0f32..4.0, 5 * 32),
    ) {
        let ty = if q41 { GgmlType::Q4_1 } else { GgmlType::Q8_0 };
        let cols = nb * 32;
        let data = blocks(ty, &raw, rows * nb);
        let x = &xs[..cols];
        // Two segments (a stack) when there are enough rows.
        let cut = rows / 3;
        let bb = ty.block_bytes() * nb;
        let parts = if cut > 0 {
            vec![QRows::new(ty, cut, cols, data[..cut * bb].to_vec()).unwrap(),
                 QRows::new(ty, rows - cut, cols, data[cut * bb..].to_vec()).unwrap()]
        } else {
            vec![QRows::new(ty, rows, cols, data.clone()).unwrap()]
        };
        let q = QMatrix::stack(parts).unwrap();
        prop_assert_eq!(q.rows(), rows);
        for k in [Kernel::Avx2, Kernel::Portable] {
            for threads in [1usize, 2] {
                let mut y = vec![0f32; rows];
                q.matvec_with(k, threads, x, &mut y).unwrap();
                let e = worst(ty, &data, rows, cols, x, &y);
                prop_assert!(e <= 1.0, "{:?} {:?} threads {}: error {} of the bound", ty, k, threads, e);
            }
        }
    }
}

#[test]
fn qmatvec_bad_shapes_are_errors() {
    let e = QRows::new(GgmlType::Q4_1, 2, 40, vec![0; 40])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cols % 32 == 0"), "{e}");
    let e = QRows::new(GgmlType::Q4K, 1, 256, vec![0; 144])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not supported"), "{e}");
    let q = QMatrix::stack(vec![QRows::new(GgmlType::Q8_0, 2, 32, vec![0; 68]).unwrap()]).unwrap();
    let e = q.matvec(&[0.0; 31], &mut [0.0; 2]).unwrap_err().to_string();
    assert!(e.contains("x [31]"), "{e}");
}

fn smollm2_dense() -> (GgufFile, LlamaModel) {
    let f = GgufFile::open(&smollm2_path()).unwrap();
    let (cfg, w) = semhitok_mllm::gguf::load::load(&f, Kind::Float, Device::Cpu).unwrap();
    let m = LlamaModel::new(&cfg, &w).unwrap();
    (f, m)
}

/// Decode-step logits of `m` after a prefill of `ids[..n-1]`.
fn step_logits(m: &LlamaModel, ids: &Tensor) -> Tensor {
    let n = ids.size()[1];
    let mut cache = m.new_cache(1, n).unwrap();
    let _ = m
        .forward(
            Input::Ids(&ids.narrow(1, 0, n - 1)),
            None,
            &mut cache,
            LogitsAt::Last,
        )
        .unwrap();
    m.forward(
        Input::Ids(&ids.narrow(1, n - 1, 1)),
        None,
        &mut cache,
        LogitsAt::Last,
    )
    .unwrap()
}

/// The real SmolLM2 file: every linear layer and the head get blocks (121 = 30 x 4 + 1), the
/// decode-step logits equal the dense f32 model's within 1e-5 relative, greedy generation gives
/// the same 24 tokens, and `llm::load::load` attaches them by default on the CPU in f32.
#[test]
fn smollm2_decodes_the_same_with_blocks() {
    let _rng = crate::rng_lock(); // generate / extend_vocab seed LibTorch's global generator
    use semhitok_mllm::generate::{generate, GenerationConfig};
    let (f, dense) = smollm2_dense();
    let (_, mut q) = smollm2_dense();
    assert!(!q.has_gguf_blocks());
    let a = q.attach_gguf_blocks(&f).unwrap();
    assert_eq!(a.layers, 121);
    assert!(
        a.bytes > 90_000_000 && a.bytes < 100_000_000,
        "{} bytes",
        a.bytes
    );
    let ids = Tensor::from_slice(
        &(0..24)
            .map(|i| (i * 7919 + 13) % 49152)
            .collect::<Vec<i64>>(),
    )
    .unsqueeze(0);
    let (lq, ld) = (step_logits(&q, &ids), step_logits(&dense, &ids));
    let e = super::llm::rel_err(&lq, &ld);
    eprintln!("smollm2 decode-step logits with blocks vs dense: rel err {e:.2e}");
    assert!(e < 1e-5, "rel err {e}");
    let prompt: Vec<u32> = (0..24).map(|i| ((i * 7919 + 13) % 49152) as u32).collect();
    let cfg = GenerationConfig {
        max_new_tokens: 24,
        ..Default::default()
    };
    let tq = generate(&q, &[prompt.clone()], 0, &cfg, None, &mut |_, _| true).unwrap();
    let td = generate(&dense, &[prompt], 0, &cfg, None, &mut |_, _| true).unwrap();
    assert_eq!(tq.tokens, td.tokens);
    let lm = semhitok_mllm::llm::load::load(&smollm2_path(), Kind::Float, Device::Cpu).unwrap();
    assert_eq!(
        lm.model.has_gguf_blocks(),
        semhitok_mllm::llm::load::gguf_blocks_enabled()
    );
}

/// Changing the weights drops the blocks (they would be stale): extend_vocab, training them.
/// Frozen training keeps them.
#[test]
fn blocks_dropped_when_weights_change() {
    let _rng = crate::rng_lock(); // generate / extend_vocab seed LibTorch's global generator
    use semhitok_mllm::llm::TrainSpec;
    let (f, mut m) = smollm2_dense();
    m.attach_gguf_blocks(&f).unwrap();
    let _ = m.train_params(&TrainSpec::Frozen).unwrap();
    assert!(m.has_gguf_blocks(), "a frozen model keeps them");
    let _ = m.train_params(&TrainSpec::Full).unwrap();
    assert!(!m.has_gguf_blocks());
    m.attach_gguf_blocks(&f).unwrap();
    m.extend_vocab(8, 1.0, 0).unwrap();
    assert!(!m.has_gguf_blocks());
    // Attaching again: the layers are still the file's, the grown (untied) head is not.
    assert_eq!(m.attach_gguf_blocks(&f).unwrap().layers, 120);
}
