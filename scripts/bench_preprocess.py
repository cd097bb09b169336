#!/usr/bin/env python3
"""Preprocessing throughput against HF's Python `tokenizers`, same text, same tokenizer,
same run: `roberta-train preprocess` (read, tokenize on all cores, write shards) on
../shared/data/gutenberg against `Tokenizer.encode_batch` (Rust core, parallel) over the
same lines, both with the roberta-base tokenizer. Prints MB/s of both and the ratio.

    .venv/bin/python scripts/bench_preprocess.py
"""
import glob
import os
import subprocess
import tempfile
import time

from tokenizers import Tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(ROOT, "..", "shared", "data")


def main():
    books = sorted(p for p in glob.glob(os.path.join(DATA, "gutenberg", "*.txt")) if "LICENSE" not in p)
    tok_dir = os.path.join(DATA, "roberta_base_tokenizer")
    size = sum(os.path.getsize(p) for p in books)
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([os.path.join(ROOT, "target", "release", "roberta-train"), "preprocess", "--input", *books,
                        "--tokenizer", tok_dir, "--out", os.path.join(out, "bin"), "--force"],
                       check=True, stdout=subprocess.DEVNULL)
        ours = time.perf_counter() - start

    tokenizer = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    start = time.perf_counter()
    total = 0
    for path in books:
        with open(path, encoding="utf-8") as f:
            lines = [l.rstrip("\n") for l in f if l.strip()]
        for i in range(0, len(lines), 4096):
            total += sum(len(e.ids) for e in tokenizer.encode_batch(lines[i:i + 4096], add_special_tokens=False))
    theirs = time.perf_counter() - start
    mb = size / 1e6
    print(f"{mb:.1f} MB of Gutenberg text, {total} tokens, {os.cpu_count()} cores")
    print(f"roberta-train preprocess      {mb / ours:7.2f} MB/s  (reading, tokenizing, writing shards)")
    print(f"HF tokenizers encode_batch    {mb / theirs:7.2f} MB/s  (tokenizing only)")
    print(f"ratio {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
