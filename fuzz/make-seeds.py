#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from ../shared/fixtures.

Seeds stay small: real files are kept only under ~400 KB, everything else is a shrunken
but valid variant (a checkpoint's real header with every tensor cut to a few elements, a
tokenizer with a few hundred tokens). Run from the repository root:
    python3 fuzz/make-seeds.py [PROGRAM_JSON...]
where PROGRAM_JSON are program descriptions extracted from compiled fixture executables.
"""
import json
import os
import struct
import sys

FIX = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")
OUT = os.path.join(os.path.dirname(__file__), "seeds")
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1, "F64": 8}


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(key, dtype, shape, bytes)] -> file bytes, laid out in order."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for key, dtype, shape, raw in tensors:
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    while pad and len(h) % 8:
        h += b" "
    return struct.pack("<Q", len(h)) + h + data


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def shrunk(path, limit=40):
    """The file's real header (first `limit` tensors), each tensor cut to at most 2 per dim."""
    header = read_header(path)
    meta = header.pop("__metadata__", None)
    tensors = []
    for key, t in list(header.items())[:limit]:
        shape = [min(d, 2) for d in t["shape"]]
        n = 1
        for d in shape:
            n *= d
        tensors.append((key, t["dtype"], shape, bytes(range(7, 7 + SIZES.get(t["dtype"], 1) * n))))
    return safetensors(tensors, meta)


def f32(*v):
    return struct.pack(f"<{len(v)}f", *v)


def headers():
    for name in ["bert-tiny", "gpt2-tiny", "t5-tiny", "t5v11-tiny"]:
        put("safetensors_header", f"{name}-shrunk.safetensors", shrunk(os.path.join(FIX, name, "model.safetensors")))
    for rel in ["bert-tiny-cls/reference-inputs.safetensors", "bert-tiny-cls/reference.safetensors",
                "bert-tiny-rerank/reference.safetensors", "minilm/reference-inputs.safetensors"]:
        with open(os.path.join(FIX, rel), "rb") as f:
            put("safetensors_header", rel.replace("/", "-"), f.read())
    half = struct.pack("<4H", 0x3C00, 0xB800, 0x7BFF, 0x2E66)
    put("safetensors_header", "dtypes.safetensors", safetensors([
        ("w", "F32", [2, 3], f32(1, -2.5, 3.25, 0, 1e-3, 7)),
        ("h", "F16", [4], half), ("b", "BF16", [2, 2], half),
        ("embeddings.position_ids", "I64", [1, 2], struct.pack("<2q", 0, 1)),
        ("m", "BOOL", [3], b"\x01\x00\x01"), ("e", "F32", [0], b""),
        ("s", "F32", [], f32(4.0)), ("x", "F4", [3], b"\x12\x34"),
    ], {"format": "pt"}))
    put("safetensors_header", "unpadded.safetensors", safetensors([("a", "F32", [1], f32(1))], pad=False))
    # Two tensors sharing bytes, and a hole between tensors.
    h = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                    "c": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}).encode()
    put("safetensors_header", "overlap-hole.safetensors", struct.pack("<Q", len(h)) + h + f32(1, 2, 3, 4))


def shard_index():
    a, b = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    put("shard_index", "valid.json", json.dumps({"metadata": {"total_size": 24}, "weight_map": {"a": a, "b": a, "c": b}}))
    put("shard_index", "one-shard.json", json.dumps({"weight_map": {"a": a, "b": a}}))
    put("shard_index", "wrong-shard.json", json.dumps({"weight_map": {"a": b, "c": b}}))
    put("shard_index", "missing-shard.json", json.dumps({"weight_map": {"a": "model-00003-of-00003.safetensors"}}))
    put("shard_index", "escape.json", json.dumps({"weight_map": {"a": "../" + a, "c": "/tmp/" + b}}))
    put("shard_index", "empty.json", json.dumps({"metadata": {}, "weight_map": {}}))


def configs():
    for name in ["bert-tiny", "bert-tiny-cls", "bert-tiny-rerank", "gpt2-tiny", "t5-tiny", "t5v11-tiny"]:
        with open(os.path.join(FIX, name, "config.json"), "rb") as f:
            put("config_json", f"{name}.json", f.read())


def forward_inputs():
    put("forward_input", "ids.json", json.dumps({"input_ids": [[1, 2, 3], [4, 5, 6]]}))
    put("forward_input", "bert.json", json.dumps({
        "input_ids": [[2, 7, 9, 3, 0], [2, 8, 3, 0, 0]],
        "attention_mask": [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]],
        "token_type_ids": [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]}))
    put("forward_input", "left-pad.json", json.dumps({
        "input_ids": [[0, 0, 5, 6], [7, 8, 9, 10]], "attention_mask": [[0, 0, 1, 1], [1, 1, 1, 1]]}))
    put("forward_input", "t5.json", json.dumps({
        "input_ids": [[37, 1], [12, 1]], "attention_mask": [[1, 1], [1, 0]],
        "decoder_input_ids": [[0, 5, 6], [0, 7, 8]]}))
    put("forward_input", "bad.json", json.dumps({"input_ids": [[1, -2], [3]], "attention_mask": [[2]]}))


def tokenizers():
    def tok(mode, *parts):
        return bytes([mode]) + b"\0\0".join(p if isinstance(p, bytes) else p.encode() for p in parts)

    # The real T5 tokenizer.json (Unigram, Precompiled normalizer), as the one real file.
    with open(os.path.join(FIX, "t5-tiny", "tokenizer.json"), "rb") as f:
        put("tokenizer", "t5-real.json", tok(2, f.read()))

    # BERT's WordPiece cut to the specials and the first few hundred tokens.
    bert = json.load(open(os.path.join(FIX, "bert-tiny", "tokenizer.json")))
    keep = [t for t, i in sorted(bert["model"]["vocab"].items(), key=lambda kv: kv[1])]
    keep = keep[:110] + [t for t in keep[1990:2300]] + [t for t in keep if t.startswith("##")][:60]
    bert["model"]["vocab"] = {t: i for i, t in enumerate(dict.fromkeys(keep))}
    ids = bert["model"]["vocab"]
    for a in bert["added_tokens"]:
        a["id"] = ids[a["content"]]
    pp = bert["post_processor"]
    for name, spec in pp.get("special_tokens", {}).items():
        spec["ids"] = [ids[t] for t in spec["tokens"]]
    put("tokenizer", "bert-small.json", tok(0, json.dumps(bert)))
    vocab_txt = "\n".join(bert["model"]["vocab"]) + "\n"
    with open(os.path.join(FIX, "bert-tiny", "tokenizer_config.json"), "rb") as f:
        put("tokenizer", "bert-vocab-txt", tok(3, vocab_txt, f.read()))
    put("tokenizer", "bert-vocab-txt-noconfig", tok(3, vocab_txt))

    # GPT-2's byte-level BPE: the 256 byte tokens, the first merges whose parts and result
    # are all kept, and the end-of-text token.
    gpt2 = json.load(open(os.path.join(FIX, "gpt2-tiny", "tokenizer.json")))
    vocab = gpt2["model"]["vocab"]
    base = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])[:256]]
    kept, merges = set(base), []
    for m in gpt2["model"]["merges"][:400]:
        a, b = m if isinstance(m, list) else m.split(" ")
        if a in kept and b in kept:
            merges.append([a, b])
            kept.add(a + b)
    new_vocab = {t: i for i, t in enumerate(base + [a + b for a, b in merges])}
    new_vocab["<|endoftext|>"] = len(new_vocab)
    gpt2["model"]["vocab"] = new_vocab
    gpt2["model"]["merges"] = merges
    for a in gpt2["added_tokens"]:
        a["id"] = new_vocab[a["content"]]
    put("tokenizer", "gpt2-small.json", tok(1, json.dumps(gpt2)))
    merges_txt = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
    with open(os.path.join(FIX, "gpt2-tiny", "tokenizer_config.json"), "rb") as f:
        put("tokenizer", "gpt2-vocab-merges", tok(4, json.dumps(new_vocab), merges_txt, f.read()))
    put("tokenizer", "gpt2-vocab-merges-noconfig", tok(4, json.dumps(new_vocab), merges_txt))


def programs(paths):
    for p in paths:
        with open(p, "rb") as f:
            put("program_blob", os.path.basename(p), f.read())


if __name__ == "__main__":
    headers()
    shard_index()
    configs()
    forward_inputs()
    tokenizers()
    programs(sys.argv[1:])
