//! A linear probe (SentEval's measure of frozen sentence vectors): an L2-regularised
//! multinomial logistic regression (`linfa-logistic`, L-BFGS) on standardised train
//! vectors, scored on valid; a ridge regression for numeric labels. Run by `probe` and
//! at each evaluation of a pretraining run with `[eval.probe]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2};
use roberta_model::{Kernels, RobertaConfig, RobertaModel};

use crate::sentences::{PoolingChoice, Rows, TokenizerFrom, encode};
use crate::tasks::metrics::{self, Metrics};
use roberta_data::labeled::Columns;

/// A labeled file's first rows as token ids, read once and embedded at each probe.
pub struct Tokenized {
    pub path: PathBuf,
    pub ids: Vec<Vec<u32>>,
    /// Each row's line and raw label.
    pub labels: Vec<(usize, String)>,
}

impl Tokenized {
    /// Inputs longer than the model takes are cut, as fine-tuning cuts them.
    pub fn read(
        path: &Path,
        columns: &Columns,
        tokenizer: TokenizerFrom,
        config: &RobertaConfig,
        max_examples: usize,
    ) -> Result<Self> {
        let rows = Rows::open(path, Some(columns), tokenizer, config, true)?;
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        for row in rows.take(max_examples) {
            let row = row?;
            let label = row
                .label
                .with_context(|| format!("{}:{}: no label", path.display(), row.line))?;
            ids.push(row.ids);
            labels.push((row.line, label));
        }
        Ok(Self {
            path: path.to_path_buf(),
            ids,
            labels,
        })
    }

    /// The rows' pooled vectors under `model`.
    pub fn embed<B: Kernels>(
        &self,
        model: &RobertaModel<B>,
        pad: u32,
        batch_size: usize,
        choice: PoolingChoice,
        device: &B::Device,
    ) -> Result<Labeled<'_>> {
        Ok(Labeled {
            path: &self.path,
            vectors: encode(model, &self.ids, pad, batch_size, choice, device)?,
            labels: self.labels.clone(),
        })
    }
}

/// A probe run at every evaluation of a pretraining run (`[eval.probe]`): the files are
/// tokenized once; each evaluation embeds them with the current encoder and fits anew.
pub struct Probe {
    pub train: Tokenized,
    pub valid: Tokenized,
    pub choice: PoolingChoice,
    pub regression: bool,
    pub c: f64,
    pub batch_size: usize,
    pub pad: u32,
}

impl Probe {
    /// `probe_acc` and `probe_f1_macro`, or `probe_pearson` and `probe_spearman`: logged
    /// with the evaluation's other metrics as `valid_probe_…`.
    pub fn score<B: Kernels>(
        &self,
        model: &RobertaModel<B>,
        device: &B::Device,
    ) -> Result<Metrics> {
        let started = std::time::Instant::now();
        let train = self
            .train
            .embed(model, self.pad, self.batch_size, self.choice, device)?;
        let valid = self
            .valid
            .embed(model, self.pad, self.batch_size, self.choice, device)?;
        let scores = fit_and_score(&train, &valid, self.regression, self.c)?;
        tracing::debug!(
            "probe of {} + {} examples in {:.3} s",
            train.vectors.len(),
            valid.vectors.len(),
            started.elapsed().as_secs_f64()
        );
        let kept = [
            ("accuracy", "probe_acc"),
            ("f1_macro", "probe_f1_macro"),
            ("pearson", "probe_pearson"),
            ("spearman", "probe_spearman"),
        ];
        Ok(kept
            .into_iter()
            .filter_map(|(from, to)| scores.get(from).map(|&v| (to.to_string(), v)))
            .collect())
    }
}

/// Vectors of one labeled file, with each row's line and raw label.
pub struct Labeled<'a> {
    pub path: &'a Path,
    pub vectors: Vec<Vec<f32>>,
    pub labels: Vec<(usize, String)>,
}

/// Iterations of L-BFGS: scikit-learn's `LogisticRegression` stops at 100; standardised
/// features converge well before this.
const MAX_ITERATIONS: u64 = 200;

/// Fits on `train`, scores on `valid`: accuracy, F1 and Matthews correlation for labels
/// (classes are the train file's), Pearson, Spearman and MSE with `regression`. `c` is
/// scikit-learn's inverse regularisation strength (the penalty is `‖W‖² / 2C` beside
/// the summed log-loss; ridge: `alpha = 1/C`).
pub fn fit_and_score(
    train: &Labeled,
    valid: &Labeled,
    regression: bool,
    c: f64,
) -> Result<Metrics> {
    ensure!(
        c > 0.0 && c.is_finite(),
        "C must be a positive number, not {c}"
    );
    ensure!(
        !train.vectors.is_empty(),
        "{}: no examples",
        train.path.display()
    );
    ensure!(
        !valid.vectors.is_empty(),
        "{}: no examples",
        valid.path.display()
    );
    let scaler = Scaler::fit(&train.vectors);
    let x_train = scaler.apply(&train.vectors);
    let x_valid = scaler.apply(&valid.vectors);
    if regression {
        let y_train = values(train)?;
        let y_valid = values(valid)?;
        let model = Ridge::fit(&x_train, &y_train, 1.0 / c);
        let predicted: Vec<f64> = x_valid
            .rows()
            .into_iter()
            .map(|r| model.predict(r))
            .collect();
        return Ok(metrics::regression(
            &predicted,
            y_valid.as_slice().expect("contiguous"),
        ));
    }
    let classes: Vec<&str> = train
        .labels
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.len() < 2 {
        bail!(
            "{}: every example has the label {:?}; a probe needs at least two classes",
            train.path.display(),
            classes.first().copied().unwrap_or_default()
        );
    }
    let index: BTreeMap<&str, usize> = classes.iter().enumerate().map(|(i, &l)| (l, i)).collect();
    let y_train: Array1<usize> = train
        .labels
        .iter()
        .map(|(_, l)| index[l.as_str()])
        .collect();
    let mut y_valid = Vec::with_capacity(valid.labels.len());
    for (line, label) in &valid.labels {
        let Some(&i) = index.get(label.as_str()) else {
            bail!(
                "{}:{line}: the label {label:?} never occurs in {} (its labels: {})",
                valid.path.display(),
                train.path.display(),
                classes.join(", ")
            );
        };
        y_valid.push(i);
    }
    let model = MultiLogisticRegression::default()
        .alpha(1.0 / c)
        .max_iterations(MAX_ITERATIONS)
        .fit(&Dataset::new(x_train, y_train))
        .context("fitting the logistic regression")?;
    let predicted = model.predict(&x_valid);
    Ok(metrics::classification(
        predicted.as_slice().expect("contiguous"),
        &y_valid,
        classes.len(),
    ))
}

fn values(data: &Labeled) -> Result<Array1<f64>> {
    data.labels
        .iter()
        .map(|(line, l)| {
            l.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .with_context(|| {
                    format!(
                        "{}:{line}: the label {l:?} is not a number (--regression)",
                        data.path.display()
                    )
                })
        })
        .collect()
}

/// Standardisation with the train vectors' mean and (population) standard deviation, as
/// scikit-learn's `StandardScaler`; a constant feature is only centred.
struct Scaler {
    mean: Vec<f64>,
    scale: Vec<f64>,
}

impl Scaler {
    fn fit(vectors: &[Vec<f32>]) -> Self {
        let width = vectors[0].len();
        let n = vectors.len() as f64;
        let mut mean = vec![0f64; width];
        for v in vectors {
            for (m, &x) in mean.iter_mut().zip(v) {
                *m += f64::from(x) / n;
            }
        }
        let mut var = vec![0f64; width];
        for v in vectors {
            for ((s, &x), m) in var.iter_mut().zip(v).zip(&mean) {
                *s += (f64::from(x) - m).powi(2) / n;
            }
        }
        let scale = var
            .into_iter()
            .map(|v| if v > 0.0 { v.sqrt() } else { 1.0 })
            .collect();
        Self { mean, scale }
    }

    fn apply(&self, vectors: &[Vec<f32>]) -> Array2<f64> {
        let width = self.mean.len();
        Array2::from_shape_fn((vectors.len(), width), |(i, j)| {
            (f64::from(vectors[i][j]) - self.mean[j]) / self.scale[j]
        })
    }
}

/// `min ‖Xw + b − y‖² + alpha ‖w‖²` (scikit-learn's `Ridge`, intercept unpenalised):
/// on centred data, `(XᵀX + alpha I) w = Xᵀ(y − ȳ)`, solved by Cholesky.
struct Ridge {
    weights: Array1<f64>,
    intercept: f64,
}

impl Ridge {
    fn fit(x: &Array2<f64>, y: &Array1<f64>, alpha: f64) -> Self {
        let mean_x = x.mean_axis(ndarray::Axis(0)).expect("rows");
        let intercept_y = y.mean().expect("rows");
        let xc = x - &mean_x;
        let yc = y - intercept_y;
        let mut a = xc.t().dot(&xc);
        for i in 0..a.nrows() {
            a[[i, i]] += alpha;
        }
        let weights = cholesky_solve(a, xc.t().dot(&yc));
        let intercept = intercept_y - mean_x.dot(&weights);
        Self { weights, intercept }
    }

    fn predict(&self, row: ndarray::ArrayView1<f64>) -> f64 {
        row.dot(&self.weights) + self.intercept
    }
}

/// Solves `a x = b` for a symmetric positive definite `a` (ridge's `alpha > 0` makes it so).
fn cholesky_solve(mut a: Array2<f64>, b: Array1<f64>) -> Array1<f64> {
    let n = a.nrows();
    for j in 0..n {
        let mut d = a[[j, j]];
        for k in 0..j {
            d -= a[[j, k]] * a[[j, k]];
        }
        let d = d.max(f64::MIN_POSITIVE).sqrt();
        a[[j, j]] = d;
        for i in j + 1..n {
            let mut s = a[[i, j]];
            for k in 0..j {
                s -= a[[i, k]] * a[[j, k]];
            }
            a[[i, j]] = s / d;
        }
    }
    let mut z = b;
    for i in 0..n {
        for k in 0..i {
            z[i] -= a[[i, k]] * z[k];
        }
        z[i] /= a[[i, i]];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            z[i] -= a[[k, i]] * z[k];
        }
        z[i] /= a[[i, i]];
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labeled<'a>(path: &'a Path, rows: &[(f32, f32, &str)]) -> Labeled<'a> {
        Labeled {
            path,
            vectors: rows.iter().map(|&(a, b, _)| vec![a, b]).collect(),
            labels: rows
                .iter()
                .enumerate()
                .map(|(i, &(_, _, l))| (i + 1, l.to_string()))
                .collect(),
        }
    }

    /// Three classes, each a cloud around its own corner: a linear probe separates them.
    fn clouds(path: &Path, n: usize, shift: usize) -> Labeled<'_> {
        let corners = [(0.0, 0.0, "a"), (4.0, 0.0, "b"), (0.0, 4.0, "c")];
        let rows: Vec<(f32, f32, &str)> = (0..n)
            .map(|i| {
                let (x, y, l) = corners[i % 3];
                let jitter = (((i + shift) * 7919 % 101) as f32 / 101.0 - 0.5) * 1.5;
                let jitter2 = (((i + shift) * 104_729 % 97) as f32 / 97.0 - 0.5) * 1.5;
                (x + jitter, y + jitter2, l)
            })
            .collect();
        labeled(path, &rows)
    }

    #[test]
    fn separable_classes_are_found() {
        let path = Path::new("train.tsv");
        let m = fit_and_score(&clouds(path, 90, 0), &clouds(path, 30, 500), false, 1.0).unwrap();
        assert_eq!(m["accuracy"], 1.0, "{m:?}");
    }

    #[test]
    fn ridge_recovers_a_line() {
        let path = Path::new("sts.tsv");
        let rows: Vec<(f32, f32, String)> = (0..40)
            .map(|i| {
                let (a, b) = (i as f32 / 7.0, ((i * 13) % 11) as f32);
                (a, b, (2.0 * a - 0.5 * b + 1.0).to_string())
            })
            .collect();
        let rows: Vec<(f32, f32, &str)> =
            rows.iter().map(|(a, b, l)| (*a, *b, l.as_str())).collect();
        let data = labeled(path, &rows);
        let m = fit_and_score(&data, &data, true, 1e6).unwrap();
        assert!(m["pearson"] > 0.9999, "{m:?}");
        assert!(m["mse"] < 1e-6, "{m:?}");
    }

    #[test]
    fn one_class_and_unseen_labels_are_refused() {
        let (train, valid) = (Path::new("train.tsv"), Path::new("valid.tsv"));
        let one = labeled(train, &[(0.0, 1.0, "x"), (1.0, 0.0, "x")]);
        let err = fit_and_score(&one, &one, false, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least two classes"), "{err}");
        let two = labeled(train, &[(0.0, 1.0, "x"), (1.0, 0.0, "y")]);
        let other = labeled(valid, &[(0.0, 1.0, "x"), (1.0, 0.0, "z")]);
        let err = fit_and_score(&two, &other, false, 1.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("valid.tsv:2") && err.contains("\"z\""),
            "{err}"
        );
    }
}
