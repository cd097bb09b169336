//! Fine-tuning metrics, computed as the reference implementations do: GLUE's (scikit-learn
//! accuracy, F1, Matthews correlation; scipy Pearson and Spearman), the official SQuAD
//! v1.1/v2.0 evaluation script's answer normalisation, exact match and F1, and
//! conlleval's entity-level F1 (as `seqeval` computes it by default).

use std::collections::{BTreeMap, HashMap};

/// `name value` pairs for a log line.
pub fn format_metrics(m: &Metrics) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join("  ")
}

pub fn accuracy(predicted: &[usize], gold: &[usize]) -> f64 {
    let correct = predicted.iter().zip(gold).filter(|(p, g)| p == g).count();
    correct as f64 / gold.len().max(1) as f64
}

/// F1 of one class (scikit-learn's `f1_score(average="binary", pos_label=positive)`);
/// 0 when the class is neither predicted nor present.
pub fn f1_for(predicted: &[usize], gold: &[usize], positive: usize) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for (&p, &g) in predicted.iter().zip(gold) {
        match (p == positive, g == positive) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => {}
        }
    }
    f1_from_counts(tp, fp, fn_)
}

fn f1_from_counts(tp: f64, fp: f64, fn_: f64) -> f64 {
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// Unweighted mean of the per-class F1 over the classes present in either list.
pub fn f1_macro(predicted: &[usize], gold: &[usize]) -> f64 {
    let mut classes: Vec<usize> = predicted.iter().chain(gold).copied().collect();
    classes.sort_unstable();
    classes.dedup();
    let sum: f64 = classes.iter().map(|&c| f1_for(predicted, gold, c)).sum();
    sum / classes.len().max(1) as f64
}

/// Matthews correlation, in its multi-class form (Gorodkin's R_K, as scikit-learn), which
/// for two classes is the familiar (TP·TN − FP·FN) / √(…); 0 when undefined.
pub fn matthews(predicted: &[usize], gold: &[usize]) -> f64 {
    let classes = predicted.iter().chain(gold).max().map_or(0, |m| m + 1);
    let mut confusion = vec![vec![0.0f64; classes]; classes];
    for (&p, &g) in predicted.iter().zip(gold) {
        confusion[g][p] += 1.0;
    }
    let n = gold.len() as f64;
    let correct: f64 = (0..classes).map(|k| confusion[k][k]).sum();
    let true_per: Vec<f64> = confusion.iter().map(|row| row.iter().sum()).collect();
    let pred_per: Vec<f64> = (0..classes)
        .map(|k| confusion.iter().map(|row| row[k]).sum())
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let cov_pg = correct * n - dot(&pred_per, &true_per);
    let cov_pp = n * n - dot(&pred_per, &pred_per);
    let cov_gg = n * n - dot(&true_per, &true_per);
    if cov_pp == 0.0 || cov_gg == 0.0 {
        0.0
    } else {
        cov_pg / (cov_pp * cov_gg).sqrt()
    }
}

/// Pearson's r; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n == 0.0 {
        return 0.0;
    }
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks from 1, ties sharing their average rank (scipy's `rankdata`).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = average;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's ρ: Pearson's r of the ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// The official SQuAD normalisation: lower case, punctuation removed, the articles
/// "a", "an", "the" removed, whitespace collapsed.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !(c.is_ascii_punctuation()))
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn exact_match_one(prediction: &str, gold: &str) -> f64 {
    f64::from(normalize_answer(prediction) == normalize_answer(gold))
}

/// Token-overlap F1 after normalisation; an empty answer matches only an empty one
/// (SQuAD v2.0's no-answer rule).
fn f1_one(prediction: &str, gold: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(gold);
    let p: Vec<&str> = p.split_whitespace().collect();
    let g: Vec<&str> = g.split_whitespace().collect();
    if p.is_empty() || g.is_empty() {
        return f64::from(p == g);
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &g {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0.0;
    for w in &p {
        if let Some(c) = counts.get_mut(w)
            && *c > 0
        {
            *c -= 1;
            common += 1.0;
        }
    }
    if common == 0.0 {
        return 0.0;
    }
    let precision = common / p.len() as f64;
    let recall = common / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// SQuAD exact match and F1 (in percent, as the official script prints them), each the
/// best over a question's gold answers; a question without answers has the gold `""`.
pub fn squad(predictions: &[String], golds: &[Vec<String>]) -> (f64, f64) {
    let (mut em, mut f1) = (0.0, 0.0);
    for (p, g) in predictions.iter().zip(golds) {
        let empty = [String::new()];
        let g: &[String] = if g.is_empty() { &empty } else { g };
        em += g.iter().map(|a| exact_match_one(p, a)).fold(0.0, f64::max);
        f1 += g.iter().map(|a| f1_one(p, a)).fold(0.0, f64::max);
    }
    let n = predictions.len().max(1) as f64;
    (100.0 * em / n, 100.0 * f1 / n)
}

/// An entity: its type and the half-open range of words it covers.
pub type Entity = (String, usize, usize);

/// The entities of a tag sequence, read as conlleval does: IOB2, IOB1 and BIOES alike;
/// an `I-X` after `O` or after another type starts an entity.
pub fn entities(tags: &[String]) -> Vec<Entity> {
    let split = |t: &str| -> (char, String) {
        if t == "O" || t.is_empty() {
            ('O', String::new())
        } else if let Some((prefix, kind)) = t.split_once(['-', '_']) {
            (prefix.chars().next().unwrap_or('I'), kind.to_string())
        } else {
            ('I', t.to_string())
        }
    };
    let mut found = Vec::new();
    let mut open: Option<(String, usize)> = None;
    let mut previous = ('O', String::new());
    for (i, tag) in tags.iter().enumerate() {
        let (prefix, kind) = split(tag);
        let ends = match (&previous, prefix) {
            (_, 'O') => true,
            ((p, _), _) if *p == 'E' || *p == 'S' => true,
            (_, 'B' | 'S') => true,
            ((_, k), _) => *k != kind,
        };
        if ends && let Some((k, start)) = open.take() {
            found.push((k, start, i));
        }
        let starts = prefix != 'O' && open.is_none();
        if starts {
            open = Some((kind.clone(), i));
        }
        previous = (prefix, kind);
    }
    if let Some((k, start)) = open {
        found.push((k, start, tags.len()));
    }
    found
}

/// Micro-averaged entity precision, recall and F1 over sentences: an entity counts only
/// when its type and both boundaries match.
pub fn entity_prf(predicted: &[Vec<String>], gold: &[Vec<String>]) -> (f64, f64, f64) {
    let (mut tp, mut n_pred, mut n_gold) = (0.0, 0.0, 0.0);
    for (p, g) in predicted.iter().zip(gold) {
        let p = entities(p);
        let g = entities(g);
        n_pred += p.len() as f64;
        n_gold += g.len() as f64;
        tp += p.iter().filter(|e| g.contains(e)).count() as f64;
    }
    let precision = if n_pred > 0.0 { tp / n_pred } else { 0.0 };
    let recall = if n_gold > 0.0 { tp / n_gold } else { 0.0 };
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    (precision, recall, f1)
}

/// The metrics of a classification: accuracy, Matthews correlation, and F1 (of label 1
/// with two labels, as GLUE's MRPC; the macro average otherwise, also given for two).
pub fn classification(predicted: &[usize], gold: &[usize], num_labels: usize) -> Metrics {
    let mut m = Metrics::new();
    m.insert("accuracy".into(), accuracy(predicted, gold));
    if num_labels == 2 {
        m.insert("f1".into(), f1_for(predicted, gold, 1));
    }
    m.insert("f1_macro".into(), f1_macro(predicted, gold));
    m.insert("mcc".into(), matthews(predicted, gold));
    m
}

pub fn regression(predicted: &[f64], gold: &[f64]) -> Metrics {
    let mse = predicted
        .iter()
        .zip(gold)
        .map(|(p, g)| (p - g) * (p - g))
        .sum::<f64>()
        / gold.len().max(1) as f64;
    Metrics::from([
        ("pearson".into(), pearson(predicted, gold)),
        ("spearman".into(), spearman(predicted, gold)),
        ("mse".into(), mse),
    ])
}

/// Metric name → value, in a stable order for printing and JSON.
pub type Metrics = BTreeMap<String, f64>;

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn matthews_by_hand() {
        // TP=3 TN=2 FP=1 FN=2: (3·2 − 1·2) / √(4·5·3·4) = 4 / √240.
        let gold = [1, 1, 1, 1, 1, 0, 0, 0];
        let pred = [1, 1, 1, 0, 0, 0, 0, 1];
        close(matthews(&pred, &gold), 4.0 / 240f64.sqrt());
        close(matthews(&gold, &gold), 1.0);
        close(matthews(&[1, 1, 1], &[0, 1, 1]), 0.0);
        // Three classes against scikit-learn's matthews_corrcoef: 0.5 exactly.
        let gold = [0, 1, 2, 0, 1, 2];
        let pred = [0, 2, 1, 0, 1, 2];
        close(matthews(&pred, &gold), 0.5);
    }

    #[test]
    fn f1_accuracy_by_hand() {
        let gold = [1, 1, 1, 1, 1, 0, 0, 0];
        let pred = [1, 1, 1, 0, 0, 0, 0, 1];
        // Positive class: P = 3/4, R = 3/5 → F1 = 2·3/(2·3+1+2) = 2/3.
        close(f1_for(&pred, &gold, 1), 2.0 / 3.0);
        // Class 0: TP=2 FP=2 FN=1 → 4/7.
        close(f1_macro(&pred, &gold), (2.0 / 3.0 + 4.0 / 7.0) / 2.0);
        close(accuracy(&pred, &gold), 5.0 / 8.0);
        close(f1_for(&[0, 0], &[0, 0], 1), 0.0);
    }

    #[test]
    fn correlations_by_hand() {
        close(pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]), 1.0);
        close(pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        // x = 1..4, y = [1, 3, 2, 4]: r = 0.8.
        close(pearson(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]), 0.8);
        // Monotone but not linear: Spearman 1, Pearson below.
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = [1.0, 10.0, 100.0, 1000.0];
        close(spearman(&x, &y), 1.0);
        assert!(pearson(&x, &y) < 0.95);
        // Ties take average ranks: [1, 2, 2, 3] → [1, 2.5, 2.5, 4].
        assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), vec![1.0, 2.5, 2.5, 4.0]);
    }

    #[test]
    fn squad_normalisation_and_scores() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(normalize_answer("an apple, a pear"), "apple pear");
        let (em, f1) = squad(
            &["the Denver Broncos".into(), "Santa Clara".into()],
            &[
                vec!["Denver Broncos".into(), "Broncos".into()],
                vec!["Levi's Stadium in Santa Clara, California".into()],
            ],
        );
        close(em, 50.0);
        // Second: pred {santa, clara}, gold {levis, stadium, in, santa, clara, california}:
        // P = 1, R = 2/6 → F1 = 0.5; first is exact (F1 1). Mean 75%.
        close(f1, 75.0);
        // SQuAD v2.0: no gold answer, empty prediction → exact.
        close(squad(&["".into()], &[vec![]]).0, 100.0);
        close(squad(&["x".into()], &[vec![]]).1, 0.0);
    }

    #[test]
    fn entities_as_conlleval_reads_them() {
        let tags = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            entities(&tags("B-PER I-PER O B-LOC B-LOC I-ORG")),
            vec![
                ("PER".into(), 0, 2),
                ("LOC".into(), 3, 4),
                ("LOC".into(), 4, 5),
                ("ORG".into(), 5, 6)
            ]
        );
        // IOB1: I- after O starts an entity; a type change splits.
        assert_eq!(
            entities(&tags("I-PER I-PER I-LOC")),
            vec![("PER".into(), 0, 2), ("LOC".into(), 2, 3)]
        );
        // Gold: PER(0,2), LOC(3,4); predicted: PER(0,1) (wrong boundary), LOC(3,4).
        let (p, r, f) = entity_prf(&[tags("B-PER O O B-LOC")], &[tags("B-PER I-PER O B-LOC")]);
        close(p, 0.5);
        close(r, 0.5);
        close(f, 0.5);
    }
}
