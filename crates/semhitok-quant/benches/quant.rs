//! criterion benches at the paper's shapes: `cargo bench -p semhitok-quant`.
//!
//! Inputs are seeded uniform [-1, 1) values (no files needed). Shapes: semantic search
//! N = 4096 tokens (16 images x 256), K = 16384, D = 32; SGHC search N = 4096, K_sem = 16384,
//! m = 12, D_pix 8 and 32 (packed once, and one-shot on the raw array); unified id encode/decode over 262,144 ids; one EMA step (scatter
//! statistics of a 4096-token batch + update of the 16384 x 32 codebook). The side-by-side
//! comparison with PyTorch is `cargo xtask bench quant`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use semhitok_quant::{
    sghc_nearest, CodeStats, EmaConfig, EmaState, Kernel, Metric, PackedCodebook,
    PackedPixelCodebook, UnifiedIndex,
};
use std::hint::black_box;

const N: usize = 4096;
const K: usize = 16384;

fn uniform2(rng: &mut ChaCha8Rng, r: usize, c: usize) -> Array2<f32> {
    Array2::from_shape_fn((r, c), |_| rng.gen_range(-1.0f32..1.0))
}

fn semantic_search(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let codes = uniform2(&mut rng, K, 32);
    let q = uniform2(&mut rng, N, 32);
    let mut g = c.benchmark_group("semantic_search_n4096_k16384_d32");
    g.sample_size(10).throughput(Throughput::Elements(N as u64));
    for metric in [Metric::Cosine, Metric::SquaredL2] {
        for kernel in [Kernel::Avx2Fma, Kernel::Portable] {
            let packed = PackedCodebook::new(codes.view(), metric)
                .unwrap()
                .with_kernel(kernel);
            let name = format!("{metric:?}/{:?}", packed.kernel());
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| black_box(packed.nearest(q.view()).unwrap()))
            });
        }
    }
    g.bench_function("pack_cosine", |b| {
        b.iter(|| black_box(PackedCodebook::new(codes.view(), Metric::Cosine).unwrap()))
    });
    g.finish();
}

fn sghc_search(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let index = UnifiedIndex::paper();
    let sem: Vec<u32> = (0..N)
        .map(|_| rng.gen_range(0..index.k_sem() as u32))
        .collect();
    let mut g = c.benchmark_group("sghc_search_n4096_ksem16384_m12");
    g.throughput(Throughput::Elements(N as u64));
    for d in [8usize, 32] {
        let pixel = Array3::from_shape_fn((index.k_sem(), index.m(), d), |_| {
            rng.gen_range(-1.0f32..1.0)
        });
        let q = uniform2(&mut rng, N, d);
        for metric in [Metric::SquaredL2, Metric::Cosine] {
            let packed = PackedPixelCodebook::new(pixel.view(), metric).unwrap();
            g.bench_function(
                BenchmarkId::new(format!("packed/{metric:?}"), format!("d{d}")),
                |b| b.iter(|| black_box(packed.nearest(q.view(), &sem).unwrap())),
            );
            g.bench_function(
                BenchmarkId::new(format!("oneshot/{metric:?}"), format!("d{d}")),
                |b| {
                    b.iter(|| {
                        black_box(sghc_nearest(q.view(), &sem, pixel.view(), metric).unwrap())
                    })
                },
            );
        }
    }
    g.finish();
}

fn unified_ids(c: &mut Criterion) {
    let index = UnifiedIndex::paper();
    let n = 1 << 18;
    let u: Vec<u32> = (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 196_608)
        .collect();
    let (s, j) = index.decode_all(&u).unwrap();
    let mut g = c.benchmark_group("unified_ids_262144");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("encode", |b| {
        b.iter(|| black_box(index.encode_all(&s, &j).unwrap()))
    });
    g.bench_function("decode", |b| {
        b.iter(|| black_box(index.decode_all(&u).unwrap()))
    });
    g.finish();
}

fn ema_update(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let codes = uniform2(&mut rng, K, 32);
    let x = uniform2(&mut rng, N, 32);
    let ids: Vec<u32> = (0..N).map(|_| rng.gen_range(0..K as u32)).collect();
    let mut g = c.benchmark_group("ema_k16384_d32_batch4096");
    g.sample_size(20);
    g.bench_function("stats_scatter", |b| {
        b.iter(|| black_box(CodeStats::from_batch(K, x.view(), &ids).unwrap()))
    });
    let stats = CodeStats::from_batch(K, x.view(), &ids).unwrap();
    let mut state = EmaState::new(codes.view());
    let mut book = codes.clone();
    g.bench_function("update", |b| {
        b.iter(|| {
            black_box(
                state
                    .update(&EmaConfig::vqkd(), &stats, book.view_mut())
                    .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    semantic_search,
    sghc_search,
    unified_ids,
    ema_update
);
criterion_main!(benches);
