#!/usr/bin/env python3
"""TensorBoard's own reader against metrics.jsonl: every number of every line must be
a scalar of the run's event files at the same step, with the same value in float32,
and no tag may hold a step twice (what a resume dropped must stay dropped).

    pip install tensorboard
    python3 scripts/check_tensorboard.py RUN_DIR [TB_DIR]

TB_DIR defaults to RUN_DIR/tb (`log.tensorboard = true`). Exits 1 on any difference.
"""
import json
import os
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def expected_scalars(metrics):
    """(tag, step) → value, as the trainer's TensorBoard sink names them."""
    out = {}
    with open(metrics) as f:
        for line in f:
            row = json.loads(line)
            step = row["step"]
            for key, value in row.items():
                if key == "step":
                    continue
                if isinstance(value, dict):
                    for name, v in value.items():
                        out[(f"{key}/{name}", step)] = v
                elif isinstance(value, (int, float)):
                    out[(key, step)] = value
    return out


def main():
    run = sys.argv[1]
    tb = sys.argv[2] if len(sys.argv) > 2 else os.path.join(run, "tb")
    expected = expected_scalars(os.path.join(run, "metrics.jsonl"))
    acc = EventAccumulator(tb, size_guidance={"scalars": 0})
    acc.Reload()
    seen = {}
    problems = []
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        if len(steps) != len(set(steps)):
            problems.append(f"{tag}: a step logged twice ({steps})")
        for e in acc.Scalars(tag):
            seen[(tag, e.step)] = e.value
    for key, value in sorted(expected.items()):
        if key not in seen:
            problems.append(f"{key[0]} at step {key[1]}: not in the event files")
        elif np.float32(value) != np.float32(seen[key]):
            problems.append(f"{key[0]} at step {key[1]}: {seen[key]} in TensorBoard, {value} in metrics.jsonl")
    extra = sorted(set(seen) - set(expected))
    for tag, step in extra:
        problems.append(f"{tag} at step {step}: in the event files, not in metrics.jsonl")
    for p in problems:
        print(p)
    tags = len({tag for tag, _ in expected})
    print(f"{len(expected)} scalars of {tags} tags in metrics.jsonl; {len(seen)} read by TensorBoard; {len(problems)} differences")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
