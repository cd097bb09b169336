#!/usr/bin/env python3
"""Pretraining throughput: roberta-train against HF transformers, same machine, same run.

For each size (tiny, small) both trainers take MLM updates on batches of 16 sequences of
128 tokens with AdamW (β 0.9/0.98, ε 1e-6, weight decay 0.01), dropout 0.1, 15% masking:
roberta-train through its CLI on the embedded corpus, transformers'
RobertaForMaskedLM on the same vocabulary with torch on all cores. roberta-train runs
twice: on one device, and as two data-parallel replicas on the CPU (`--devices cpu,cpu`,
8 sequences each, still 16 per update). Prints tokens/s and the ratios (ours / HF). The vocabulary is roberta-base's when
../shared/data/roberta_base_tokenizer exists (the realistic case, 50,265 tokens), else
the embedded corpus's own.

    .venv/bin/python scripts/bench_vs_hf.py [--steps 30]
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

import torch
from transformers import RobertaConfig, RobertaForMaskedLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SIZES = {"tiny": (128, 2, 2, 512), "small": (256, 4, 4, 1024)}  # hidden, layers, heads, ffn
BATCH, LENGTH = 16, 128


def tokenizer_dir():
    shared = os.path.join(ROOT, "..", "shared", "data", "roberta_base_tokenizer")
    return shared if os.path.exists(os.path.join(shared, "tokenizer.json")) else os.path.join(ROOT, "data", "tokenizer")


def ours(size, steps, tok, work, devices="cpu"):
    replicas = devices.count(",") + 1
    hidden, layers, heads, ffn = SIZES[size]
    config = os.path.join(work, f"{size}.toml")
    with open(config, "w") as f:
        f.write(f"""
[model]
preset = "tiny"
hidden_size = {hidden}
num_hidden_layers = {layers}
num_attention_heads = {heads}
intermediate_size = {ffn}
[data]
train = ["{ROOT}/data/default-corpus/train.txt"]
valid = ["{ROOT}/data/default-corpus/valid.txt"]
data_dir = "{work}/data-bin"
tokenizer = "{tok}"
block_size = {LENGTH}
[optim]
lr = 5e-4
[schedule]
warmup_steps = 5
total_steps = {steps}
[train]
batch_size = {BATCH // replicas}
[checkpoint]
every = 0
keep = 1
[log]
every = 5
[eval]
every = 0
batches = 1
""")
    run_dir = os.path.join(work, f"run-{size}-{replicas}")
    subprocess.run([os.path.join(ROOT, "target", "release", "roberta-train"), "pretrain", "--config", config,
                    "--run-dir", run_dir, "--devices", devices], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    lines = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    # The first interval includes start-up; blocks are ~full, so tokens ≈ BATCH × LENGTH.
    rates = [l["tokens_per_s"] for l in lines[1:]] or [lines[0]["tokens_per_s"]]
    return sum(rates) / len(rates)


def hf(size, steps, vocab):
    hidden, layers, heads, ffn = SIZES[size]
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=ffn, max_position_embeddings=LENGTH + 2, type_vocab_size=1)
    model = RobertaForMaskedLM(config)
    model.train()
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n)]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    ids = torch.randint(5, vocab - 1, (BATCH, LENGTH))
    labels = torch.full_like(ids, -100)
    masked = torch.rand(ids.shape) < 0.15
    labels[masked] = ids[masked]
    ids = ids.masked_fill(masked, vocab - 1)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        times.append(time.perf_counter() - start)
    steady = times[5:] or times
    return BATCH * LENGTH / (sum(steady) / len(steady))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    tok = tokenizer_dir()
    vocab = len(json.load(open(os.path.join(tok, "tokenizer.json")))["model"]["vocab"])
    vocab += sum(1 for t in json.load(open(os.path.join(tok, "tokenizer.json")))["added_tokens"] if t["content"] == "<mask>" and t["id"] >= vocab)
    print(f"vocabulary {vocab} ({tok}); batch {BATCH} x {LENGTH}; torch {torch.__version__} on {torch.get_num_threads()} threads")
    work = tempfile.mkdtemp()
    try:
        for size in SIZES:
            a = ours(size, args.steps, tok, work)
            a2 = ours(size, args.steps, tok, work, "cpu,cpu")
            b = hf(size, args.steps, vocab)
            print(f"{size:6} transformers {b:7.0f} tokens/s | roberta-train {a:7.0f} tokens/s, {a / b:.2f}x"
                  f" | roberta-train --devices cpu,cpu {a2:7.0f} tokens/s, {a2 / b:.2f}x")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
