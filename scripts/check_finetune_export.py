#!/usr/bin/env python3
"""Export → transformers round trip for fine-tuned models.

For each task type, fine-tunes the tiny MLM fixture for a few steps with roberta-train,
exports the last checkpoint with `roberta-train export`, loads the export with
transformers' AutoModelFor… and AutoTokenizer, and compares:
  - sequence classification (pairs): every class probability of `roberta-train predict`;
  - regression: every predicted score;
  - QA: the score (start + end logit) of every predicted span, and the span itself;
  - token classification: every predicted tag;
  - multiple choice (SWAG's layout, tokenized as HF's `run_swag` does): every choice's
    probability.
Prints the largest difference per task and fails above 1e-4.

Usage (from the repository root, after `cargo build --release`):
    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors
    .venv/bin/python scripts/check_finetune_export.py
"""

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release" / "roberta-train"
FIXTURE = REPO / "crates" / "roberta-model" / "tests" / "fixtures" / "mlm"
TOLERANCE = 1e-4


def roberta_train(*args):
    subprocess.run([str(BIN), *map(str, args)], cwd=REPO, check=True, capture_output=True)


def finetune_and_export(work, name, task_toml, train, valid):
    config = work / f"{name}.toml"
    config.write_text(
        f"""
[task]
{task_toml}
[data]
train = "{train}"
valid = "{valid}"
[optim]
lr = 1e-3
[train]
epochs = 1
batch_size = 8
max_steps = 4
"""
    )
    run = work / f"run-{name}"
    roberta_train("finetune", "--config", config, "--init", FIXTURE, "--run-dir", run)
    out = work / f"hf-{name}"
    roberta_train("export", "--checkpoint", run, "--out", out)
    return out


def limit(model):
    """Tokens the model takes: roberta-train cuts inputs there, as HF's truncation does."""
    return model.config.max_position_embeddings - model.config.pad_token_id - 1


def predict(model, data, work, name):
    out = work / f"pred-{name}.jsonl"
    roberta_train("predict", "--model", model, "--input", data, "--output", out)
    return [json.loads(line) for line in out.read_text().splitlines()]


def check_pairs(work):
    rows = ["sentence1\tsentence2\tlabel"]
    for i in range(40):
        rows.append(f"The cat sat {i} times.\tA dog ran {i % 7} miles.\t{'yes' if i % 3 else 'no'}")
    data = work / "pairs.tsv"
    data.write_text("\n".join(rows) + "\n")
    hf_dir = finetune_and_export(work, "pairs", 'type = "pair-classification"', data, data)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ours = predict(hf_dir, data, work, "pairs")
    worst = 0.0
    for line, p in zip(rows[1:], ours):
        a, b, _ = line.split("\t")
        with torch.no_grad():
            enc = tok(a, b, truncation="longest_first", max_length=limit(model), return_tensors="pt")
            probs = model(**enc).logits.softmax(-1)[0]
        for i, label in model.config.id2label.items():
            worst = max(worst, abs(probs[int(i)].item() - p["probabilities"][label]))
    return worst


def check_regression(work):
    rows = ["sentence1\tsentence2\tscore"]
    for i in range(40):
        rows.append(f"The cat sat {i} times.\tA cat sat {i % 5} times.\t{(i % 6) * 0.8}")
    data = work / "sts.tsv"
    data.write_text("\n".join(rows) + "\n")
    hf_dir = finetune_and_export(
        work, "sts", 'type = "regression"\ntext_a = "sentence1"\ntext_b = "sentence2"\nlabel = "score"', data, data
    )
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    assert model.config.problem_type == "regression", model.config.problem_type
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ours = predict(hf_dir, data, work, "sts")
    worst = 0.0
    for line, p in zip(rows[1:], ours):
        a, b, _ = line.split("\t")
        with torch.no_grad():
            enc = tok(a, b, truncation="longest_first", max_length=limit(model), return_tensors="pt")
            score = model(**enc).logits[0, 0].item()
        worst = max(worst, abs(score - p["score"]))
    return worst


def check_qa(work):
    facts = [
        ("Ann is in Oslo.", "Where?", "Oslo"),
        ("Ben has a drum.", "What?", "a drum"),
        ("Cleo was 9.", "Age?", "9"),
        ("Dan has a red car.", "Colour?", "red"),
    ]
    qas = []
    paragraphs = []
    for n, (context, question, answer) in enumerate(facts):
        paragraphs.append(
            {
                "context": context,
                "qas": [
                    {
                        "id": f"q{n}",
                        "question": question,
                        "answers": [{"text": answer, "answer_start": context.index(answer)}],
                    }
                ],
            }
        )
        qas.append((context, question))
    data = work / "qa.json"
    data.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    hf_dir = finetune_and_export(work, "qa", 'type = "qa"\nmax_length = 38\ndoc_stride = 8', data, data)
    model = AutoModelForQuestionAnswering.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ours = predict(hf_dir, data, work, "qa")
    worst = 0.0
    for (context, question), p in zip(qas, ours):
        enc = tok(question, context, return_tensors="pt", return_offsets_mapping=True)
        assert enc["input_ids"].shape[1] <= limit(model), "one window per question"
        offsets = enc.pop("offset_mapping")[0].tolist()
        seq = enc.sequence_ids(0)
        with torch.no_grad():
            out = model(**enc)
        if p["answer"] == "":
            continue
        starts = [i for i, (s, e) in enumerate(offsets) if seq[i] == 1 and s == p["start"]]
        ends = [i for i, (s, e) in enumerate(offsets) if seq[i] == 1 and e == p["end"]]
        assert starts and ends, (p, offsets)
        # A lone-space token has an empty span at the next word's start: several tokens
        # can share a character offset, so the span is whichever pair scores as ours did.
        worst = max(
            worst,
            min(
                abs(out.start_logits[0, s].item() + out.end_logits[0, e].item() - p["score"])
                for s in starts
                for e in ends
            ),
        )
        assert context[p["start"] : p["end"]] == p["answer"]
    return worst


def check_tags(work):
    lines = []
    for i in range(16):
        lines += [f"{['Alice', 'Bob'][i % 2]} B-PER", "visited O", f"{['Paris', 'Rome'][i % 2]} B-LOC", ""]
    data = work / "tags.conll"
    data.write_text("\n".join(lines) + "\n")
    hf_dir = finetune_and_export(work, "tags", 'type = "token-classification"', data, data)
    model = AutoModelForTokenClassification.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir, add_prefix_space=True)
    ours = predict(hf_dir, data, work, "tags")
    mismatches = 0
    for p in ours:
        enc = tok(p["words"], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            best = model(**enc).logits[0].argmax(-1).tolist()
        words = enc.word_ids(0)
        firsts = [i for i, w in enumerate(words) if w is not None and (i == 0 or words[i - 1] != w)]
        theirs = [model.config.id2label[best[i]] for i in firsts]
        mismatches += theirs != p["tags"]
    return float(mismatches)


def check_multiple_choice(work):
    data = REPO / "crates" / "roberta-train" / "tests" / "fixtures" / "swag.csv"
    hf_dir = finetune_and_export(work, "swag", 'type = "multiple-choice"\ntext_b = "sent2"', data, data)
    model = AutoModelForMultipleChoice.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ours = predict(hf_dir, data, work, "swag")
    worst = 0.0
    with data.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row, p in zip(rows, ours):
        endings = [row[f"ending{i}"] for i in range(4)]
        enc = tok([row["sent1"]] * 4, [f"{row['sent2']} {e}" for e in endings], truncation=True,
                  max_length=limit(model), padding=True, return_tensors="pt")
        with torch.no_grad():
            probs = model(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits.softmax(-1)[0]
        worst = max(worst, max(abs(a - b) for a, b in zip(probs.tolist(), p["probabilities"])))
    return worst


def main():
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: run `cargo build --release` first")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, check, what in [
            ("pair-classification", check_pairs, "max |Δ probability|"),
            ("regression", check_regression, "max |Δ score|"),
            ("qa", check_qa, "max |Δ span score|"),
            ("token-classification", check_tags, "sentences whose tags differ"),
            ("multiple-choice", check_multiple_choice, "max |Δ probability|"),
        ]:
            worst = check(work)
            ok = worst <= TOLERANCE
            failed |= not ok
            print(f"{name:22} {what}: {worst:.2e} {'ok' if ok else 'FAIL'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
