#!/usr/bin/env python3
"""Memory of preprocessing and streaming, against corpus size: generates corpora of
--small and --large gigabytes (0.2 and 10 by default) from the embedded default
corpus's generator, preprocesses each with `roberta-train preprocess` and streams it
through the loader for one epoch or 60 s, whichever ends first (`cargo bench --bench
loader -- DIR`: it packs the block index first), sampling the process's resident memory
every 50 ms. Prints peak anonymous RSS (the process's own memory) and peak file-backed
RSS (mmapped shard and block-index pages: page cache the kernel reclaims at will) for
each, and the ratio of the large corpus's anonymous RSS to the small one's. Nothing
generated is kept (the generated text is removed once preprocessed).

    python3 scripts/bench_rss.py [--small 0.2] [--large 10] [--dir /tmp]
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_default_corpus as corpus  # noqa: E402


def generate(path, size):
    """`size` bytes of documents: up to 64 MB generated, then repeated (generating 10 GB
    in Python would take longer than preprocessing it; memory does not depend on the
    text)."""
    rng = random.Random(size)
    unique = []
    generated = 0
    while generated < min(size, 64_000_000):
        block = "".join("\n".join(corpus.document(rng)) + "\n\n" for _ in range(2000))
        unique.append(block)
        generated += len(block)
    written = 0
    with open(path, "w") as f:
        while written < size:
            for block in unique:
                f.write(block)
                written += len(block)
                if written >= size:
                    break


def peak_rss(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    anon = file = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as s:
                for line in s:
                    if line.startswith("RssAnon:"):
                        anon = max(anon, int(line.split()[1]))
                    elif line.startswith("RssFile:"):
                        file = max(file, int(line.split()[1]))
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    out = proc.stdout.read().decode()
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed")
    return anon / 1024, file / 1024, out.strip().splitlines()[-1] if out.strip() else ""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=float, default=0.2)
    parser.add_argument("--large", type=float, default=10.0)
    parser.add_argument("--dir", default=None, help="where to generate (needs ~2.5x --large GB free)")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "bench", "-q", "-p", "roberta-data", "--bench", "loader", "--no-run"], cwd=ROOT, check=True,
                   stderr=subprocess.DEVNULL)
    bench = subprocess.run(["cargo", "bench", "-p", "roberta-data", "--bench", "loader", "--no-run", "--message-format=json"],
                           cwd=ROOT, capture_output=True, text=True).stdout
    import json
    exe = [json.loads(l)["executable"] for l in bench.splitlines()
           if '"executable":"' in l and "loader" in l and json.loads(l).get("executable")][-1]
    work = tempfile.mkdtemp(dir=args.dir)
    streamed = {}
    try:
        for gb in [args.small, args.large]:
            text = os.path.join(work, "corpus.txt")
            generate(text, int(gb * 1e9))
            out = os.path.join(work, "bin")
            start = time.perf_counter()
            anon, file, _ = peak_rss([os.path.join(ROOT, "target", "release", "roberta-train"), "preprocess", "--input", text,
                                      "--tokenizer", os.path.join(ROOT, "data", "tokenizer"), "--out", out, "--force"])
            seconds = time.perf_counter() - start
            print(f"{gb:5.2f} GB preprocess: {seconds:6.0f} s ({gb * 1e3 / seconds:.1f} MB/s), peak RSS anon {anon:7.1f} MiB, file {file:7.1f} MiB")
            os.remove(text)
            anon, file, line = peak_rss([exe, out])
            streamed[gb] = anon
            print(f"{gb:5.2f} GB stream:     peak RSS anon {anon:7.1f} MiB, file {file:7.1f} MiB; {line}")
            shutil.rmtree(out)
        print(f"loader anonymous RSS, {args.large:g} GB vs {args.small:g} GB: {streamed[args.large] / streamed[args.small]:.2f}x")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
