//! [`LlavaModel`]: a frozen exported SemHiTok, LLaVA-1.5's `mlp2x_gelu` projector and a
//! Llama-family LLM, spliced at the image positions.
//!
//! Reference: haotian-liu/LLaVA c121f04 `llava/model/llava_arch.py` (`encode_images` =
//! vision tower -> `mm_projector`; `prepare_inputs_labels_for_multimodal` splices the projected
//! features where `IMAGE_TOKEN_INDEX` was). The vision tower here is the tokenizer
//! (`semhitok_nn::pretrained::Tokenizer`, never trained), read one of three ways
//! ([`VisionFeatures`]): the quantized `[semantic code | pixel code]` per patch (the paper's
//! choice), the SPC decoder's reconstruction of the teacher features from the semantic codes,
//! or the continuous teacher features themselves (the upper bound a discrete tokenizer is
//! compared against).

use crate::error::{Error, Result};
use semhitok_mllm::llava::answer::answer_greedy;
use semhitok_mllm::llava::splice::{splice_embeddings, text_ids};
use semhitok_mllm::llava::PromptBuilder;
use semhitok_mllm::llm::load::LoadedLm;
use semhitok_mllm::loss::causal_lm_loss;
use semhitok_mllm::projector::{MlpProjector, MlpProjectorConfig};
use semhitok_nn::pretrained::Tokenizer;
use tch::{nn, Device, Kind, Tensor};

/// Which per-patch vectors of the tokenizer the projector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionFeatures {
    /// `[semantic code | pixel code]` (`Encoded::features`, D_sem + D_pix).
    Quantized,
    /// The SPC decoder's output from the semantic codes (teacher width C_t).
    SemanticDecoder,
    /// The frozen teacher's continuous patch features (C_t): the upper bound.
    Teacher,
}

impl VisionFeatures {
    pub fn as_str(self) -> &'static str {
        match self {
            VisionFeatures::Quantized => "quantized",
            VisionFeatures::SemanticDecoder => "semantic_decoder",
            VisionFeatures::Teacher => "teacher",
        }
    }
}

/// Vision tokenizer + projector + LLM.
pub struct LlavaModel {
    /// The frozen tokenizer (vision tower).
    pub vision: Tokenizer,
    /// What it contributes per patch.
    pub features: VisionFeatures,
    /// The projector's variables (`model.mm_projector.{0,2}.{weight,bias}`), f32.
    pub vs: nn::VarStore,
    pub projector: MlpProjector,
    /// The LLM with its tokenizer and template.
    pub lm: LoadedLm,
    /// Feature positions per image (the tokenizer's patch count).
    pub n_image: i64,
    /// Width of the vision features (the projector's input).
    pub mm_hidden_size: i64,
}

impl std::fmt::Debug for LlavaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlavaModel")
            .field("features", &self.features)
            .field("n_image", &self.n_image)
            .field("mm_hidden_size", &self.mm_hidden_size)
            .finish()
    }
}

/// The projector's weight-name prefix (LLaVA's).
pub const PROJECTOR_PREFIX: &str = "model.mm_projector";

impl LlavaModel {
    /// Assemble; the projector is initialised as PyTorch's `nn.Linear` after
    /// `tch::manual_seed(seed)`. The vision width and patch count are read from one forward of
    /// a blank image.
    pub fn new(
        vision: Tokenizer,
        features: VisionFeatures,
        lm: LoadedLm,
        seed: i64,
    ) -> Result<Self> {
        let device = lm.model.device();
        if vision.device() != device {
            return Err(Error::Input(format!(
                "the tokenizer is on {:?}, the LLM on {device:?}",
                vision.device()
            )));
        }
        let s = vision.config().preprocessing.image_size;
        let probe = Tensor::zeros([1, 3, s, s], (Kind::Float, device));
        let f = image_features_of(&vision, features, &probe)?;
        let (_, n, dim) = f.size3()?;
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let cfg = MlpProjectorConfig {
            mm_hidden_size: dim,
            hidden_size: lm.model.config().hidden_size,
        };
        let projector = MlpProjector::new(&root / "model" / "mm_projector", cfg);
        Ok(Self {
            vision,
            features,
            vs,
            projector,
            lm,
            n_image: n,
            mm_hidden_size: dim,
        })
    }

    pub fn device(&self) -> Device {
        self.lm.model.device()
    }

    /// Vision features `[B, N, F]` f32 of images `[B, 3, H, W]` (any size, [-1, 1] or u8). No
    /// gradient: the tokenizer is frozen.
    pub fn image_features(&self, images: &Tensor) -> Result<Tensor> {
        image_features_of(&self.vision, self.features, images)
    }

    /// Input embeddings `[B, L, D]` (the LLM's kind): token embeddings with the projected image
    /// features written over the image positions. `images` `[B, 3, H, W]`; `None` when no row
    /// has an image.
    pub fn embeds(&self, input_ids: &Tensor, images: Option<&Tensor>) -> Result<Tensor> {
        let text = self.lm.model.embed(&text_ids(input_ids))?;
        let Some(images) = images else {
            return Ok(text);
        };
        let feats = self.image_features(images)?;
        let proj = self.projector.forward(&feats)?.f_to_kind(text.kind())?;
        Ok(splice_embeddings(
            &text,
            &input_ids.f_to_device(self.device())?,
            &proj,
        )?)
    }

    /// Mean causal-LM loss over the non-ignored labels and their count (int64 scalar).
    /// `input_ids`, `labels` `[B, L]` int64, `attention_mask` `[B, L]` bool, images as in
    /// [`Self::embeds`]. The output head runs only on the positions that predict a label
    /// (the same numbers as `causal_lm_loss` over the full `[B, L, V]` logits, tested; the
    /// head is the largest matmul of a small LLM, and most positions carry no label).
    pub fn loss(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        attention_mask: &Tensor,
        images: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let x = self.embeds(input_ids, images)?;
        let h = self.lm.model.forward_train_hidden(
            semhitok_mllm::llm::Input::Embeds(&x),
            &attention_mask.f_to_device(self.device())?,
        )?; // [B, L, H]
        let (b, l, hd) = h.size3()?;
        let labels = labels.f_to_device(self.device())?;
        if labels.size() != [b, l] {
            return Err(Error::Input(format!(
                "labels {:?} for hidden states [{b}, {l}, {hd}]",
                labels.size()
            )));
        }
        let hz = h.f_narrow(1, 0, l - 1)?.f_reshape([-1, hd])?;
        let y = labels.f_narrow(1, 1, l - 1)?.f_reshape([-1])?;
        let rows = y
            .f_ne(semhitok_mllm::llava::IGNORE_INDEX)?
            .f_nonzero()?
            .f_squeeze_dim(1)?;
        let n = rows.size()[0];
        let count = Tensor::from(n).f_to_device(self.device())?;
        if n == 0 {
            return Ok((h.f_sum(Kind::Float)?.f_mul_scalar(0.0)?, count));
        }
        let z = hz
            .f_index_select(0, &rows)?
            .f_linear::<&Tensor>(self.lm.model.lm_head_weight(), None)?
            .f_to_kind(Kind::Float)?; // [N, V]
        let (z, y) = (z.f_unsqueeze(0)?, y.f_index_select(0, &rows)?);
        // causal_lm_loss on [1, N + 1, V] with the labels shifted in: position i predicts y[i].
        let pad = Tensor::f_full(
            [1],
            semhitok_mllm::llava::IGNORE_INDEX,
            (Kind::Int64, self.device()),
        )?;
        let yl = Tensor::f_cat(&[pad, y], 0)?.f_unsqueeze(0)?; // [1, N + 1]
        let zl = Tensor::f_cat(&[&z, &z.f_narrow(1, 0, 1)?], 1)?; // [1, N + 1, V] (last unused)
        Ok((causal_lm_loss(&zl, &yl)?.0, count))
    }

    /// Greedy answers to `questions` about `images` (`[B, 3, H, W]`, one per question), batched
    /// with the KV cache.
    pub fn answer(
        &self,
        builder: &PromptBuilder<'_>,
        images: &Tensor,
        questions: &[String],
        max_new_tokens: usize,
    ) -> Result<Vec<String>> {
        let _g = tch::no_grad_guard();
        let b = images.size()[0] as usize;
        if b != questions.len() {
            return Err(Error::Input(format!(
                "{b} images for {} questions",
                questions.len()
            )));
        }
        let feats = self.image_features(images)?;
        let proj = self
            .projector
            .forward(&feats)?
            .f_to_kind(self.lm.model.kind())?;
        let mut prompts = vec![];
        for (i, q) in questions.iter().enumerate() {
            let ex = semhitok_mllm::llava::Example {
                input_ids: builder.generation_prompt(q, true)?,
                labels: vec![],
                mismatch: false,
            };
            let labels = vec![semhitok_mllm::llava::IGNORE_INDEX; ex.input_ids.len()];
            let ex = semhitok_mllm::llava::Example { labels, ..ex };
            let seq = semhitok_mllm::llava::splice::expand(&ex, self.n_image as usize, usize::MAX);
            let ids = Tensor::from_slice(&seq.input_ids)
                .unsqueeze(0)
                .to_device(self.device());
            let text = self.lm.model.embed(&text_ids(&ids))?;
            let x = splice_embeddings(&text, &ids, &proj.f_narrow(0, i as i64, 1)?)?;
            prompts.push(x.f_squeeze_dim(0)?);
        }
        let out = answer_greedy(&self.lm.model, &prompts, &self.lm.eos, max_new_tokens)?;
        out.iter()
            .map(|ids| {
                Ok(self
                    .lm
                    .tokenizer
                    .decode_skip_special(ids)?
                    .trim()
                    .to_string())
            })
            .collect()
    }

    /// The projector's trainable tensors by LLaVA name with their roles (matrices decay, biases
    /// do not; LLaVA's recipes use weight_decay = 0 anyway).
    pub fn projector_params(&self) -> Vec<(String, Tensor, semhitok_nn::role::Role)> {
        semhitok_nn::role::trainable(&self.vs)
    }

    /// The projector's tensors by LLaVA name (`model.mm_projector.0.weight`, ...).
    pub fn projector_state(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(k, t)| (k, t.shallow_clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

fn image_features_of(
    vision: &Tokenizer,
    features: VisionFeatures,
    images: &Tensor,
) -> Result<Tensor> {
    tch::no_grad(|| -> Result<Tensor> {
        Ok(match features {
            VisionFeatures::Quantized => vision.encode(images)?.features,
            VisionFeatures::SemanticDecoder => {
                let enc = vision.encode(images)?;
                let d_sem = vision.config().model.spc.code_dim;
                let codes = enc.features.f_narrow(-1, 0, d_sem)?.f_contiguous()?;
                vision.model().spc().decode(&codes)?
            }
            VisionFeatures::Teacher => {
                let x = vision.preprocess(images)?;
                vision.teacher().features(&x)?.f_to_kind(Kind::Float)?
            }
        })
    })
}
