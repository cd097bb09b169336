#!/usr/bin/env python3
"""sentence-transformers round trip, and the linear probe against scikit-learn.

1. For each pooling (mean, cls, max), with and without normalisation: exports a model
   with `roberta-train export --sentence-transformers`, loads the export with
   `SentenceTransformer(path)`, and compares its `encode()` of texts of several lengths
   (a batch that pads; one longer than the model takes, cut as sentence-transformers cuts
   it) with `roberta-train embed --pool … [--normalize] --truncate` (.npy output).
   Fails above 1e-5.
2. With --probe-train/--probe-valid (labeled TSV with `sentence` and `label`, e.g. GLUE
   SST-2): `roberta-train probe` against scikit-learn's LogisticRegression (same C,
   StandardScaler) on the vectors `embed --pool mean` writes. Fails above 1.5 points.

Usage (from the repository root, after `cargo build --release`):
    python3 -m venv .venv && .venv/bin/pip install torch transformers sentence-transformers scikit-learn
    .venv/bin/python scripts/check_sentence_transformers.py [--model DIR]
        [--probe-train ../shared/data/glue/SST-2/train.tsv --probe-valid ../shared/data/glue/SST-2/dev.tsv]
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release" / "roberta-train"
FIXTURE = REPO / "crates" / "roberta-model" / "tests" / "fixtures" / "mlm"
TOLERANCE = 1e-5
PROBE_POINTS = 1.5

TEXTS = [
    "The cat sat on the mat.",
    "A robustly optimized BERT pretraining approach drops next sentence prediction, "
    "and dynamic masking draws a fresh mask every time a sequence is served.",
    "Café 🙂",
    "Large batches help.",
]


def roberta_train(*args):
    done = subprocess.run([str(BIN), *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"roberta-train {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done.stdout


def round_trip(work, model):
    from sentence_transformers import SentenceTransformer

    inputs = work / "texts.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    worst = 0.0
    for pool in ("mean", "cls", "max"):
        for normalize in (False, True):
            flag = ["--normalize"] if normalize else []
            name = f"{pool}{'-norm' if normalize else ''}"
            out = work / f"st-{name}"
            roberta_train("export", "--sentence-transformers", "--pool", pool, *flag,
                          "--checkpoint", model, "--out", out)
            ours_path = work / f"{name}.npy"
            roberta_train("embed", "--model", model, "--pool", pool, *flag, "--truncate",
                          "--input", inputs, "--output", ours_path)
            ours = np.load(ours_path)
            st = SentenceTransformer(str(out), device="cpu")
            theirs = st.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
            diff = float(np.abs(ours - theirs).max())
            worst = max(worst, diff)
            print(f"{name:10s} shape {ours.shape}  max abs diff vs SentenceTransformer.encode {diff:.2e}")
    return worst


def read_labeled(path, limit):
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[:limit]


def probe_check(work, model, train, valid, limit, c):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    result = json.loads(roberta_train(
        "probe", "--model", model, "--train", train, "--valid", valid, "--pool", "mean",
        "--c", c, "--max-examples", limit))
    ours = result["metrics"]["accuracy"]
    vectors = {}
    for name, path in (("train", train), ("valid", valid)):
        rows = read_labeled(path, limit)
        jsonl = work / f"{name}.jsonl"
        jsonl.write_text("".join(json.dumps({"text": r["sentence"]}) + "\n" for r in rows))
        out = work / f"{name}-probe.npy"
        roberta_train("embed", "--model", model, "--pool", "mean", "--truncate",
                      "--input", jsonl, "--output", out)
        vectors[name] = (np.load(out), [r["label"] for r in rows])
    scaler = StandardScaler().fit(vectors["train"][0])
    clf = LogisticRegression(C=c, max_iter=1000)
    clf.fit(scaler.transform(vectors["train"][0]), vectors["train"][1])
    theirs = float((clf.predict(scaler.transform(vectors["valid"][0])) ==
                    np.array(vectors["valid"][1])).mean())
    print(f"probe accuracy: roberta-train {ours:.4f}, scikit-learn {theirs:.4f} "
          f"({result['train_examples']} train, {result['valid_examples']} valid examples)")
    return abs(ours - theirs) * 100


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(FIXTURE), help="HF model dir, run or checkpoint")
    p.add_argument("--probe-train")
    p.add_argument("--probe-valid")
    p.add_argument("--probe-examples", type=int, default=2000)
    p.add_argument("--c", type=float, default=1.0)
    args = p.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        worst = round_trip(work, args.model)
        if worst > TOLERANCE:
            print(f"FAIL: {worst:.2e} > {TOLERANCE:.0e}")
            failed = True
        if args.probe_train and args.probe_valid:
            gap = probe_check(work, args.model, args.probe_train, args.probe_valid,
                              args.probe_examples, args.c)
            if gap > PROBE_POINTS:
                print(f"FAIL: probe accuracy differs by {gap:.2f} points > {PROBE_POINTS}")
                failed = True
    print("FAILED" if failed else "ok")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
