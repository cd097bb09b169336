//! indicatif bars, shared by every long-running command. They draw only on a terminal,
//! so logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressStyle};
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
