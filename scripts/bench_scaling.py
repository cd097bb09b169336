#!/usr/bin/env python3
"""Data-parallel scaling: pretraining tokens/s on 1 device and on 2 (same micro-batch per
device, so 2 devices train twice the sequences per update), printed with the ratio.

Baseline: the same binary, config and micro-batch on one device, measured in this run.

    cargo build --release
    python3 scripts/bench_scaling.py                       # cpu vs cpu,cpu (two replicas on the CPU)
    python3 scripts/bench_scaling.py cuda:0 cuda:0,cuda:1  # GPUs (build with --features cuda)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release" / "roberta-train"
STEPS = 40


def tokens_per_s(devices, run_dir, extra):
    args = [
        str(BIN), "pretrain", "--config", "configs/quickstart.toml", "--run-dir", str(run_dir),
        "--devices", devices,
        "--set", f"schedule.total_steps={STEPS}", "--set", "schedule.warmup_steps=4",
        "--set", "log.every=10", "--set", "eval.every=0", "--set", "eval.batches=1",
        "--set", "checkpoint.every=0",
    ] + extra
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # The first interval includes start-up; the rest are steady state.
    steady = [l["tokens_per_s"] for l in lines if l["step"] > 10]
    return sum(steady) / len(steady)


def main():
    one, two = (sys.argv[1], sys.argv[2]) if len(sys.argv) == 3 else ("cpu", "cpu,cpu")
    extra = ["--set", "train.batch_size=32"]
    with tempfile.TemporaryDirectory() as tmp:
        base = tokens_per_s(one, Path(tmp) / "one", extra)
        scaled = tokens_per_s(two, Path(tmp) / "two", extra)
    print(f"1 device  ({one}): {base:,.0f} tokens/s")
    print(f"{two.count(',') + 1} devices ({two}): {scaled:,.0f} tokens/s")
    print(f"scaling: {scaled / base:.2f}x")


if __name__ == "__main__":
    main()
