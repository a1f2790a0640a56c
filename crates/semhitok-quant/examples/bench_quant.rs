//! Times this crate at the paper's shapes and prints one JSON object (read by `cargo xtask bench quant`).
//!
//! Usage: `bench_quant [--threads T] [--reps R]`. Inputs are seeded uniform [-1, 1) values:
//! semantic search N = 4096 (16 images x 256 tokens), K = 16384, D = 32, cosine; SGHC search
//! N = 4096, K_sem = 16384, m = 12, D_pix 8 and 32, squared L2, with a [`PackedPixelCodebook`]
//! (packed once, as the tokenizer does) and one-shot with [`sghc_nearest`] on the raw
//! `[K_sem, m, D_pix]` array. Reported times are the best of `--reps` runs.

use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use semhitok_quant::{sghc_nearest, Metric, PackedCodebook, PackedPixelCodebook, UnifiedIndex};
use std::time::Instant;

/// Best (minimum) wall time of `reps` runs after one warm-up: on a shared machine the minimum is
/// the least disturbed by other processes; the PyTorch script reports the same statistic.
fn best_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[0]
}

fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let threads = get("--threads", std::thread::available_parallelism()?.get());
    let reps = get("--reps", 10);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;

    let (n, k, d) = (4096usize, 16384usize, 32usize);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let codes = Array2::from_shape_vec((k, d), uniform(&mut rng, k * d))?;
    let queries = Array2::from_shape_vec((n, d), uniform(&mut rng, n * d))?;
    let packed = PackedCodebook::new(codes.view(), Metric::Cosine)?;
    let mut sink = 0u64;
    let sem_ms = best_ms(reps, || {
        sink += u64::from(packed.nearest(queries.view()).expect("search").ids[0]);
    });
    let pack_ms = best_ms(reps.min(5), || {
        sink += PackedCodebook::new(codes.view(), Metric::Cosine)
            .expect("pack")
            .len() as u64;
    });
    let flops = 2.0 * (n * k * d) as f64;

    let index = UnifiedIndex::paper();
    let sem_ids: Vec<u32> = (0..n)
        .map(|_| rng.gen_range(0..index.k_sem() as u32))
        .collect();
    let mut sghc = Vec::new();
    for d_pix in [8usize, 32] {
        let pixel = Array3::from_shape_vec(
            (index.k_sem(), index.m(), d_pix),
            uniform(&mut rng, index.vocab_size() * d_pix),
        )?;
        let q = Array2::from_shape_vec((n, d_pix), uniform(&mut rng, n * d_pix))?;
        let packed_pixel = PackedPixelCodebook::new(pixel.view(), Metric::SquaredL2)?;
        let ms = best_ms(reps * 5, || {
            let r = packed_pixel.nearest(q.view(), &sem_ids).expect("sghc");
            sink += u64::from(r.unified[0]);
        });
        let oneshot_ms = best_ms(reps * 5, || {
            let r =
                sghc_nearest(q.view(), &sem_ids, pixel.view(), Metric::SquaredL2).expect("sghc");
            sink += u64::from(r.unified[0]);
        });
        sghc.push((d_pix, ms, oneshot_ms));
    }
    let unified: Vec<u32> = (0..n as u32 * 64)
        .map(|i| i.wrapping_mul(2_654_435_761) % index.vocab_size() as u32)
        .collect();
    let decode_ms = best_ms(reps * 5, || {
        let (s, j) = index.decode_all(&unified).expect("decode");
        sink += u64::from(s[0] + j[0]);
    });

    let tps = |ms: f64| n as f64 / (ms * 1e-3);
    println!("{{");
    println!("  \"threads\": {threads},");
    println!("  \"kernel\": \"{:?}\",", packed.kernel());
    println!("  \"sem_search_ms\": {sem_ms:.4},");
    println!("  \"sem_search_tokens_per_s\": {:.1},", tps(sem_ms));
    println!("  \"sem_search_gflops\": {:.2},", flops / (sem_ms * 1e6));
    println!("  \"sem_pack_ms\": {pack_ms:.4},");
    for (d_pix, ms, oneshot_ms) in &sghc {
        println!("  \"sghc_d{d_pix}_ms\": {ms:.4},");
        println!("  \"sghc_d{d_pix}_tokens_per_s\": {:.1},", tps(*ms));
        println!("  \"sghc_d{d_pix}_oneshot_ms\": {oneshot_ms:.4},");
        println!(
            "  \"sghc_d{d_pix}_oneshot_tokens_per_s\": {:.1},",
            tps(*oneshot_ms)
        );
    }
    println!(
        "  \"unified_decode_ids_per_s\": {:.1},",
        unified.len() as f64 / (decode_ms * 1e-3)
    );
    println!("  \"sink\": {sink}");
    println!("}}");
    Ok(())
}
