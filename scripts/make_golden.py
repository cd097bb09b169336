#!/usr/bin/env python3
"""Builds the HF parity fixtures under crates/roberta-model/tests/fixtures/.

Small random RoBERTa models (seeded; every bias and LayerNorm parameter randomised so
that a swapped or transposed mapping shows), a byte-level BPE tokenizer trained on the
text below, and for each HF class the inputs (with left and right padding), the output
of every layer, the logits and the loss, plus MLM gradients of a few parameters.

    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors tokenizers
    .venv/bin/python scripts/make_golden.py [FIXTURE...]

Named fixtures (such as `multiple-choice`) are the only ones rewritten; the others keep
the bytes of the transformers release that wrote them. Everything is seeded, so a
fixture comes out the same whichever others are built alongside.
"""
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForMultipleChoice,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "roberta-model", "tests", "fixtures")

TEXT = """The cat sat on the mat. The dog sat on the log.
A robustly optimized BERT pretraining approach drops next sentence prediction.
Dynamic masking draws a fresh mask every time a sequence is served.
Large batches, more data and longer training improve masked language models.
Café, naïve, résumé: accents survive byte-level BPE. 東京 and 🙂 do too.
""" * 20

SENTENCES = [
    "The cat sat on the <mask>.",
    "Dynamic masking draws a fresh mask.",
    "Café 🙂",
]


def tokenizer(path):
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        [TEXT], vocab_size=320, min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    os.makedirs(path, exist_ok=True)
    tok.save_model(path)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_with_post_processor(tok), bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", cls_token="<s>",
        sep_token="</s>")
    fast.save_pretrained(path)
    return fast


def _with_post_processor(tok):
    from tokenizers.processors import RobertaProcessing
    tok._tokenizer.post_processor = RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    return tok._tokenizer


def config(vocab_size, **extra):
    return RobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        attn_implementation="eager", **extra)


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "LayerNorm" in name or "layer_norm" in name:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.08 * noise)
    model.eval()
    return model


def inputs(tok):
    rows = [tok(s)["input_ids"] for s in SENTENCES]
    seq = max(len(r) for r in rows) + 2
    ids, mask = [], []
    for i, r in enumerate(rows):
        pad = [tok.pad_token_id] * (seq - len(r))
        if i == 1:  # left padding: positions must still count from padding_idx + 1
            ids.append(pad + r)
            mask.append([0] * len(pad) + [1] * len(r))
        else:
            ids.append(r + pad)
            mask.append([1] * len(r) + [0] * len(pad))
    return torch.tensor(ids), torch.tensor(mask)


def pooled(hidden_states, mask):
    """sentence-transformers' Pooling (mean, cls, max) and Normalize, as its modules
    compute them, on the last layer and on layer 1: `pooled.MODE.LAYER[.normalized]`."""
    m = mask.unsqueeze(-1).float()
    t = {}
    for layer in (len(hidden_states) - 1, 1):
        h = hidden_states[layer]
        modes = {
            "mean": (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9),
            "cls": h[:, 0],
            "max": h.masked_fill(m.expand(h.shape) == 0, -1e9).max(1).values,
        }
        for mode, v in modes.items():
            t[f"pooled.{mode}.{layer}"] = v
            t[f"pooled.{mode}.{layer}.normalized"] = torch.nn.functional.normalize(v, p=2, dim=1)
    return t


ONLY = set(sys.argv[1:])


def save(name, model, tensors):
    if ONLY and name not in ONLY:
        return
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True)
    save_file({k: v.detach().clone().contiguous().float() if v.is_floating_point() else v.clone().contiguous()
               for k, v in tensors.items()}, os.path.join(path, "expected.safetensors"))
    print(name, sorted(tensors))


def main():
    torch.manual_seed(0)
    tok_dir = tempfile.mkdtemp() if ONLY else os.path.join(OUT, "tokenizer")
    shutil.rmtree(tok_dir, ignore_errors=True)
    tok = tokenizer(tok_dir)
    vocab = len(tok)
    ids, mask = inputs(tok)
    io = {"input_ids": ids, "attention_mask": mask}

    base = randomise(RobertaModel(config(vocab)), 1)
    out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    t = dict(io, last_hidden_state=out.last_hidden_state, pooler_output=out.pooler_output)
    for i, h in enumerate(out.hidden_states):
        t[f"hidden_states.{i}"] = h
    t.update(pooled(out.hidden_states, mask))
    save("base", base, t)

    # Dropout off, so that burn's autodiff forward (where dropout is active) and
    # PyTorch's compute the same function and the gradients compare.
    mlm = randomise(RobertaForMaskedLM(config(
        vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)), 2)
    labels = torch.full_like(ids, -100)
    for b, positions in enumerate([[1, 3, 6], [8, 10], [2]]):
        for p in positions:
            labels[b, p] = ids[b, p]
    mlm.train(False)
    out = mlm(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    out.loss.backward()
    t = dict(io, labels=labels, logits=out.logits, loss=out.loss.reshape(1))
    for i, h in enumerate(out.hidden_states):
        t[f"hidden_states.{i}"] = h
    params = dict(mlm.named_parameters())
    for name in ["roberta.embeddings.word_embeddings.weight",
                 "roberta.embeddings.position_embeddings.weight",
                 "roberta.encoder.layer.0.attention.self.query.weight",
                 "roberta.encoder.layer.1.intermediate.dense.weight",
                 "roberta.encoder.layer.1.output.LayerNorm.weight",
                 "lm_head.dense.weight", "lm_head.bias"]:
        t[f"grad.{name}"] = params[name].grad
    save("mlm", mlm, t)
    if not ONLY or "mlm" in ONLY:
        tok.save_pretrained(os.path.join(OUT, "mlm"))
        # The same weights as a PyTorch pickle (pytorch_model.bin), as many hub models
        # ship. (transformers 5 writes only safetensors: torch.save, as transformers 4 did.)
        pickled = os.path.join(OUT, "mlm-pytorch")
        shutil.rmtree(pickled, ignore_errors=True)
        os.makedirs(pickled)
        mlm.config.to_json_file(os.path.join(pickled, "config.json"))
        torch.save(mlm.state_dict(), os.path.join(pickled, "pytorch_model.bin"))

    cls = randomise(RobertaForSequenceClassification(config(vocab, num_labels=3)), 3)
    y = torch.tensor([2, 0, 1])
    out = cls(input_ids=ids, attention_mask=mask, labels=y)
    save("seqcls", cls, dict(io, labels=y, logits=out.logits, loss=out.loss.reshape(1)))

    reg = randomise(RobertaForSequenceClassification(config(vocab, num_labels=1)), 4)
    y = torch.tensor([0.5, -1.0, 2.0])
    out = reg(input_ids=ids, attention_mask=mask, labels=y)
    save("seqreg", reg, dict(io, labels=y, logits=out.logits, loss=out.loss.reshape(1)))

    tokcls = randomise(RobertaForTokenClassification(config(vocab, num_labels=5)), 5)
    y = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(6))
    y[mask == 0] = -100
    out = tokcls(input_ids=ids, attention_mask=mask, labels=y)
    save("tokcls", tokcls, dict(io, labels=y, logits=out.logits, loss=out.loss.reshape(1)))

    qa = randomise(RobertaForQuestionAnswering(config(vocab)), 7)
    start, end = torch.tensor([1, 9, 2]), torch.tensor([3, 11, 4])
    out = qa(input_ids=ids, attention_mask=mask, start_positions=start, end_positions=end)
    save("qa", qa, dict(io, start_positions=start, end_positions=end,
                        start_logits=out.start_logits, end_logits=out.end_logits,
                        loss=out.loss.reshape(1)))

    # Two examples of three choices each, made of the rows above (the left-padded one
    # among them), `[examples, choices, seq]` as RobertaForMultipleChoice takes them.
    choice = randomise(RobertaForMultipleChoice(config(vocab)), 8)
    rows = torch.tensor([0, 1, 2, 2, 0, 1])
    mc_ids, mc_mask = ids[rows].view(2, 3, -1), mask[rows].view(2, 3, -1)
    y = torch.tensor([2, 0])
    out = choice(input_ids=mc_ids, attention_mask=mc_mask, labels=y)
    save("multiple-choice", choice, dict(input_ids=mc_ids, attention_mask=mc_mask, labels=y,
                                         logits=out.logits, loss=out.loss.reshape(1)))


if __name__ == "__main__":
    sys.exit(main())
