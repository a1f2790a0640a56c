//! LLaVA-Pretrain-558K (`blip_laion_cc_sbu_558k.json`) and LLaVA-v1.5-mix665K
//! (`llava_v1_5_mix665k.json`) records: `{"id", "image"?, "conversations": [{"from", "value"}]}`.
//!
//! A record is valid when: `id` is a string or number; `conversations` alternates `human`/`gpt`,
//! starts with `human`, ends with `gpt`, and every `value` is a string; a record with `image` has
//! exactly one `<image>` token, in the first human turn; a text-only record (mix665K has them)
//! has none; and, when an image root is given, `root/image` is a file. Invalid records are
//! skipped and counted with their index and id.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, SkipReason};
use crate::loader::SkipStats;

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Human,
    Gpt,
}

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Turn {
    pub from: Role,
    pub value: String,
}

/// A validated record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LlavaRecord {
    pub id: String,
    /// Image path relative to the image root (`None` for text-only records).
    pub image: Option<String>,
    pub conversations: Vec<Turn>,
}

/// The `<image>` placeholder.
pub const IMAGE_TOKEN: &str = "<image>";

fn invalid(msg: impl Into<String>) -> SkipReason {
    SkipReason::InvalidRecord(msg.into())
}

/// Validates one JSON value as a record.
pub fn validate_record(
    v: &serde_json::Value,
    image_root: Option<&Path>,
) -> std::result::Result<LlavaRecord, SkipReason> {
    let obj = v.as_object().ok_or_else(|| invalid("not an object"))?;
    let id = match obj.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(invalid("missing id")),
    };
    let image = match obj.get("image") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => return Err(invalid("image is not a non-empty string")),
    };
    let conv = obj
        .get("conversations")
        .and_then(|c| c.as_array())
        .ok_or_else(|| invalid("missing conversations array"))?;
    if conv.len() < 2 || conv.len() % 2 != 0 {
        return Err(invalid(format!(
            "{} turns (need an even number >= 2)",
            conv.len()
        )));
    }
    let mut turns = Vec::with_capacity(conv.len());
    for (i, t) in conv.iter().enumerate() {
        let from = match t.get("from").and_then(|f| f.as_str()) {
            Some("human") => Role::Human,
            Some("gpt") => Role::Gpt,
            other => return Err(invalid(format!("turn {i}: from = {other:?}"))),
        };
        let want = if i % 2 == 0 { Role::Human } else { Role::Gpt };
        if from != want {
            return Err(invalid(format!(
                "turn {i}: expected {want:?}, got {from:?}"
            )));
        }
        let value = t
            .get("value")
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid(format!("turn {i}: value is not a string")))?;
        turns.push(Turn {
            from,
            value: value.to_string(),
        });
    }
    let count = |t: &Turn| t.value.matches(IMAGE_TOKEN).count();
    let total: usize = turns.iter().map(count).sum();
    match &image {
        Some(_) if total != 1 || count(&turns[0]) != 1 => {
            return Err(invalid(format!(
                "{total} {IMAGE_TOKEN} tokens (need exactly one, in the first human turn)"
            )))
        }
        None if total != 0 => {
            return Err(invalid(format!(
                "text-only record with {total} {IMAGE_TOKEN} tokens"
            )))
        }
        _ => {}
    }
    if let (Some(root), Some(img)) = (image_root, &image) {
        if !root.join(img).is_file() {
            return Err(SkipReason::MissingImage);
        }
    }
    Ok(LlavaRecord {
        id,
        image,
        conversations: turns,
    })
}

/// Loads and validates a LLaVA JSON file; returns the valid records and the skip counts (keys
/// are `#<index>:<id>`).
pub fn load_llava(path: &Path, image_root: Option<&Path>) -> Result<(Vec<LlavaRecord>, SkipStats)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let values: Vec<serde_json::Value> = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| Error::format(path, format!("expected a JSON array of records: {e}")))?;
    let mut stats = SkipStats::default();
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        match validate_record(v, image_root) {
            Ok(r) => out.push(r),
            Err(e) => {
                let id = v.get("id").map(|x| x.to_string()).unwrap_or_default();
                stats.record(&format!("#{i}:{id}"), &e);
            }
        }
    }
    Ok((out, stats))
}

/// The image path of a record under `image_root`.
pub fn image_path(record: &LlavaRecord, image_root: &Path) -> Option<PathBuf> {
    record.image.as_ref().map(|i| image_root.join(i))
}
