#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2, computed by an implementation independent
of sentimentd's burn encoder: BERT written out in numpy from the safetensors file, the HF
`tokenizers` package for the shipped tokenizer.json, mean pooling over the attention mask and
L2 normalisation (what sentence-transformers does for this model).

Writes tests/fixtures/minilm_reference.json, which model/src/encoder.rs's parity test reads;
the test needs no Python. Run it again only to change the sentences:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install numpy tokenizers
    ./scripts/fetch-pretrained.sh ~/.cache/sentimentd-pretrained
    /tmp/ref/bin/python tests/reference/minilm_reference.py ~/.cache/sentimentd-pretrained/all-minilm-l6-v2
"""
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

SENTENCES = [
    "I love this product",
    "I really like this item",
    "The train leaves at noon",
    "@user worst customer service ever, never again!!! #fail",
    "Not bad at all, actually pretty good",
    "http://t.co/abc the new phone drops on Friday",
    "Ça marche très bien, merci 😊",
    "",
    "a",
    "This is a much longer sentence that goes on and on about nothing in particular, "
    "just to make sure that longer inputs with many word pieces such as antidisestablishmentarianism "
    "are handled the same way by both implementations.",
]


def load_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(raw[base + start : base + end], dtype="<f4").reshape(meta["shape"])
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(ids, w, cfg):
    x = w["embeddings.word_embeddings.weight"][ids]
    x = x + w["embeddings.position_embeddings.weight"][: len(ids)]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    eps = cfg["layer_norm_eps"]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    heads = cfg["num_attention_heads"]
    d = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda name, v: v @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q = lin("attention.self.query", x).reshape(len(ids), heads, d).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(len(ids), heads, d).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(len(ids), heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(len(ids), heads * d)
        a = layer_norm(lin("attention.output.dense", ctx) + x,
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        h = gelu(lin("intermediate.dense", a))
        x = layer_norm(lin("output.dense", h) + a,
                       w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def main():
    model = Path(sys.argv[1])
    cfg = json.loads((model / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_safetensors(model / "model.safetensors").items()}
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    rows = []
    for s in SENTENCES:
        ids = tok.encode(s).ids
        rows.append({"text": s, "ids": ids, "embedding": [round(float(v), 7) for v in embed(ids, w, cfg)]})
    out = Path(__file__).resolve().parent.parent / "fixtures" / "minilm_reference.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"model": "all-MiniLM-L6-v2", "sentences": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
