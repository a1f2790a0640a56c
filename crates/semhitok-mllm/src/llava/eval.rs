//! Scoring LLaVA answers: a JSONL of `{image, question, answer, kind}` (optional `options`,
//! `id`, `category`), the lmms-eval / LLaVA-1.5 prompt conventions, and three scores:
//!
//! - `exact` (VQAv2 / GQA / the Fashion-MNIST class question): exact match after the VQA answer
//!   normalisation (EvalAI's processor as LLaVA's `llava/eval/m4c_evaluator.py::
//!   EvalAIAnswerProcessor` has it: lower case, punctuation, number words, articles,
//!   contractions), one reference answer per question;
//! - `yes_no` (POPE): LLaVA's `llava/eval/eval_pope.py` reading (first sentence; "no" when the
//!   words hold `No`, `no` or `not`, else "yes"), accuracy, precision, recall, F1, yes ratio;
//! - `choice` (MMBench / SEED style): the option letter read from the answer.
//!
//! Prompt suffixes (LLaVA-1.5's evaluation question files, which lmms-eval's llava tasks follow):
//! short answers `"\nAnswer the question using a single word or phrase."`, multiple choice
//! `"\nAnswer with the option's letter from the given choices directly."` after the options
//! `"A. ...\nB. ..."`. A question that already ends with its suffix is left alone.
//!
//! Reference: haotian-liu/LLaVA c121f04 (`llava/eval/`). Public question files (POPE, GQA, MME,
//! SEED) are the user's copies; none ship here.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Suffix of short-answer and yes/no questions.
pub const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";
/// Suffix of multiple-choice questions.
pub const CHOICE_ANSWER: &str = "Answer with the option's letter from the given choices directly.";

/// How an item is scored.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum QaKind {
    /// Normalised exact match.
    #[serde(alias = "vqa", alias = "gqa", alias = "short")]
    Exact,
    /// POPE yes/no.
    #[serde(alias = "pope", alias = "yesno")]
    YesNo,
    /// Option letter.
    #[serde(
        alias = "mc",
        alias = "multiple_choice",
        alias = "mmbench",
        alias = "seed"
    )]
    Choice,
}

/// One evaluation item.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalItem {
    /// Image path (relative to the file's folder or an image root).
    pub image: String,
    /// The question as asked (the suffix is added by [`prompt_text`]).
    pub question: String,
    /// Reference answer: text, `yes`/`no`, or an option letter.
    pub answer: String,
    /// How it is scored.
    pub kind: QaKind,
    /// Options of a multiple-choice item (lettered A, B, ... in the prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    /// Question id (kept in predictions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Subset name (POPE's random / popular / adversarial, a class, ...): scores per category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// Reads a JSONL file; a bad line is an error naming file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<EvalItem>> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Eval {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: EvalItem = serde_json::from_str(line).map_err(|e| Error::Eval {
            path: format!("{p}:{}", i + 1),
            msg: e.to_string(),
        })?;
        if item.kind == QaKind::Choice {
            let n = item.options.as_ref().map_or(26, |o| o.len());
            if choice_letter(&item.answer, n).is_none() {
                return Err(Error::Eval {
                    path: format!("{p}:{}", i + 1),
                    msg: format!("answer {:?} is not an option letter", item.answer),
                });
            }
        }
        if item.kind == QaKind::YesNo && yes_no_label(&item.answer).is_none() {
            return Err(Error::Eval {
                path: format!("{p}:{}", i + 1),
                msg: format!("answer {:?} is neither yes nor no", item.answer),
            });
        }
        out.push(item);
    }
    if out.is_empty() {
        return Err(Error::Eval {
            path: p,
            msg: "no items".into(),
        });
    }
    Ok(out)
}

/// Writes items as JSONL (the generator's output format).
pub fn write_jsonl(path: &Path, items: &[EvalItem]) -> Result<()> {
    let mut s = String::new();
    for it in items {
        s.push_str(&serde_json::to_string(it).expect("serializable"));
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| Error::Eval {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

fn with_suffix(q: &str, suffix: &str) -> String {
    let q = q.trim_end();
    if q.ends_with(suffix) {
        q.to_string()
    } else {
        format!("{q}\n{suffix}")
    }
}

/// The question text given to the model (before the template).
pub fn prompt_text(item: &EvalItem) -> String {
    match item.kind {
        QaKind::Exact | QaKind::YesNo => with_suffix(&item.question, SHORT_ANSWER),
        QaKind::Choice => {
            let mut q = item.question.trim_end().to_string();
            if let Some(opts) = &item.options {
                for (i, o) in opts.iter().enumerate() {
                    q.push_str(&format!("\n{}. {o}", (b'A' + i as u8) as char));
                }
            }
            with_suffix(&q, CHOICE_ANSWER)
        }
    }
}

const PUNCTUATIONS: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];
const ARTICLES: [&str; 3] = ["a", "an", "the"];

fn number_word(w: &str) -> Option<&'static str> {
    Some(match w {
        "none" | "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "ten" => "10",
        _ => return None,
    })
}

/// The most frequent entries of EvalAI's contraction table (words without their apostrophe).
fn contraction(w: &str) -> Option<&'static str> {
    Some(match w {
        "aint" => "ain't",
        "arent" => "aren't",
        "cant" => "can't",
        "couldnt" => "couldn't",
        "didnt" => "didn't",
        "doesnt" => "doesn't",
        "dont" => "don't",
        "hadnt" => "hadn't",
        "hasnt" => "hasn't",
        "havent" => "haven't",
        "hes" => "he's",
        "isnt" => "isn't",
        "itll" => "it'll",
        "Im" => "I'm",
        "Ive" => "I've",
        "shouldnt" => "shouldn't",
        "thats" => "that's",
        "theres" => "there's",
        "theyre" => "they're",
        "wasnt" => "wasn't",
        "werent" => "weren't",
        "whats" => "what's",
        "wont" => "won't",
        "wouldnt" => "wouldn't",
        "youre" => "you're",
        _ => return None,
    })
}

fn has_digit_comma_digit(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    (1..c.len().saturating_sub(1)).any(|i| {
        c[i] == ',' && c[i - 1].is_ascii_digit() && {
            // one or more commas between digits
            let mut j = i;
            while j < c.len() && c[j] == ',' {
                j += 1;
            }
            j < c.len() && c[j].is_ascii_digit()
        }
    })
}

/// EvalAI's answer normalisation (VQAv2 / TextVQA; GQA answers are single words it leaves
/// alone): `word_tokenize` (lower case, `,` `?` removed, `'s` split), newlines/tabs to spaces,
/// punctuation removed (or made a space when glued between words), periods not followed by a
/// digit dropped, number words to digits, articles dropped, contractions restored.
pub fn normalize_answer(s: &str) -> String {
    let s = s
        .to_lowercase()
        .replace([',', '?'], "")
        .replace("'s", " 's");
    let s = s.trim().replace(['\n', '\t'], " ");
    let s = s.trim().to_string();
    let comma = has_digit_comma_digit(&s);
    let mut out = s.clone();
    for p in PUNCTUATIONS {
        let spaced = s.contains(&format!("{p} ")) || s.contains(&format!(" {p}"));
        out = if spaced || comma {
            out.replace(p, "")
        } else {
            out.replace(p, " ")
        };
    }
    // PERIOD_STRIP: a '.' not followed by a digit (LLaVA passes re.UNICODE as `count`: at most 32).
    let chars: Vec<char> = out.chars().collect();
    let mut stripped = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c == '.' && !next_digit && removed < 32 {
            removed += 1;
            continue;
        }
        stripped.push(c);
    }
    let words: Vec<String> = stripped
        .to_lowercase()
        .split_whitespace()
        .map(|w| number_word(w).unwrap_or(w).to_string())
        .filter(|w| !ARTICLES.contains(&w.as_str()))
        .map(|w| contraction(&w).map(str::to_string).unwrap_or(w))
        .collect();
    words.join(" ")
}

/// A reference yes/no answer: `Some(true)` for yes.
pub fn yes_no_label(answer: &str) -> Option<bool> {
    match answer.trim().to_lowercase().trim_end_matches('.') {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// LLaVA's POPE reading of a model answer: `true` = yes.
pub fn pope_prediction(text: &str) -> bool {
    let first = text.split('.').next().unwrap_or("");
    let first = first.replace(',', "");
    !first
        .split(' ')
        .any(|w| w == "No" || w == "not" || w == "no")
}

/// The option letter of an answer among `n` options: the whole answer, or its start
/// (`"B"`, `"B."`, `"(B)"`, `"B) text"`), else the first standalone capital letter in range.
pub fn choice_letter(text: &str, n: usize) -> Option<char> {
    let in_range = |c: char| c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < n.min(26);
    let t = text.trim().trim_start_matches(['(', '[']);
    let mut it = t.chars();
    if let Some(c) = it.next() {
        if in_range(c) && it.next().is_none_or(|d| !d.is_alphanumeric()) {
            return Some(c);
        }
    }
    let chars: Vec<char> = text.chars().collect();
    (0..chars.len()).find_map(|i| {
        let c = chars[i];
        let before = i == 0 || !chars[i - 1].is_alphanumeric();
        let after = chars.get(i + 1).is_none_or(|d| !d.is_alphanumeric());
        (in_range(c) && before && after).then_some(c)
    })
}

/// Whether `prediction` answers `item` correctly under its kind.
pub fn is_correct(item: &EvalItem, prediction: &str) -> bool {
    match item.kind {
        QaKind::Exact => normalize_answer(prediction) == normalize_answer(&item.answer),
        QaKind::YesNo => yes_no_label(&item.answer) == Some(pope_prediction(prediction)),
        QaKind::Choice => {
            let n = item.options.as_ref().map_or(26, |o| o.len());
            choice_letter(prediction, n).is_some()
                && choice_letter(prediction, n) == choice_letter(&item.answer, n)
        }
    }
}

/// Exact-match or choice accuracy.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Accuracy {
    /// Items.
    pub n: u64,
    /// Correct items.
    pub correct: u64,
    /// correct / n.
    pub accuracy: f64,
}

/// POPE's confusion counts and scores (yes = positive).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct YesNoScore {
    pub n: u64,
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub fn_: u64,
    pub accuracy: f64,
    /// tp / (tp + fp), 0 when nothing was predicted yes.
    pub precision: f64,
    /// tp / (tp + fn), 0 without positives.
    pub recall: f64,
    /// 2 p r / (p + r), 0 when both are 0.
    pub f1: f64,
    /// Share of yes predictions.
    pub yes_ratio: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl YesNoScore {
    fn finish(mut self) -> Self {
        self.n = self.tp + self.fp + self.tn + self.fn_;
        self.accuracy = ratio(self.tp + self.tn, self.n);
        self.precision = ratio(self.tp, self.tp + self.fp);
        self.recall = ratio(self.tp, self.tp + self.fn_);
        let pr = self.precision + self.recall;
        self.f1 = if pr > 0.0 {
            2.0 * self.precision * self.recall / pr
        } else {
            0.0
        };
        self.yes_ratio = ratio(self.tp + self.fp, self.n);
        self
    }
}

/// Scores of one set (or one category).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Scores {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<Accuracy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yes_no: Option<YesNoScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choice: Option<Accuracy>,
}

/// The report: overall and per category.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub overall: Scores,
    pub per_category: BTreeMap<String, Scores>,
}

fn scores<'a>(pairs: impl Iterator<Item = (&'a EvalItem, &'a str)>) -> Scores {
    let mut ex = Accuracy::default();
    let mut ch = Accuracy::default();
    let mut yn = YesNoScore::default();
    let (mut any_ex, mut any_ch, mut any_yn) = (false, false, false);
    for (item, pred) in pairs {
        match item.kind {
            QaKind::Exact => {
                any_ex = true;
                ex.n += 1;
                ex.correct += is_correct(item, pred) as u64;
            }
            QaKind::Choice => {
                any_ch = true;
                ch.n += 1;
                ch.correct += is_correct(item, pred) as u64;
            }
            QaKind::YesNo => {
                any_yn = true;
                let label = yes_no_label(&item.answer).unwrap_or(false);
                match (pope_prediction(pred), label) {
                    (true, true) => yn.tp += 1,
                    (true, false) => yn.fp += 1,
                    (false, false) => yn.tn += 1,
                    (false, true) => yn.fn_ += 1,
                }
            }
        }
    }
    let fin = |mut a: Accuracy| {
        a.accuracy = ratio(a.correct, a.n);
        a
    };
    Scores {
        exact: any_ex.then(|| fin(ex)),
        yes_no: any_yn.then(|| yn.finish()),
        choice: any_ch.then(|| fin(ch)),
    }
}

/// Scores predictions (one per item, same order).
pub fn score(items: &[EvalItem], predictions: &[String]) -> Result<Report> {
    if items.len() != predictions.len() {
        return Err(Error::Eval {
            path: "predictions".into(),
            msg: format!(
                "{} predictions for {} items",
                predictions.len(),
                items.len()
            ),
        });
    }
    let pairs = || items.iter().zip(predictions.iter().map(String::as_str));
    let mut cats: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        if let Some(c) = &it.category {
            cats.entry(c.clone()).or_default().push(i);
        }
    }
    let per_category = cats
        .into_iter()
        .map(|(c, idx)| {
            let s = scores(idx.iter().map(|&i| (&items[i], predictions[i].as_str())));
            (c, s)
        })
        .collect();
    Ok(Report {
        overall: scores(pairs()),
        per_category,
    })
}
