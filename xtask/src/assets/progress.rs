//! Progress lines.

use super::*;

/// A spinner on a terminal, plain lines otherwise (CI logs).
pub(super) struct Step {
    bar: Option<indicatif::ProgressBar>,
    t0: Instant,
}

impl Step {
    pub(super) fn start(msg: String) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.set_message(msg);
            b.enable_steady_tick(Duration::from_millis(100));
            Some(b)
        } else {
            eprintln!("  .. {msg}");
            None
        };
        Self {
            bar,
            t0: Instant::now(),
        }
    }
    pub(super) fn done(self, msg: String) {
        let line = format!("  ok {msg} ({:.1} s)", self.t0.elapsed().as_secs_f64());
        match self.bar {
            Some(b) => {
                b.finish_and_clear();
                eprintln!("{line}");
            }
            None => eprintln!("{line}"),
        }
    }
    pub(super) fn fail(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
