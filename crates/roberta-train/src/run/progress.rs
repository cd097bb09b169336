//! indicatif bars, shared by every long-running command. They draw only on a terminal,
//! so logs and CI output stay clean; what they show goes to the log as plain lines
//! instead (this module's log target), which `main` keeps off a terminal's stderr.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether stderr is a terminal: bars and colours there, plain lines otherwise.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A line the bar would show: into the log file always, onto stderr only when it is not a
/// terminal (where the bar shows it).
pub fn log_line(text: &str) {
    tracing::info!("{text}");
}

/// A line that stays: above the bar on a terminal, and as [`log_line`].
pub fn report(bar: &ProgressBar, text: &str) {
    if on_terminal() {
        bar.println(text);
    }
    log_line(text);
}
use roberta_data::preprocess::Progress;

pub fn bytes_bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {bytes}/{total_bytes} {msg} ({eta})")
            .expect("valid template"),
    );
    bar.set_prefix(what.to_string());
    bar
}

pub fn update_bytes(bar: &ProgressBar, p: Progress) {
    bar.set_length(p.total_bytes);
    bar.set_position(p.bytes);
    let seconds = bar.elapsed().as_secs_f64().max(1e-3);
    bar.set_message(format!(
        "{} docs, {} tokens, {:.0} tokens/s",
        p.documents,
        p.tokens,
        p.tokens as f64 / seconds
    ));
}

pub fn steps_bar(total: u64, start: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("step {pos}/{len} {bar:30} {msg} [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    bar.set_position(start);
    bar.reset_eta();
    bar
}
