#!/usr/bin/env python3
"""Pretraining throughput: roberta-train against PyTorch, same machine, same run.

For each size (tiny, small, and roberta-base's geometry) every trainer takes MLM updates
on batches of sequences of 128 tokens with AdamW (β 0.9/0.98, ε 1e-6, weight decay
0.01), dropout 0.1, 15% masking:
- roberta-train through its CLI on the embedded corpus (and, for tiny and small, as two
  data-parallel replicas on the CPU, `--devices cpu,cpu`, half the batch each);
- transformers' RobertaForMaskedLM as users run it: the LM head on every position;
- the same PyTorch model with the LM head only at the masked positions (gather, then
  head: what roberta-train does, and what any PyTorch user gets in three lines). This is
  the engine-to-engine comparison.
Every row is 128 real tokens for every trainer: PyTorch gets random ids with no padding,
and roberta-train a copy of the embedded corpus with 200 documents to a line, so that its
FULL-SENTENCES packing cuts full blocks (the corpus as shipped packs blocks 95% full, and a
batch is padded to its longest row: its padding would be counted as work PyTorch is not
asked to do). torch runs on all cores. Prints tokens/s and both ratios (ours / baseline);
with --baseline-binary, also another build of roberta-train (a previous release) on the
same configs, and ours / that. The
vocabulary is roberta-base's when ../shared/data/roberta_base_tokenizer exists (the
realistic case, 50,265 tokens), else the embedded corpus's own.

    .venv/bin/python scripts/bench_vs_hf.py [--steps 30] [--sizes tiny,small,base] [--baseline-binary PATH]
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time

import torch
from transformers import RobertaConfig, RobertaForMaskedLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# hidden, layers, heads, ffn, sequences per update
SIZES = {"tiny": (128, 2, 2, 512, 16), "small": (256, 4, 4, 1024, 16), "base": (768, 12, 12, 3072, 8)}
LENGTH = 128


def tokenizer_dir():
    shared = os.path.join(ROOT, "..", "shared", "data", "roberta_base_tokenizer")
    return shared if os.path.exists(os.path.join(shared, "tokenizer.json")) else os.path.join(ROOT, "data", "tokenizer")


def full_block_corpus(work):
    """The embedded corpus, 200 documents to a line: each line is one long sentence, cut
    into full blocks."""
    path = os.path.join(work, "full-blocks.txt")
    if not os.path.exists(path):
        documents = open(os.path.join(ROOT, "data", "default-corpus", "train.txt")).read().split("\n\n")
        with open(path, "w") as f:
            for i in range(0, len(documents), 200):
                f.write(" ".join(" ".join(d.split()) for d in documents[i:i + 200]) + "\n\n")
    return path


def ours(size, steps, tok, work, devices="cpu", binary=os.path.join(ROOT, "target", "release", "roberta-train")):
    replicas = devices.count(",") + 1
    hidden, layers, heads, ffn, batch = SIZES[size]
    # Each build its own data directory: another release may keep another format.
    tag = hashlib.sha256(binary.encode()).hexdigest()[:8]
    config = os.path.join(work, f"{size}-{tag}.toml")
    with open(config, "w") as f:
        f.write(f"""
[model]
preset = "tiny"
hidden_size = {hidden}
num_hidden_layers = {layers}
num_attention_heads = {heads}
intermediate_size = {ffn}
[data]
train = ["{full_block_corpus(work)}"]
valid = ["{ROOT}/data/default-corpus/valid.txt"]
data_dir = "{work}/data-bin-{tag}"
tokenizer = "{tok}"
block_size = {LENGTH}
[optim]
lr = 5e-4
[schedule]
warmup_steps = 5
total_steps = {steps}
[train]
batch_size = {batch // replicas}
[checkpoint]
every = 0
keep = 1
[log]
every = 5
[eval]
every = 0
batches = 1
""")
    run_dir = tempfile.mkdtemp(prefix=f"run-{size}-{replicas}-", dir=work)
    os.rmdir(run_dir)
    subprocess.run([binary, "pretrain", "--config", config,
                    "--run-dir", run_dir, "--devices", devices], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    lines = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    # The first interval includes start-up.
    rates = [l["tokens_per_s"] for l in lines[1:]] or [lines[0]["tokens_per_s"]]
    return sum(rates) / len(rates)


def pytorch(size, steps, vocab, masked_only):
    """tokens/s of transformers' RobertaForMaskedLM; with `masked_only`, the LM head runs
    on the masked positions only."""
    hidden, layers, heads, ffn, batch = SIZES[size]
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=ffn, max_position_embeddings=LENGTH + 2, type_vocab_size=1)
    model = RobertaForMaskedLM(config)
    model.train()
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n)]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    ids = torch.randint(5, vocab - 1, (batch, LENGTH))
    labels = torch.full_like(ids, -100)
    masked = torch.rand(ids.shape) < 0.15
    labels[masked] = ids[masked]
    ids = ids.masked_fill(masked, vocab - 1)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        if masked_only:
            hidden_states = model.roberta(input_ids=ids).last_hidden_state
            logits = model.lm_head(hidden_states[masked])
            loss = torch.nn.functional.cross_entropy(logits, labels[masked])
        else:
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        times.append(time.perf_counter() - start)
    steady = times[5:] or times
    return batch * LENGTH / (sum(steady) / len(steady))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--baseline-binary", help="another roberta-train build to compare with, same run")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    tok = tokenizer_dir()
    vocab = len(json.load(open(os.path.join(tok, "tokenizer.json")))["model"]["vocab"])
    vocab += sum(1 for t in json.load(open(os.path.join(tok, "tokenizer.json")))["added_tokens"] if t["content"] == "<mask>" and t["id"] >= vocab)
    print(f"vocabulary {vocab} ({tok}); sequences of {LENGTH}; torch {torch.__version__} on {torch.get_num_threads()} threads")
    work = tempfile.mkdtemp()
    try:
        for size in args.sizes.split(","):
            batch = SIZES[size][4]
            a = ours(size, args.steps, tok, work)
            full = pytorch(size, args.steps, vocab, masked_only=False)
            masked = pytorch(size, args.steps, vocab, masked_only=True)
            line = (f"{size:5} batch {batch:2}: transformers (full head) {full:6.0f} | PyTorch masked-only head {masked:6.0f}"
                    f" | roberta-train {a:6.0f} tokens/s: {a / full:.2f}x full, {a / masked:.2f}x masked-only")
            if args.baseline_binary:
                b = ours(size, args.steps, tok, work, binary=args.baseline_binary)
                line += f" | {args.baseline_binary} {b:6.0f}: ours {a / b:.2f}x"
            if size != "base":
                a2 = ours(size, args.steps, tok, work, "cpu,cpu")
                line += f" | --devices cpu,cpu {a2:6.0f}: {a2 / full:.2f}x, {a2 / masked:.2f}x"
            print(line, flush=True)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
