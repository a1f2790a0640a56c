//! `cargo xtask`: the project's task runner. The only place that spawns processes.
//!
//! It builds without LibTorch: commands that need LibTorch first run [`libtorch::ensure`], which
//! installs PyPI torch==2.11.0 into `.libtorch/` (idempotent), then spawn cargo with it.

mod assets;
mod bench_data;
mod bench_llm;
mod bench_quant;
mod bundle;
mod c10d_headers;
mod data_cmd;
mod demo_mllm;
mod fixtures;
mod fmnist_cmd;
mod libtorch;
mod train_cmd;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "semhitok-rs task runner")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install LibTorch (PyPI torch==2.11.0) into .libtorch/ and verify it. Idempotent.
    Setup(libtorch::SetupArgs),
    /// Fetch, verify and convert the embedded assets into .assets/ (photos, Fashion-MNIST,
    /// weights, tokenizer, LM). A re-run downloads nothing.
    Assets(assets::AssetsArgs),
    /// Release binaries + tests + a launcher for a GPU host with PyTorch 2.11 and no Rust.
    Bundle(bundle::BundleArgs),
    /// Build and run the whole test suite (sets up LibTorch first).
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Train one stage: `train --stage spc|pre|decoder-ft|joint --config configs/X.toml`.
    Train(train_cmd::TrainArgs),
    /// Evaluate a checkpoint (rFID, PSNR, SSIM, LPIPS, teacher cosine, usage; JSON + grids).
    Eval(train_cmd::PassArgs),
    /// Images -> semantic, pixel and unified ids (safetensors + JSON).
    Encode(train_cmd::PassArgs),
    /// Ids -> PNG images.
    Decode(train_cmd::PassArgs),
    /// A trained run -> a portable model folder (config.json, model.safetensors, README.md).
    Export(train_cmd::PassArgs),
    /// A dataset -> resumable int32 unified-id shards.
    Tokenize(train_cmd::PassArgs),
    /// The embedded-default demo: tiny SPC, SGHC and the semantic-only baseline on photo crops.
    /// `demo llava [--help]`: the LLaVA understanding demo on Fashion-MNIST (CPU, ~15 min);
    /// `demo t2i [--help]`: the text-to-image demo (CPU, ~15 min).
    Demo(train_cmd::PassArgs),
    /// The Fashion-MNIST tokenizer set: SPC, SGHC, semantic-only and pixel-only VQ with one
    /// budget; evaluated, exported to OUT/<name>/model, train/test tokenized with labels, table
    /// OUT/tokenizers.md (`scripts/fmnist/tokenizers.sh` does the steps; resumable).
    FmnistTokenizers(fmnist_cmd::FmnistArgs),
    /// Chat with a language model: `chat [--model PATH.gguf|HF_DIR] [--device cuda] "prompt"`
    /// (default: the embedded SmolLM2-135M-Instruct); prints the answer and tokens/s.
    Chat(train_cmd::PassArgs),
    /// Benchmarks, side by side with the alternative a user would pick, in one run.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Dataset tools: `data scan --source imagenet|wds|photos|fashion-mnist|llava --path P`,
    /// `data pack --src FOLDER --out DIR --shard-size N` (image folder -> webdataset shards).
    Data(data_cmd::DataArgs),
    /// Golden fixtures: `fixtures [--check] [--cheap] [--only NAME]` runs the generators of
    /// scripts/fixtures/ in their pinned Python environments (`--check`: into a temporary folder,
    /// compared with the committed fixtures within scripts/fixtures/fixtures.toml's tolerances).
    Fixtures(fixtures::FixturesArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// semhitok-quant vs PyTorch CPU (same threads) + SGEMM peak -> target/bench/quant.json.
    Quant(bench_quant::QuantArgs),
    /// semhitok-data decode + center crop vs Pillow, images/s per core -> target/bench/data.json.
    Data(bench_data::DataBenchArgs),
    /// semhitok-mllm vs transformers on the SmolLM2 GGUF, prefill/decode tok/s -> target/bench/llm.json.
    Llm(bench_llm::LlmBenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = util::workspace_root()?;
    match cli.cmd {
        Cmd::Setup(args) => libtorch::setup(&root, &args).map(|_| ()),
        Cmd::Assets(args) => assets::assets(&root, &args),
        Cmd::Bundle(args) => bundle::bundle(&root, &args),
        Cmd::Test { args } => {
            libtorch::ensure(&root)?;
            assets::ensure(&root)?;
            let mut cmd = util::cargo(&root);
            cmd.args(["test", "--workspace", "--release"]).args(&args);
            util::run(&mut cmd)
        }
        Cmd::Train(a) => train_cmd::train(&root, &a),
        Cmd::Eval(a) => train_cmd::pass(&root, "eval", &a),
        Cmd::Encode(a) => train_cmd::pass(&root, "encode", &a),
        Cmd::Decode(a) => train_cmd::pass(&root, "decode", &a),
        Cmd::Export(a) => train_cmd::pass(&root, "export", &a),
        Cmd::Tokenize(a) => train_cmd::pass(&root, "tokenize", &a),
        Cmd::Demo(a) => match demo_mllm::parse(&a.args).unwrap_or_else(|e| e.exit()) {
            Some(which) => demo_mllm::run(&root, which),
            None => train_cmd::demo(&root, &a),
        },
        Cmd::FmnistTokenizers(a) => fmnist_cmd::run(&root, &a),
        Cmd::Chat(a) => train_cmd::chat(&root, &a),
        Cmd::Bench { which } => match which {
            BenchCmd::Quant(a) => bench_quant::run(&root, &a),
            BenchCmd::Data(a) => bench_data::run(&root, &a),
            BenchCmd::Llm(a) => {
                libtorch::ensure(&root)?;
                assets::ensure(&root)?;
                bench_llm::run(&root, &a)
            }
        },
        Cmd::Data(a) => data_cmd::run(&root, &a),
        Cmd::Fixtures(a) => fixtures::run(&root, &a),
    }
}
