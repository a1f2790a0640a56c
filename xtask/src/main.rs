//! `cargo xtask`: the project's task runner. The only place that spawns processes.
//!
//! It builds without LibTorch: commands that need LibTorch first run [`libtorch::ensure`], which
//! installs PyPI torch==2.11.0 into `.libtorch/` (idempotent), then spawn cargo with it.

mod bundle;
mod libtorch;
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
    /// Release binaries + tests + a launcher for a GPU host with PyTorch 2.11 and no Rust.
    Bundle(bundle::BundleArgs),
    /// Build and run the whole test suite (sets up LibTorch first).
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = util::workspace_root()?;
    match cli.cmd {
        Cmd::Setup(args) => libtorch::setup(&root, &args).map(|_| ()),
        Cmd::Bundle(args) => bundle::bundle(&root, &args),
        Cmd::Test { args } => {
            libtorch::ensure(&root)?;
            let mut cmd = util::cargo(&root);
            cmd.args(["test", "--workspace", "--release"]).args(&args);
            util::run(&mut cmd)
        }
    }
}
