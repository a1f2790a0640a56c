//! Images/s of the training loader alone ([`WdsLoader`] on tar shards: read, decode, LlamaGen
//! random crop + flip, u8 NCHW batches) against the number of decoding threads. The PyTorch
//! reference with the same shards, transform, batch and worker counts is
//! `scripts/bench_loader_torch.py`; `scripts/gpu/data.sh` runs both on the H200 host.
//!
//! ```text
//! cargo run --release -p semhitok-data --example bench_loader -- \
//!     --shards DIR_OR_PATTERN --size 256 --batch 64 --batches 40 --workers 1,2,4,8,15
//! ```
//! Prints one JSON object per worker count. Each count: a fresh loader, 3 untimed batches (the
//! pipeline fills), then `--batches` timed batches. With `--step-ms T` the consumer sleeps T ms
//! after each batch (a training step that leaves the cores to the decoders) and the figure of
//! interest is `wait_ms_per_batch`: 0 when the prefetch keeps up.

use std::time::Instant;

use semhitok_data::{
    resolve_shards, BatchStream, LoaderConfig, PixelFormat, Transform, WdsConfig, WdsLoader,
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let spec = arg("--shards").expect("--shards DIR_OR_PATTERN");
    let size: u32 = arg("--size").map_or(256, |v| v.parse().expect("--size"));
    let batch: usize = arg("--batch").map_or(64, |v| v.parse().expect("--batch"));
    let batches: usize = arg("--batches").map_or(40, |v| v.parse().expect("--batches"));
    let workers: Vec<usize> = arg("--workers")
        .unwrap_or_else(|| "1,2,4".into())
        .split(',')
        .map(|w| w.trim().parse().expect("--workers 1,2,4"))
        .collect();
    let step_ms: u64 = arg("--step-ms").map_or(0, |v| v.parse().expect("--step-ms"));
    let shards = resolve_shards(&spec)
        .unwrap_or_else(|e| panic!("{e}"))
        .paths;
    for &w in &workers {
        let cfg = WdsConfig {
            transform: Transform::random_crop(size),
            shuffle_buffer: 1000,
            require_caption: false,
            limits: Default::default(),
        };
        let lc = LoaderConfig {
            workers: w,
            prefetch: 2,
            format: PixelFormat::U8,
            ..LoaderConfig::train(batch, 0)
        };
        let mut l = WdsLoader::new(shards.clone(), cfg, lc).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..3 {
            l.next_batch().expect("endless");
        }
        let t = Instant::now();
        let mut n = 0usize;
        let mut wait = 0.0;
        for _ in 0..batches {
            let tw = Instant::now();
            n += l.next_batch().expect("endless").len();
            wait += tw.elapsed().as_secs_f64();
            std::thread::sleep(std::time::Duration::from_millis(step_ms));
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "impl": "semhitok-data WdsLoader",
                "workers": w,
                "batch": batch,
                "size": size,
                "images": n,
                "seconds": s,
                "img_per_s": n as f64 / s,
                "step_ms": step_ms,
                "wait_ms_per_batch": wait * 1e3 / batches as f64,
                "skipped": l.skip_stats().skipped,
                "shards": shards.len(),
            })
        );
    }
}
