#!/usr/bin/env python3
"""Reference encodings of real text by HF's Python `tokenizers` with the real roberta-base
tokenizer (../shared/data/roberta_base_tokenizer), from tokenizer.json and from
vocab.json + merges.txt (which must agree), with `<s> … </s>` and character offsets.
Written to crates/roberta-data/tests/fixtures/tokenizer_vectors.jsonl.

    .venv/bin/python scripts/make_tokenizer_vectors.py
"""
import json
import os

from tokenizers import AddedToken, ByteLevelBPETokenizer, Tokenizer
from tokenizers.processors import RobertaProcessing

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(ROOT, "..", "shared", "data")
TOK = os.path.join(DATA, "roberta_base_tokenizer")
OUT = os.path.join(ROOT, "crates", "roberta-data", "tests", "fixtures", "tokenizer_vectors.jsonl")

EDGE = [
    "Café, naïve, résumé, Ångström, façade — déjà vu.",
    "Emoji: 🙂👍🏽🇫🇷 and ZWJ 👩‍👩‍👧 sequences",
    "東京は日本の首都です。北京和上海。한국어 텍스트",
    "runs  of   spaces    and\ttabs\t\tand\nnewlines\n\n",
    "   leading and trailing spaces   ",
    "The capital of France is <mask>.",
    "<mask> at the start, in the <mask>middle and at the end <mask>",
    "<s>literal special tokens</s> and <pad> <unk>",
    "Numbers 1234567 3.14159 -42 1e-6 and URLs https://example.com/a?b=c",
    "don't won't it's we're I'd y'all",
    "",
    " ",
    "a",
    "Ω≈ç√∫˜µ≤≥÷ ¡™£¢∞§¶•ªº–≠ «quotes» “curly” ‘single’",
]


def lines(path, n, min_len=1):
    out = []
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            line = line.rstrip("\n")
            if len(line.strip()) >= min_len:
                out.append(line)
            if len(out) >= n:
                break
    return out


def main():
    sources = [("edge", EDGE)]
    sources.append(("wikitext2", lines(os.path.join(DATA, "wikitext2_raw", "wiki.valid.raw"), 60, 2)))
    sst2 = lines(os.path.join(DATA, "sst2", "dev.tsv"), 61)[1:]
    sources.append(("sst2", [l.split("\t")[0] for l in sst2]))
    for book in ["1342-0.txt", "2600-0.txt", "1661-utf8.txt"]:
        text = lines(os.path.join(DATA, "gutenberg", book), 400, 1)
        sources.append((f"gutenberg/{book}", text[40:80]))

    from_json = Tokenizer.from_file(os.path.join(TOK, "tokenizer.json"))
    # What RobertaTokenizerFast builds from the two files (transformers 5 drops <mask>'s
    # lstrip there, so the tokenizer is assembled from `tokenizers` parts directly).
    files = ByteLevelBPETokenizer(os.path.join(TOK, "vocab.json"), os.path.join(TOK, "merges.txt"),
                                  add_prefix_space=False, trim_offsets=True)
    files.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True)])
    files._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                        add_prefix_space=False)
    from_files = files._tokenizer
    count = 0
    with open(OUT, "w", encoding="utf-8") as out:
        for source, texts in sources:
            for text in texts:
                a = from_json.encode(text)
                b = from_files.encode(text)
                assert a.ids == b.ids and a.offsets == b.offsets, (source, text)
                pair = from_json.encode(text, "and a second segment")
                out.write(json.dumps({"source": source, "text": text, "ids": a.ids, "offsets": a.offsets,
                                      "pair_ids": pair.ids}, ensure_ascii=False) + "\n")
                count += 1
    print(f"wrote {count} vectors to {OUT}")


if __name__ == "__main__":
    main()
