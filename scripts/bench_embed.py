#!/usr/bin/env python3
"""Sentence-embedding throughput: `roberta-train embed --pool mean` against transformers'
AutoModel + mean pooling (sentence-transformers' formula) on torch, same machine, same run.

Both encode the same sentences (GLUE SST-2 dev from ../shared/data when present, else the
embedded corpus's lines) with the same randomly initialised model at roberta-base's
geometry (768 hidden, 12 layers, roberta-base's vocabulary when its tokenizer is at hand),
in batches of the same size, on the same number of threads. torch gets its best case:
inference mode, sentences sorted by length so that a batch pads little (as roberta-train
sorts them), a warm-up batch first. roberta-train's time is the whole command (loading the
model and tokenizer included), torch's the encoding alone; the same command on one
sentence, run first, measures roberta-train's start-up, and the whole time less it is its
encoding alone. Prints sentences/s and both ratios (ours / torch), and checks the two
outputs agree (max abs difference).

    .venv/bin/python scripts/bench_embed.py [--sentences 512] [--threads 2] [--batch 32]
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import torch
from transformers import AutoTokenizer, RobertaConfig, RobertaModel

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.join(ROOT, "target", "release", "roberta-train")


def tokenizer_dir():
    shared = os.path.join(ROOT, "..", "shared", "data", "roberta_base_tokenizer")
    return shared if os.path.exists(os.path.join(shared, "tokenizer.json")) else os.path.join(ROOT, "data", "tokenizer")


def sentences(n):
    sst2 = os.path.join(ROOT, "..", "shared", "data", "sst2", "dev.tsv")
    if os.path.exists(sst2):
        lines = [l.split("\t")[0] for l in open(sst2, encoding="utf-8").read().splitlines()[1:]]
        source = "SST-2 dev"
    else:
        lines = [l for l in open(os.path.join(ROOT, "data", "default-corpus", "valid.txt"),
                                 encoding="utf-8").read().splitlines() if l.strip()]
        source = "the embedded corpus"
    out = []
    while len(out) < n:
        out.extend(lines)
    return out[:n], source


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    texts, source = sentences(args.sentences)
    with tempfile.TemporaryDirectory() as work:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir())
        torch.manual_seed(0)
        config = RobertaConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12,
                               num_attention_heads=12, intermediate_size=3072,
                               max_position_embeddings=514, pad_token_id=tok.pad_token_id,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = RobertaModel(config, add_pooling_layer=False).eval()
        model_dir = os.path.join(work, "model")
        model.save_pretrained(model_dir, safe_serialization=True)
        tok.save_pretrained(model_dir)

        inputs = os.path.join(work, "in.jsonl")
        with open(inputs, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))

        def embed(path, out):
            started = time.perf_counter()
            subprocess.run([BIN, "embed", "--model", model_dir, "--input", path, "--output", out,
                            "--pool", "mean", "--batch-size", str(args.batch)],
                           check=True, env=env, capture_output=True)
            return time.perf_counter() - started

        # Start-up alone: the same command on one sentence (reading the model and
        # tokenizer, one batch), which also leaves the model file in the page cache.
        one = os.path.join(work, "one.jsonl")
        with open(one, "w", encoding="utf-8") as f:
            f.write(json.dumps({"text": texts[0]}) + "\n")
        startup_s = embed(one, os.path.join(work, "one.npy"))
        out = os.path.join(work, "out.npy")
        ours_s = embed(inputs, out)
        ours = np.load(out)

        order = sorted(range(len(texts)), key=lambda i: -len(tok(texts[i])["input_ids"]))
        theirs = np.zeros_like(ours)
        with torch.inference_mode():
            warm = tok(texts[:args.batch], padding=True, truncation=True, return_tensors="pt")
            model(**warm)
            started = time.perf_counter()
            for b in range(0, len(order), args.batch):
                idx = order[b:b + args.batch]
                enc = tok([texts[i] for i in idx], padding=True, truncation=True, return_tensors="pt")
                h = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
                theirs[idx] = pooled.numpy()
            torch_s = time.perf_counter() - started
        diff = float(np.abs(ours - theirs).max())
    n = len(texts)
    print(f"{n} sentences of {source}, roberta-base geometry, batch {args.batch}, "
          f"{args.threads} threads")
    encode_s = ours_s - startup_s
    print(f"roberta-train embed --pool mean: {n / ours_s:8.1f} sentences/s ({ours_s:.1f} s, "
          f"whole command; start-up and one sentence {startup_s:.1f} s)")
    print(f"  encoding alone (whole - start-up): {n / encode_s:8.1f} sentences/s ({encode_s:.1f} s)")
    print(f"transformers AutoModel + mean:   {n / torch_s:8.1f} sentences/s ({torch_s:.1f} s, "
          f"encoding only)")
    print(f"ratio (ours / torch): {torch_s / ours_s:.2f}x whole command, {torch_s / encode_s:.2f}x "
          f"encoding alone; max abs difference {diff:.2e}")


if __name__ == "__main__":
    main()
