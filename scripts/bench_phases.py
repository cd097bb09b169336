#!/usr/bin/env python3
"""Sequence-length phases against training at full length throughout: the final
validation loss (at 128 tokens) and the wall time of configs/bert-phases.toml, and of the
same config at 128 tokens throughout with the quickstart's learning rate, run
alternately in this run; printed with the time ratio.

Baseline: `bert-phases.toml --set 'schedule.phases=[]' --set optim.lr=3e-3` (the
quickstart's recipe at 128 tokens, as many tokens per update), same binary, this run.

    cargo build --release
    python3 scripts/bench_phases.py [ROUNDS]      # default 2 rounds of both
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release" / "roberta-train"
BASELINE = ["--set", "schedule.phases=[]", "--set", "optim.lr=3e-3"]


def run(run_dir, extra):
    args = [str(BIN), "pretrain", "--config", "configs/bert-phases.toml",
            "--run-dir", str(run_dir)] + extra
    start = time.monotonic()
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    seconds = time.monotonic() - start
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    valid = [l["valid_loss"] for l in lines if "valid_loss" in l]
    return seconds, valid[-1]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    times = {"phases": [], "baseline": []}
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, extra in [("phases", []), ("baseline", BASELINE)]:
                seconds, loss = run(Path(tmp) / f"{name}-{r}", extra)
                times[name].append(seconds)
                losses[name] = loss
                print(f"{name:8} round {r + 1}: {seconds:6.1f} s, final validation loss {loss:.3f}")
    best = {k: min(v) for k, v in times.items()}
    print(f"bert-phases.toml:  final validation loss {losses['phases']:.3f}, {best['phases']:.1f} s (best of {rounds})")
    print(f"128 throughout:    final validation loss {losses['baseline']:.3f}, {best['baseline']:.1f} s (best of {rounds})")
    print(f"time ratio phases / baseline: {best['phases'] / best['baseline']:.2f}x")


if __name__ == "__main__":
    main()
