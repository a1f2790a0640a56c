//! Step time and memory of one SemHiTok stage-2 training step (paper Sec. 3.2 / 4.1 setting), to
//! compare with `scripts/bench_nn_gpu_torch.py`, the PyTorch eager reference of the same model and
//! the same step. Results go to docs/benchmarks/nn-gpu.md.
//!
//! One step = frozen teacher forward (random-weight SigLIP-L/16 at 256 px, or random features with
//! `--teacher features`) -> frozen SPC quantize -> ViT-B/16 pixel encoder -> SGHC (m = 12) -> channel
//! fusion -> ViT-B/16 pixel decoder, under bf16 autocast on CUDA; generator loss = L2 + SGHC codebook
//! plus commitment plus 0.1 * PatchGAN hinge generator loss; backward; AdamW on encoder + codebook and on the
//! decoder; then a discriminator step (hinge on real vs detached fake). `--disc off` drops the GAN parts.
//! The clock runs from before the teacher forward to after `cuda synchronize` following the last
//! optimizer step; warm-up steps are not timed.
//!
//! Prints one JSON line: {"impl":"tch","step_ms","peak_mem_gb","imgs_per_s",...}. `peak_mem_gb` is
//! device memory in use after the timed steps (`cudaMemGetInfo`: total - free; the caching allocator
//! does not give memory back, so this is the peak reserved memory plus the CUDA context), measured the
//! same way by the Python script. On CPU it is null.
//!
//! Run (paper size, H200):
//!   cargo build --release -p semhitok-nn --example bench_stage2
//!   target/release/examples/bench_stage2 --size paper --batch 32 --steps 10 --warmup 3
//! CPU smoke check (tiny model, fp32):
//!   cargo run --release -p semhitok-nn --example bench_stage2 -- --size tiny --batch 2 --steps 2 --warmup 1

use anyhow::{bail, Context};
use semhitok_nn::discriminator::{GanLoss, PatchGanConfig};
use semhitok_nn::losses::PixelLoss;
use semhitok_nn::model::{Part, SemHiTokConfig};
use semhitok_nn::siglip::{SiglipLayer, SiglipVisionConfig};
use std::time::Instant;
use tch::nn::{OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
struct Args {
    size: String,
    batch: i64,
    steps: usize,
    warmup: usize,
    teacher: String,
    disc: bool,
    device: String,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        size: "paper".into(),
        batch: 32,
        steps: 10,
        warmup: 3,
        teacher: "siglip".into(),
        disc: true,
        device: "auto".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--size" => a.size = v()?,
            "--batch" => a.batch = v()?.parse()?,
            "--steps" => a.steps = v()?.parse()?,
            "--warmup" => a.warmup = v()?.parse()?,
            "--teacher" => a.teacher = v()?,
            "--disc" => a.disc = v()? == "on",
            "--device" => a.device = v()?,
            _ => bail!("unknown argument {k} (see the file header)"),
        }
    }
    Ok(a)
}

// bf16 autocast dtype (tch only toggles autocast, whose CUDA default is fp16); same FFI as
// semhitok-train's amp.rs: at::autocast::set_autocast_dtype(DeviceType::CUDA = 1, ScalarType::BFloat16 = 15).
#[link(name = "torch_cpu")]
extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_autocast_set_autocast_dtype(device_type: i8, dtype: i8);
}

extern "C" {
    fn dlopen(filename: *const std::ffi::c_char, flag: i32) -> *mut std::ffi::c_void;
    fn dlsym(
        handle: *mut std::ffi::c_void,
        symbol: *const std::ffi::c_char,
    ) -> *mut std::ffi::c_void;
}

/// Device memory in use (total - free) in bytes via cudaMemGetInfo of the already loaded libcudart.
fn cuda_used_bytes() -> Option<u64> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    for lib in [c"libcudart.so.13", c"libcudart.so.12", c"libcudart.so"] {
        // SAFETY: dlopen/dlsym with valid C strings; RTLD_NOW = 2. The symbol has the
        // documented signature `cudaError_t cudaMemGetInfo(size_t*, size_t*)`.
        unsafe {
            let h = dlopen(lib.as_ptr(), 2);
            if h.is_null() {
                continue;
            }
            let f = dlsym(h, c"cudaMemGetInfo".as_ptr());
            if f.is_null() {
                continue;
            }
            let f: MemGetInfo = std::mem::transmute(f);
            let (mut free, mut total) = (0usize, 0usize);
            if f(&mut free, &mut total) == 0 {
                return Some((total - free) as u64);
            }
        }
    }
    None
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let device = match args.device.as_str() {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        d => bail!("--device {d}: cpu, cuda or auto"),
    };
    let cuda = device.is_cuda();
    if cuda {
        // SAFETY: plain setter of LibTorch's autocast dtype with valid enum values.
        unsafe { at_autocast_set_autocast_dtype(1, 15) };
    }
    tch::manual_seed(0);
    let (mut cfg, siglip) = match args.size.as_str() {
        "paper" => (
            SemHiTokConfig::paper_256(),
            SiglipVisionConfig::siglip_large_patch16_256(),
        ),
        "tiny" => {
            let sig = SiglipVisionConfig {
                hidden_size: 64,
                intermediate_size: 128,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                image_size: 32,
                patch_size: 8,
                vision_use_head: false,
                ..SiglipVisionConfig::default()
            };
            (SemHiTokConfig::tiny(32, 8, 64, 64, 4), sig)
        }
        s => bail!("--size {s}: paper or tiny"),
    };
    cfg.spc.kmeans_init = false;
    let s = cfg.encoder.image_size;
    let mut model = cfg.init(device)?;
    model.freeze(Part::Spc);
    let mut teacher_vs = VarStore::new(device);
    let teacher = match args.teacher.as_str() {
        "siglip" => Some(siglip.init(teacher_vs.root())?),
        "features" => None,
        t => bail!("--teacher {t}: siglip or features"),
    };
    teacher_vs.freeze();
    let disc_vs = VarStore::new(device);
    let disc = PatchGanConfig::taming().init(disc_vs.root())?;
    let adamw = tch::nn::AdamW {
        beta1: 0.9,
        beta2: 0.95,
        wd: 0.05,
        eps: 1e-8,
        amsgrad: false,
    };
    let mut opt_pix = adamw.build(model.var_store(Part::Pixel), 1e-4)?;
    let mut opt_dec = adamw.build(model.var_store(Part::Decoder), 1e-4)?;
    let mut opt_disc = adamw.build(&disc_vs, 1e-4)?;
    let images = (Tensor::rand([args.batch, 3, s, s], (Kind::Float, device)) * 2.0 - 1.0).detach();
    let feats_fixed = Tensor::randn(
        [args.batch, cfg.spc.num_tokens, cfg.spc.teacher_dim],
        (Kind::Float, device),
    );
    let mut step = || -> anyhow::Result<f64> {
        let feats = match &teacher {
            Some(t) => {
                tch::no_grad(|| tch::autocast(cuda, || t.hidden_state(&images, SiglipLayer::Last)))?
                    .to_kind(Kind::Float)
            }
            None => feats_fixed.shallow_clone(),
        };
        let (loss, recon) = tch::autocast(cuda, || -> anyhow::Result<(Tensor, Tensor)> {
            let out = model.forward_t(&images, &feats, true)?;
            let mut loss = PixelLoss::L2.compute(&out.recon, &images)?
                + &out.pixel.loss_codebook
                + &out.pixel.loss_commit;
            if args.disc {
                let fake = disc.forward_t(&out.recon, true)?;
                loss += GanLoss::Hinge.g_loss(&fake)? * 0.1;
            }
            Ok((loss, out.recon))
        })?;
        opt_pix.zero_grad();
        opt_dec.zero_grad();
        loss.backward();
        opt_pix.step();
        opt_dec.step();
        if args.disc {
            let d_loss = tch::autocast(cuda, || -> anyhow::Result<Tensor> {
                let real = disc.forward_t(&images, true)?;
                let fake = disc.forward_t(&recon.detach(), true)?;
                Ok(GanLoss::Hinge.d_loss(&real, &fake)?)
            })?;
            opt_disc.zero_grad();
            d_loss.backward();
            opt_disc.step();
        }
        Ok(loss.double_value(&[]))
    };
    for _ in 0..args.warmup {
        step()?;
    }
    if cuda {
        tch::Cuda::synchronize(0);
    }
    let t0 = Instant::now();
    let mut last = 0.0;
    for _ in 0..args.steps {
        last = step()?;
    }
    if cuda {
        tch::Cuda::synchronize(0);
    }
    let secs = t0.elapsed().as_secs_f64();
    let step_ms = secs * 1e3 / args.steps.max(1) as f64;
    let peak = if cuda {
        cuda_used_bytes().map(|b| b as f64 / (1u64 << 30) as f64)
    } else {
        None
    };
    let json = serde_json::json!({
        "impl": "tch",
        "size": args.size,
        "device": format!("{device:?}"),
        "batch": args.batch,
        "image_size": s,
        "teacher": args.teacher,
        "disc": args.disc,
        "autocast_bf16": cuda,
        "steps": args.steps,
        "step_ms": step_ms,
        "peak_mem_gb": peak,
        "imgs_per_s": args.batch as f64 * 1e3 / step_ms,
        "last_loss": last,
    });
    println!("{json}");
    if !last.is_finite() {
        bail!("non-finite loss {last}");
    }
    Ok(())
}
