//! `plot`: the loss, learning-rate and accuracy (or validation metric) curves of a
//! pretraining or fine-tuning run, as a PNG, from its metrics.jsonl. The font is embedded (DejaVu Sans), so nothing is needed on the host.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;

pub const PLOT_FILE: &str = "curves.png";

#[derive(Default)]
struct Curves {
    loss: Vec<(f64, f64)>,
    valid_loss: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    /// Accuracy-like series by name: pretraining's masked-token accuracy (train and
    /// valid), fine-tuning's validation metrics.
    scores: std::collections::BTreeMap<String, Vec<(f64, f64)>>,
}

/// Keys of the third panel: everything scored that is not a loss.
fn is_score(key: &str) -> bool {
    key == "masked_acc"
        || (key.starts_with("valid_") && !matches!(key, "valid_loss" | "valid_ppl" | "valid_mse"))
}

/// Values beyond this (a diverged loss) are left off the chart: an axis spanning
/// ±1e308 overflows the tick computation.
const PLOTTABLE: f64 = 1e15;

fn read(metrics: &Path) -> Result<Curves> {
    let text = roberta_data::input::read_to_string(metrics)?;
    let mut c = Curves::default();
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: invalid JSON", metrics.display(), n + 1))?;
        let Some(step) = v.get("step").and_then(serde_json::Value::as_f64) else {
            continue;
        };
        let push = |key: &str, into: &mut Vec<(f64, f64)>| {
            if let Some(y) = v
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .filter(|y| y.abs() < PLOTTABLE)
            {
                into.push((step, y));
            }
        };
        push("loss", &mut c.loss);
        push("valid_loss", &mut c.valid_loss);
        push("lr", &mut c.lr);
        if let Some(object) = v.as_object() {
            for key in object.keys().filter(|k| is_score(k)) {
                let name = match key.as_str() {
                    "masked_acc" => "train",
                    "valid_acc" => "valid",
                    other => other.trim_start_matches("valid_"),
                };
                push(key, c.scores.entry(name.to_string()).or_default());
            }
        }
    }
    if c.loss.is_empty() {
        bail!("{}: no logged steps to plot", metrics.display());
    }
    Ok(c)
}

fn range(series: &[&[(f64, f64)]]) -> (f64, f64) {
    let ys = series.iter().flat_map(|s| s.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !lo.is_finite() || !hi.is_finite() {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo, hi + (hi - lo) * 0.05)
    }
}

/// A named series and its colour.
type Line<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

/// `plot`: a run's curves into `output`, by default the run's own `curves.png`, which
/// is ours to replace; in any other directory, and at any path given, the file must be
/// new (it is the user's).
pub fn plot_command(run: &Path, output: Option<PathBuf>) -> Result<()> {
    let output = match output {
        Some(output) => {
            crate::run::outputs::refuse_existing(&output, "--output")?;
            output
        }
        None => {
            let own = run.join(PLOT_FILE);
            if !crate::run::run_dir::is_run_dir(run) {
                crate::run::outputs::refuse_existing(&own, "the plot")?;
            }
            own
        }
    };
    plot_run(run, &output)?;
    println!("wrote {}", output.display());
    Ok(())
}

/// Draws `run_dir/metrics.jsonl` into `output`.
pub fn plot_run(run_dir: &Path, output: &Path) -> Result<()> {
    let curves = read(&run_dir.join("metrics.jsonl"))?;
    // Registering twice (pretrain, then plot in one process) is harmless.
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let last = curves.loss.last().map_or(1.0, |p| p.0).max(1.0);
    // A failed write leaves no PNG that looks complete.
    roberta_fs::write_path(output, roberta_fs::Publish::Replace, |tmp| {
        draw_into(&curves, last, tmp)
    })
    .with_context(|| format!("writing {}", output.display()))
}

fn draw_into(curves: &Curves, last: f64, output: &Path) -> Result<()> {
    let root = BitMapBackend::new(output, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let panels = root.split_evenly((3, 1));
    const PALETTE: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let scores: Vec<Line> = curves
        .scores
        .iter()
        .zip(PALETTE.iter().cycle())
        .map(|((name, points), color)| (name.as_str(), points.as_slice(), *color))
        .collect();
    let series: [(&str, Vec<Line>); 3] = [
        (
            "loss",
            vec![
                ("train", &curves.loss, BLUE),
                ("valid", &curves.valid_loss, RED),
            ],
        ),
        ("learning rate", vec![("lr", &curves.lr, BLACK)]),
        (
            "accuracy (pretraining: masked tokens) and validation metrics",
            scores,
        ),
    ];
    for (panel, (title, lines)) in panels.iter().zip(series) {
        let all: Vec<&[(f64, f64)]> = lines.iter().map(|l| l.1).collect();
        let (lo, hi) = range(&all);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..last, lo..hi)
            .map_err(draw)?;
        chart
            .configure_mesh()
            .x_desc("update")
            .draw()
            .map_err(draw)?;
        for (name, points, color) in lines {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw)?;
    }
    root.present().map_err(draw)?;
    Ok(())
}

/// A drawing error; one that is the image file's write failing reads as the OS says it.
fn draw<E: std::error::Error>(e: E) -> anyhow::Error {
    match crate::run::outputs::os_error_in(&format!("{e:?}")) {
        Some(io) => anyhow::Error::new(io),
        None => anyhow::anyhow!("drawing the plot: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_from_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (1..=20)
            .map(|s| {
                let valid = if s % 5 == 0 {
                    format!(r#","valid_loss":{},"valid_acc":0.3"#, 5.0 - s as f64 / 10.0)
                } else {
                    String::new()
                };
                format!(
                    "{{\"step\":{s},\"loss\":{},\"lr\":0.001,\"masked_acc\":0.2{valid}}}\n",
                    6.0 - s as f64 / 10.0
                )
            })
            .collect();
        std::fs::write(dir.path().join("metrics.jsonl"), lines).unwrap();
        let out = dir.path().join(PLOT_FILE);
        plot_run(dir.path(), &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // Fine-tuning's metrics, and a run without any validation: still a picture.
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            "{\"step\":1,\"loss\":0.7,\"lr\":0.1}\n{\"step\":2,\"loss\":0.6,\"lr\":0.1,\"valid_mcc\":0.2,\"valid_accuracy\":0.7}\n",
        )
        .unwrap();
        plot_run(dir.path(), &out).unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            "{\"step\":1,\"loss\":0.7,\"lr\":0.1}\n",
        )
        .unwrap();
        plot_run(dir.path(), &out).unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), "").unwrap();
        assert!(
            plot_run(dir.path(), &out)
                .unwrap_err()
                .to_string()
                .contains("no logged steps")
        );
    }
}
