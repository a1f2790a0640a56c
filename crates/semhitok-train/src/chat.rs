//! `semhitok chat`: answer one prompt with a language model (semhitok-mllm's Llama-family
//! decoder), streaming the answer and printing tokens/s.
//!
//! PATH is a GGUF file or a Hugging Face folder; the default is the embedded SmolLM2-135M-Instruct
//! (`cargo xtask assets`). The model's chat template is applied (GGUF `tokenizer.chat_template`
//! or `tokenizer_config.json`). Lives here (not in semhitok-mllm) because the `semhitok` binary
//! is this crate's; the layering is train -> mllm, never back.

use crate::error::{Error, Result};
use semhitok_mllm::chat::{Message, Role};
use semhitok_mllm::generate::{
    cut_at_stop, generate, DecodeMode, GenerationConfig, Sampling, StopFilter, TextStream,
};
use semhitok_mllm::llm::load::{default_kind, load};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Weight dtype for the forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LmDtype {
    /// f32 on the CPU, bf16 on CUDA.
    Auto,
    F32,
    Bf16,
    F16,
}

/// Arguments of `semhitok chat`.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// The user's message.
    pub prompt: String,
    /// A `.gguf` file or a Hugging Face model folder (config.json, safetensors, tokenizer.json).
    #[arg(long, default_value = ".assets/llm/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// cpu | cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight dtype.
    #[arg(long, value_enum, default_value_t = LmDtype::Auto)]
    pub dtype: LmDtype,
    /// A system message (otherwise the template's default, if any).
    #[arg(long)]
    pub system: Option<String>,
    /// At most this many new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy; otherwise softmax sampling at this temperature.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// transformers-style repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Decode with the static-shape step captured as a CUDA graph (CUDA only; sampling then
    /// draws from seeded host uniforms, greedy tokens are unchanged).
    #[arg(long)]
    pub cuda_graph: bool,
    /// Stop when the answer contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// LibTorch intra-op threads (0 = LibTorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
}

/// What one chat turn produced.
#[derive(Debug, Clone)]
pub struct ChatReport {
    /// The answer (special tokens and stop strings removed).
    pub answer: String,
    /// Prompt tokens after the template.
    pub prompt_tokens: usize,
    /// New tokens.
    pub new_tokens: usize,
    /// Seconds to load the model.
    pub load_secs: f64,
    /// Prompt tokens / prefill seconds.
    pub prefill_tok_s: f64,
    /// Decode tokens / decode seconds (after the first token).
    pub decode_tok_s: f64,
}

/// Run one turn, streaming the answer to stdout and the timing to stderr.
pub fn run(a: &ChatArgs) -> Result<ChatReport> {
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let device = match a.device.as_str() {
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        d => return Err(Error::Input(format!("--device {d}: expected cpu or cuda"))),
    };
    let kind = match a.dtype {
        LmDtype::Auto => default_kind(device),
        LmDtype::F32 => tch::Kind::Float,
        LmDtype::Bf16 => tch::Kind::BFloat16,
        LmDtype::F16 => tch::Kind::Half,
    };
    if !a.model.exists() {
        return Err(Error::Input(format!(
            "model {} does not exist (the default is fetched by `cargo xtask assets`)",
            a.model.display()
        )));
    }
    let t = Instant::now();
    let lm = load(&a.model, kind, device)?;
    let load_secs = t.elapsed().as_secs_f64();
    let mut messages = vec![];
    if let Some(s) = &a.system {
        messages.push(Message::new(Role::System, s.clone()));
    }
    messages.push(Message::new(Role::User, a.prompt.clone()));
    let text = match &lm.chat_template {
        Some(t) => t.render(&messages, true)?,
        None => a.prompt.clone(),
    };
    let mut ids = lm.tokenizer.encode(&text)?;
    if let Some(b) = lm.bos_to_add {
        if ids.first() != Some(&b) {
            ids.insert(0, b);
        }
    }
    let sampling = if a.temperature > 0.0 {
        Sampling::Sample {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
        }
    } else {
        Sampling::Greedy
    };
    let cfg = GenerationConfig {
        sampling,
        repetition_penalty: a.repetition_penalty,
        max_new_tokens: a.max_new_tokens,
        eos: lm.eos.clone(),
        stop_strings: a.stop.clone(),
        seed: a.seed,
        sync_every: 1,
        decode: if a.cuda_graph {
            DecodeMode::CudaGraph
        } else {
            DecodeMode::Dynamic
        },
    };
    let pad = lm.eos.first().copied().unwrap_or(0);
    let mut stream = TextStream::default();
    let mut filter = StopFilter::new(&a.stop);
    let mut stdout = std::io::stdout();
    let mut stream_err: Option<semhitok_mllm::Error> = None;
    let out = generate(
        &lm.model,
        &[ids.clone()],
        pad,
        &cfg,
        Some(&lm.tokenizer),
        &mut |_, step| {
            if lm.eos.contains(&step[0]) {
                return true;
            }
            match stream.push(&lm.tokenizer, step[0]) {
                Ok(piece) => {
                    let shown = filter.push(&piece);
                    let _ = write!(stdout, "{shown}");
                    let _ = stdout.flush();
                    !filter.stopped()
                }
                Err(e) => {
                    stream_err = Some(e);
                    false
                }
            }
        },
    )?;
    if let Some(e) = stream_err {
        return Err(e.into());
    }
    let full = lm.tokenizer.decode_skip_special(&out.tokens[0])?;
    let answer = cut_at_stop(&full, &a.stop).to_string();
    println!("{}", filter.finish());
    let n = out.tokens[0].len();
    let prefill_tok_s = ids.len() as f64 / out.prefill_secs.max(1e-9);
    let decode_tok_s = out.decode_steps as f64 / out.decode_secs.max(1e-9);
    eprintln!(
        "[chat] {} on {:?} ({:?}): loaded in {load_secs:.2} s; prompt {} tokens, prefill {prefill_tok_s:.1} tok/s; \
         {n} new tokens, decode {decode_tok_s:.1} tok/s",
        a.model.display(),
        device,
        kind,
        ids.len()
    );
    Ok(ChatReport {
        answer,
        prompt_tokens: ids.len(),
        new_tokens: n,
        load_secs,
        prefill_tok_s,
        decode_tok_s,
    })
}
