//! Which trained parameters take weight decay and which get the bf16 working copy, for every
//! stage, listed: the membership the optimizer sees (`Param`s from each task, the bf16 set from
//! `optim::bf16_members`) must stay exactly this. Each line is `name decay bf16` (`D` / `-`,
//! `B` / `-`), sorted by name; generator parameters first, then the discriminator's.

use super::common::serial;
use super::stages::{cfg, run, spc_run};
use semhitok_mllm::llm::{LlamaConfig, LlamaModel, Weights};
use semhitok_train::optim::{bf16_members, Param};
use semhitok_train::stages::build_task_uninit;
use semhitok_train::t2i::task::T2iTask;
use std::path::Path;
use tch::{Device, Kind};

/// `name decay bf16` lines of `params`.
fn listing(params: &[Param]) -> String {
    let bf16 = bf16_members(params);
    params
        .iter()
        .zip(bf16)
        .map(|(p, b)| {
            format!(
                "{} {} {}\n",
                p.name,
                if p.decays() { "D" } else { "-" },
                if b { "B" } else { "-" }
            )
        })
        .collect()
}

/// Generator and discriminator listings of a tokenizer stage (tiny model, PatchGAN on), its
/// `init.*` checkpoints from 1-step runs of the stages before it.
fn stage_listing(root: &Path, init: &[String], stage: &str) -> String {
    let mut sets = init.to_vec();
    if stage != "spc" {
        sets.extend(["disc.enabled=true".to_string(), "disc.ndf=8".to_string()]);
    }
    let c = cfg(&root.join(format!("z-{stage}")), stage, 1, &sets);
    let task = build_task_uninit(&c).unwrap_or_else(|e| panic!("{stage}: {e}"));
    let mut s = listing(&task.params());
    let disc = task.disc_params();
    if !disc.is_empty() {
        s.push_str("-- disc\n");
        s.push_str(&listing(&disc));
    }
    s
}

/// Compare with `want` (leading/trailing blank lines and indentation ignored).
fn check(what: &str, got: &str, want: &str) {
    let want: String = want
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        got, want,
        "{what}: the decay / bf16-copy membership changed"
    );
}

const SPC: &str = "
    spc.decode_task_layer.0.bias - B
    spc.decode_task_layer.0.weight D B
    spc.decode_task_layer.2.bias - B
    spc.decode_task_layer.2.weight D B
    spc.decoder.blocks.0.attn.proj.bias - B
    spc.decoder.blocks.0.attn.proj.weight D B
    spc.decoder.blocks.0.attn.qkv.bias - B
    spc.decoder.blocks.0.attn.qkv.weight D B
    spc.decoder.blocks.0.mlp.fc1.bias - B
    spc.decoder.blocks.0.mlp.fc1.weight D B
    spc.decoder.blocks.0.mlp.fc2.bias - B
    spc.decoder.blocks.0.mlp.fc2.weight D B
    spc.decoder.blocks.0.norm1.bias - -
    spc.decoder.blocks.0.norm1.weight - -
    spc.decoder.blocks.0.norm2.bias - -
    spc.decoder.blocks.0.norm2.weight - -
    spc.decoder.embed.bias - B
    spc.decoder.embed.weight D B
    spc.decoder.norm.bias - -
    spc.decoder.norm.weight - -
    spc.decoder.pos_embed - -
    spc.encode_task_layer.0.bias - B
    spc.encode_task_layer.0.weight D B
    spc.encode_task_layer.2.bias - B
    spc.encode_task_layer.2.weight D B
";

const PRE: &str = "
    decoder.blocks.0.attn.proj.bias - B
    decoder.blocks.0.attn.proj.weight D B
    decoder.blocks.0.attn.qkv.bias - B
    decoder.blocks.0.attn.qkv.weight D B
    decoder.blocks.0.mlp.fc1.bias - B
    decoder.blocks.0.mlp.fc1.weight D B
    decoder.blocks.0.mlp.fc2.bias - B
    decoder.blocks.0.mlp.fc2.weight D B
    decoder.blocks.0.norm1.bias - -
    decoder.blocks.0.norm1.weight - -
    decoder.blocks.0.norm2.bias - -
    decoder.blocks.0.norm2.weight - -
    decoder.blocks.1.attn.proj.bias - B
    decoder.blocks.1.attn.proj.weight D B
    decoder.blocks.1.attn.qkv.bias - B
    decoder.blocks.1.attn.qkv.weight D B
    decoder.blocks.1.mlp.fc1.bias - B
    decoder.blocks.1.mlp.fc1.weight D B
    decoder.blocks.1.mlp.fc2.bias - B
    decoder.blocks.1.mlp.fc2.weight D B
    decoder.blocks.1.norm1.bias - -
    decoder.blocks.1.norm1.weight - -
    decoder.blocks.1.norm2.bias - -
    decoder.blocks.1.norm2.weight - -
    decoder.embed.bias - B
    decoder.embed.weight D B
    decoder.head.bias - B
    decoder.head.weight D B
    decoder.norm.bias - -
    decoder.norm.weight - -
    decoder.pos_embed - -
    pixel.encoder.blocks.0.attn.proj.bias - B
    pixel.encoder.blocks.0.attn.proj.weight D B
    pixel.encoder.blocks.0.attn.qkv.bias - B
    pixel.encoder.blocks.0.attn.qkv.weight D B
    pixel.encoder.blocks.0.mlp.fc1.bias - B
    pixel.encoder.blocks.0.mlp.fc1.weight D B
    pixel.encoder.blocks.0.mlp.fc2.bias - B
    pixel.encoder.blocks.0.mlp.fc2.weight D B
    pixel.encoder.blocks.0.norm1.bias - -
    pixel.encoder.blocks.0.norm1.weight - -
    pixel.encoder.blocks.0.norm2.bias - -
    pixel.encoder.blocks.0.norm2.weight - -
    pixel.encoder.blocks.1.attn.proj.bias - B
    pixel.encoder.blocks.1.attn.proj.weight D B
    pixel.encoder.blocks.1.attn.qkv.bias - B
    pixel.encoder.blocks.1.attn.qkv.weight D B
    pixel.encoder.blocks.1.mlp.fc1.bias - B
    pixel.encoder.blocks.1.mlp.fc1.weight D B
    pixel.encoder.blocks.1.mlp.fc2.bias - B
    pixel.encoder.blocks.1.mlp.fc2.weight D B
    pixel.encoder.blocks.1.norm1.bias - -
    pixel.encoder.blocks.1.norm1.weight - -
    pixel.encoder.blocks.1.norm2.bias - -
    pixel.encoder.blocks.1.norm2.weight - -
    pixel.encoder.norm.bias - -
    pixel.encoder.norm.weight - -
    pixel.encoder.patch_embed.proj.bias - B
    pixel.encoder.patch_embed.proj.weight D B
    pixel.encoder.pos_embed - -
    pixel.encoder.proj.bias - B
    pixel.encoder.proj.weight D B
    pixel.quantize.embedding - -
    -- disc
    disc.main.0.bias - B
    disc.main.0.weight D B
    disc.main.11.bias - B
    disc.main.11.weight D B
    disc.main.2.weight D B
    disc.main.3.bias - -
    disc.main.3.weight - -
    disc.main.5.weight D B
    disc.main.6.bias - -
    disc.main.6.weight - -
    disc.main.8.weight D B
    disc.main.9.bias - -
    disc.main.9.weight - -
";

const DECODER_FT: &str = "
    decoder.blocks.0.attn.proj.bias - B
    decoder.blocks.0.attn.proj.weight D B
    decoder.blocks.0.attn.qkv.bias - B
    decoder.blocks.0.attn.qkv.weight D B
    decoder.blocks.0.mlp.fc1.bias - B
    decoder.blocks.0.mlp.fc1.weight D B
    decoder.blocks.0.mlp.fc2.bias - B
    decoder.blocks.0.mlp.fc2.weight D B
    decoder.blocks.0.norm1.bias - -
    decoder.blocks.0.norm1.weight - -
    decoder.blocks.0.norm2.bias - -
    decoder.blocks.0.norm2.weight - -
    decoder.blocks.1.attn.proj.bias - B
    decoder.blocks.1.attn.proj.weight D B
    decoder.blocks.1.attn.qkv.bias - B
    decoder.blocks.1.attn.qkv.weight D B
    decoder.blocks.1.mlp.fc1.bias - B
    decoder.blocks.1.mlp.fc1.weight D B
    decoder.blocks.1.mlp.fc2.bias - B
    decoder.blocks.1.mlp.fc2.weight D B
    decoder.blocks.1.norm1.bias - -
    decoder.blocks.1.norm1.weight - -
    decoder.blocks.1.norm2.bias - -
    decoder.blocks.1.norm2.weight - -
    decoder.embed.bias - B
    decoder.embed.weight D B
    decoder.head.bias - B
    decoder.head.weight D B
    decoder.norm.bias - -
    decoder.norm.weight - -
    decoder.pos_embed - -
    -- disc
    disc.main.0.bias - B
    disc.main.0.weight D B
    disc.main.11.bias - B
    disc.main.11.weight D B
    disc.main.2.weight D B
    disc.main.3.bias - -
    disc.main.3.weight - -
    disc.main.5.weight D B
    disc.main.6.bias - -
    disc.main.6.weight - -
    disc.main.8.weight D B
    disc.main.9.bias - -
    disc.main.9.weight - -
";

const JOINT: &str = "
    decoder.blocks.0.attn.proj.bias - B
    decoder.blocks.0.attn.proj.weight D B
    decoder.blocks.0.attn.qkv.bias - B
    decoder.blocks.0.attn.qkv.weight D B
    decoder.blocks.0.mlp.fc1.bias - B
    decoder.blocks.0.mlp.fc1.weight D B
    decoder.blocks.0.mlp.fc2.bias - B
    decoder.blocks.0.mlp.fc2.weight D B
    decoder.blocks.0.norm1.bias - -
    decoder.blocks.0.norm1.weight - -
    decoder.blocks.0.norm2.bias - -
    decoder.blocks.0.norm2.weight - -
    decoder.blocks.1.attn.proj.bias - B
    decoder.blocks.1.attn.proj.weight D B
    decoder.blocks.1.attn.qkv.bias - B
    decoder.blocks.1.attn.qkv.weight D B
    decoder.blocks.1.mlp.fc1.bias - B
    decoder.blocks.1.mlp.fc1.weight D B
    decoder.blocks.1.mlp.fc2.bias - B
    decoder.blocks.1.mlp.fc2.weight D B
    decoder.blocks.1.norm1.bias - -
    decoder.blocks.1.norm1.weight - -
    decoder.blocks.1.norm2.bias - -
    decoder.blocks.1.norm2.weight - -
    decoder.embed.bias - B
    decoder.embed.weight D B
    decoder.head.bias - B
    decoder.head.weight D B
    decoder.norm.bias - -
    decoder.norm.weight - -
    decoder.pos_embed - -
    spc.decode_task_layer.0.bias - B
    spc.decode_task_layer.0.weight D B
    spc.decode_task_layer.2.bias - B
    spc.decode_task_layer.2.weight D B
    spc.decoder.blocks.0.attn.proj.bias - B
    spc.decoder.blocks.0.attn.proj.weight D B
    spc.decoder.blocks.0.attn.qkv.bias - B
    spc.decoder.blocks.0.attn.qkv.weight D B
    spc.decoder.blocks.0.mlp.fc1.bias - B
    spc.decoder.blocks.0.mlp.fc1.weight D B
    spc.decoder.blocks.0.mlp.fc2.bias - B
    spc.decoder.blocks.0.mlp.fc2.weight D B
    spc.decoder.blocks.0.norm1.bias - -
    spc.decoder.blocks.0.norm1.weight - -
    spc.decoder.blocks.0.norm2.bias - -
    spc.decoder.blocks.0.norm2.weight - -
    spc.decoder.embed.bias - B
    spc.decoder.embed.weight D B
    spc.decoder.norm.bias - -
    spc.decoder.norm.weight - -
    spc.decoder.pos_embed - -
    spc.encode_task_layer.0.bias - B
    spc.encode_task_layer.0.weight D B
    spc.encode_task_layer.2.bias - B
    spc.encode_task_layer.2.weight D B
    -- disc
    disc.main.0.bias - B
    disc.main.0.weight D B
    disc.main.11.bias - B
    disc.main.11.weight D B
    disc.main.2.weight D B
    disc.main.3.bias - -
    disc.main.3.weight - -
    disc.main.5.weight D B
    disc.main.6.bias - -
    disc.main.6.weight - -
    disc.main.8.weight D B
    disc.main.9.bias - -
    disc.main.9.weight - -
";

#[test]
fn tokenizer_stages_decay_and_bf16_members() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let spc = spc_run(tmp.path(), 1);
    let pre = tmp.path().join("pre");
    run(&cfg(
        &pre,
        "pre",
        1,
        &[format!("init.spc=\"{}\"", spc.display())],
    ));
    let init = [
        format!("init.spc=\"{}\"", spc.display()),
        format!("init.pre=\"{}\"", pre.display()),
    ];
    let root = tmp.path();
    check("spc", &stage_listing(root, &init, "spc"), SPC);
    check("pre", &stage_listing(root, &init, "pre"), PRE);
    check(
        "decoder-ft",
        &stage_listing(root, &init, "decoder-ft"),
        DECODER_FT,
    );
    check("joint", &stage_listing(root, &init, "joint"), JOINT);
}

const T2I_LLAMA: &str = "
    model.embed_tokens.weight - -
    model.layers.0.input_layernorm.weight - -
    model.layers.0.mlp.down_proj.weight D B
    model.layers.0.mlp.gate_up_proj.weight D B
    model.layers.0.post_attention_layernorm.weight - -
    model.layers.0.self_attn.o_proj.weight D B
    model.layers.0.self_attn.qkv_proj.weight D B
    model.layers.1.input_layernorm.weight - -
    model.layers.1.mlp.down_proj.weight D B
    model.layers.1.mlp.gate_up_proj.weight D B
    model.layers.1.post_attention_layernorm.weight - -
    model.layers.1.self_attn.o_proj.weight D B
    model.layers.1.self_attn.qkv_proj.weight D B
    model.norm.weight - -
";

const T2I_BIASED: &str = "
    model.embed_tokens.weight - -
    model.layers.0.input_layernorm.weight - -
    model.layers.0.mlp.down_proj.bias - B
    model.layers.0.mlp.down_proj.weight D B
    model.layers.0.mlp.gate_up_proj.bias - B
    model.layers.0.mlp.gate_up_proj.weight D B
    model.layers.0.post_attention_layernorm.weight - -
    model.layers.0.self_attn.o_proj.bias - B
    model.layers.0.self_attn.o_proj.weight D B
    model.layers.0.self_attn.qkv_proj.bias - B
    model.layers.0.self_attn.qkv_proj.weight D B
    model.layers.1.input_layernorm.weight - -
    model.layers.1.mlp.down_proj.bias - B
    model.layers.1.mlp.down_proj.weight D B
    model.layers.1.mlp.gate_up_proj.bias - B
    model.layers.1.mlp.gate_up_proj.weight D B
    model.layers.1.post_attention_layernorm.weight - -
    model.layers.1.self_attn.o_proj.bias - B
    model.layers.1.self_attn.o_proj.weight D B
    model.layers.1.self_attn.qkv_proj.bias - B
    model.layers.1.self_attn.qkv_proj.weight D B
    model.norm.weight - -
";

/// Text-to-image trains every LLM weight (`TrainSpec::Full`): a tiny Llama, and the same with
/// q/k/v, o and MLP biases (Qwen2 has q/k/v biases).
#[test]
fn t2i_full_decay_and_bf16_members() {
    let _g = serial();
    for (what, bias, want) in [("llama", false, T2I_LLAMA), ("biased", true, T2I_BIASED)] {
        let cfg = LlamaConfig {
            qkv_bias: bias,
            o_bias: bias,
            mlp_bias: bias,
            ..LlamaConfig::tiny(24)
        };
        let model =
            LlamaModel::new(&cfg, &Weights::random(0.2, 1, Kind::Float, Device::Cpu)).unwrap();
        let task = T2iTask::new(model).unwrap();
        use semhitok_train::trainer::Task;
        check(what, &listing(&task.params()), want);
    }
}

const LLAVA_PRETRAIN: &str = "
    model.mm_projector.0.bias - B
    model.mm_projector.0.weight D B
    model.mm_projector.2.bias - B
    model.mm_projector.2.weight D B
";

const LLAVA_LORA: &str = "
    base_model.model.model.layers.0.mlp.down_proj.lora_A.weight D B
    base_model.model.model.layers.0.mlp.down_proj.lora_B.weight D B
    base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight D B
    base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight D B
    base_model.model.model.layers.0.mlp.up_proj.lora_A.weight D B
    base_model.model.model.layers.0.mlp.up_proj.lora_B.weight D B
    base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight D B
    base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight D B
    base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight D B
    base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight D B
    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight D B
    base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight D B
    base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight D B
    base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight D B
    base_model.model.model.layers.1.mlp.down_proj.lora_A.weight D B
    base_model.model.model.layers.1.mlp.down_proj.lora_B.weight D B
    base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight D B
    base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight D B
    base_model.model.model.layers.1.mlp.up_proj.lora_A.weight D B
    base_model.model.model.layers.1.mlp.up_proj.lora_B.weight D B
    base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight D B
    base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight D B
    base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight D B
    base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight D B
    base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight D B
    base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight D B
    base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight D B
    base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight D B
    model.mm_projector.0.bias - B
    model.mm_projector.0.weight D B
    model.mm_projector.2.bias - B
    model.mm_projector.2.weight D B
";

/// LLaVA: stage 1 trains the projector, stage 2 (here LoRA) the projector and the adapters.
#[test]
fn llava_decay_and_bf16_members() {
    use super::llava::training::{config, fixture};
    use semhitok_train::trainer::Task;
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path());
    for (stage, want) in [
        ("llava-pretrain", LLAVA_PRETRAIN),
        ("llava-finetune", LLAVA_LORA),
    ] {
        let c = config(&f, &tmp.path().join(stage), stage, &[]);
        let (task, _) = semhitok_train::llava::run::prepare(&c, Path::new("t.toml")).unwrap();
        check(stage, &listing(&task.params()), want);
    }
}
