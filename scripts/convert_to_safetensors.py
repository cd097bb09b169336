#!/usr/bin/env python3
"""Converts an HF model directory's pytorch_model.bin to model.safetensors. Optional:
roberta-train reads pytorch_model.bin itself (burn-store's pickle reader, which runs no
code from the file); safetensors loads without parsing a pickle and is what it writes.

    python scripts/convert_to_safetensors.py DIR
"""
import os
import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    directory = sys.argv[1]
    state = torch.load(os.path.join(directory, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    # Tied tensors share storage; safetensors wants each once.
    seen, tensors = {}, {}
    for key, tensor in state.items():
        ptr = (tensor.data_ptr(), tensor.shape)
        if ptr in seen:
            continue
        seen[ptr] = key
        tensors[key] = tensor.contiguous()
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    print(f"wrote {len(tensors)} tensors to {directory}/model.safetensors")


if __name__ == "__main__":
    main()
