//! Batch-1 products straight from GGUF blocks ([`semhitok_mllm::gguf::qmatvec`]) on the real
//! SmolLM2 file: microseconds per product for its layer shapes, per kernel and thread count,
//! and the dense f32 `linear` of LibTorch on the same shapes. One JSON line per case.
//! Run: `cargo run --release -p semhitok-mllm --example bench_qmatvec [-- --model PATH]`.

use semhitok_mllm::gguf::qmatvec::{Kernel, QMatrix, QRows};
use semhitok_mllm::gguf::{load::hf_name, GgufFile};
use std::time::Instant;
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .iter()
        .position(|a| a == "--model")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| ".assets/llm/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let f = GgufFile::open(std::path::Path::new(&path))?;
    for name in [
        "blk.0.attn_q.weight",
        "blk.0.ffn_up.weight",
        "blk.0.ffn_down.weight",
        "token_embd.weight",
    ] {
        let t = f
            .tensor(name)
            .ok_or_else(|| anyhow::anyhow!("{name} missing"))?;
        let s = t.shape();
        let q = QMatrix::stack(vec![QRows::new(
            t.ty,
            s[0] as usize,
            s[1] as usize,
            f.tensor_bytes(t)?.to_vec(),
        )?])?;
        let x: Vec<f32> = (0..q.cols())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let mut y = vec![0f32; q.rows()];
        let dense = semhitok_mllm::gguf::load::dequantize_tensor(&f, t)?;
        let xt = Tensor::from_slice(&x).view([1, -1]);
        for threads in [1usize, 2] {
            tch::set_num_threads(threads as i32);
            let reps = (2_000_000 / (q.rows() * q.cols() / 64)).clamp(20, 2000);
            let time = |run: &mut dyn FnMut()| {
                for _ in 0..5 {
                    run();
                }
                let t0 = Instant::now();
                for _ in 0..reps {
                    run();
                }
                t0.elapsed().as_secs_f64() * 1e6 / reps as f64
            };
            let mut row = serde_json::json!({"tensor": name, "hf": hf_name(name), "ty": format!("{:?}", t.ty),
                "rows": q.rows(), "cols": q.cols(), "threads": threads, "reps": reps});
            for (k, key) in [(Kernel::Avx2, "us_avx2"), (Kernel::Portable, "us_portable")] {
                row[key] = time(&mut || q.matvec_with(k, threads, &x, &mut y).unwrap()).into();
            }
            row["us_f32_linear"] = time(&mut || {
                let _ = xt.linear::<&Tensor>(&dense, None).to_kind(Kind::Float);
            })
            .into();
            println!("{row}");
        }
    }
    Ok(())
}
