#!/usr/bin/env python3
"""Shows that a directory written by roberta-model's save loads in `transformers` with
the same outputs.

For every parity fixture: roberta-model loads it and saves it to a new directory (the
`resave` example); `transformers` loads that directory with the class named in its
config, must report no missing or unexpected keys, and must reproduce the fixture's
expected outputs within 1e-4.

    .venv/bin/python scripts/check_hf_roundtrip.py
"""
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURES = os.path.join(ROOT, "crates", "roberta-model", "tests", "fixtures")
OUTPUTS = {
    "base": ["last_hidden_state", "pooler_output"],
    "mlm": ["logits"],
    "seqcls": ["logits"],
    "seqreg": ["logits"],
    "tokcls": ["logits"],
    "qa": ["start_logits", "end_logits"],
    "multiple-choice": ["logits"],
}


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "roberta-model", "--example", "resave"],
                   cwd=ROOT, check=True)
    resave = os.path.join(ROOT, "target", "release", "examples", "resave")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, keys in OUTPUTS.items():
            out = os.path.join(tmp, name)
            subprocess.run([resave, os.path.join(FIXTURES, name), out], check=True)
            config = transformers.AutoConfig.from_pretrained(out)
            cls = getattr(transformers, config.architectures[0])
            model, info = cls.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
            bad = {k: v for k, v in info.items() if v}
            assert not bad, f"{name}: transformers reported {bad}"
            model.eval()
            expected = load_file(os.path.join(FIXTURES, name, "expected.safetensors"))
            with torch.no_grad():
                result = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"])
            for key in keys:
                diff = (result[key] - expected[key]).abs().max().item()
                worst = max(worst, diff)
                print(f"{name:15} {config.architectures[0]:34} {key:17} max abs diff {diff:.3e}")
                assert diff <= 1e-4, f"{name}.{key}: {diff}"
    print(f"all fixtures round-trip through transformers {transformers.__version__}; worst diff {worst:.3e}")


if __name__ == "__main__":
    sys.exit(main())
