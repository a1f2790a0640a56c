//! What a run shows while it trains: the progress bar on a terminal, a plain status line every
//! 30 s into logs, images/s (samples/s and tokens/s for token batches), and the phase timer of `semhitok bench --profile`.

use super::device::cuda_sync;
use std::collections::BTreeMap;
use std::time::Instant;
use tch::Device;

/// Progress bar (terminal) or periodic plain lines (CI logs, redirects), and the throughput.
pub(super) struct Progress {
    pb: indicatif::ProgressBar,
    plain_lines: bool,
    t_run: Instant,
    t_line: Instant,
    t_last: Instant,
    samples_since: f64,
    tokens_since: f64,
    /// Samples (images, sequences) per second over the last >= 0.5 s window.
    pub samples_per_s: f64,
    /// Real tokens per second over the same window (`None`: image batches).
    pub tok_per_s: Option<f64>,
    /// Data wait per step (exponential average over steps, seconds).
    data_s: f64,
    start: u64,
    total: u64,
}

impl Progress {
    pub(super) fn new(start: u64, total: u64, quiet: bool) -> Self {
        let pb = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            let pb = indicatif::ProgressBar::new(total);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            pb.set_position(start);
            pb
        };
        // The bar draws only on a terminal; into a log (CI, `> file`), a plain line every 30 s.
        let plain_lines = !quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
        let now = Instant::now();
        Self {
            pb,
            plain_lines,
            t_run: now,
            t_line: now,
            t_last: now,
            samples_since: 0.0,
            tokens_since: 0.0,
            samples_per_s: 0.0,
            tok_per_s: None,
            data_s: 0.0,
            start,
            total,
        }
    }

    /// Step `done` (1-based) of a call that ends at `end` finished with `samples` samples (and
    /// `tokens` real tokens for token batches), after waiting `data_s` seconds for its batches.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step_done(
        &mut self,
        done: u64,
        end: u64,
        samples: f64,
        tokens: Option<f64>,
        loss: f64,
        lr: f64,
        data_s: f64,
    ) {
        self.data_s = if done == self.start + 1 {
            data_s
        } else {
            0.9 * self.data_s + 0.1 * data_s
        };
        let data_ms = self.data_s * 1e3;
        if tokens.is_some() && self.tok_per_s.is_none() {
            // Token batches: tokens/s from the first step on (0 until the first window closes).
            self.tok_per_s = Some(0.0);
        }
        self.samples_since += samples;
        self.tokens_since += tokens.unwrap_or(0.0);
        let dt = self.t_last.elapsed().as_secs_f64();
        if dt > 0.5 || done == end {
            self.samples_per_s = self.samples_since / dt.max(1e-9);
            self.tok_per_s = tokens.map(|_| self.tokens_since / dt.max(1e-9));
            self.samples_since = 0.0;
            self.tokens_since = 0.0;
            self.t_last = Instant::now();
        }
        let rate = match self.tok_per_s {
            None => format!("{:.1} img/s", self.samples_per_s),
            Some(t) => format!("{:.1} samples/s {t:.0} tok/s", self.samples_per_s),
        };
        self.pb.set_position(done);
        self.pb.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {rate} data {data_ms:.1} ms/step"
        ));
        if self.plain_lines && (self.t_line.elapsed().as_secs() >= 30 || done == end) {
            self.t_line = Instant::now();
            let per_step = self.t_run.elapsed().as_secs_f64() / (done - self.start).max(1) as f64;
            eprintln!(
                "step {done}/{} loss {loss:.4} lr {lr:.2e} {rate} data {data_ms:.1} ms/step ETA {:.0} s",
                self.total,
                per_step * end.saturating_sub(done) as f64
            );
        }
    }

    /// One line of its own (above the bar on a terminal, plain in a log; nothing when quiet).
    pub(super) fn line(&self, msg: &str) {
        if self.plain_lines {
            eprintln!("{msg}");
        } else if !self.pb.is_hidden() {
            self.pb.println(msg);
        }
    }

    pub(super) fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

/// Phase timer of `TrainOptions::profile`: `lap(name)` waits for the device and charges the
/// time since the previous lap to `name`. Does nothing when off.
pub(super) struct Phases {
    on: bool,
    device: Device,
    last: Instant,
    pub acc: BTreeMap<&'static str, f64>,
}

impl Phases {
    pub(super) fn new(on: bool, device: Device) -> Self {
        Self {
            on,
            device,
            last: Instant::now(),
            acc: BTreeMap::new(),
        }
    }

    pub(super) fn lap(&mut self, name: &'static str) {
        if !self.on {
            return;
        }
        cuda_sync(self.device);
        *self.acc.entry(name).or_insert(0.0) += self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
    }
}
