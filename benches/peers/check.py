"""Checks that the three frameworks compute the same thing on the saved models before timing them.

On 16 random token ids per model: BERT's last hidden state and GPT-2's and T5's logits from
PyTorch, CTranslate2 (BERT, GPT-2; T5: the greedy tokens of 8 decode steps, as its Translator
returns no logits) and `cranformer forward` on the same directory. Prints one line per model
and writes a one-line summary to OUT_FILE. Exits 1 on a mismatch beyond float32 noise.

Usage: python check.py MODELS_DIR CRANFORMER_BIN OUT_FILE
"""

import json
import os
import subprocess
import sys
import tempfile

import ctranslate2
import numpy as np
import torch
import transformers
from safetensors.numpy import load_file

N = 16
TOL = 1e-3  # max |a - b| / max |a| allowed


def ids_for(vocab, seed=1):
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(1000, vocab - 1000, N)]


def cranformer_forward(binary, model_dir, doc, threads=2):
    with tempfile.TemporaryDirectory() as d:
        inp, out = os.path.join(d, "in.json"), os.path.join(d, "out.safetensors")
        with open(inp, "w") as f:
            json.dump(doc, f)
        p = subprocess.run(
            [binary, "forward", model_dir, "--input", inp, "--output", out,
             "--threads", str(threads)],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            return None, (p.stderr.strip().splitlines() or ["failed"])[-1]
        return load_file(out), None


def rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def main():
    models, binary, out_file = sys.argv[1:4]
    torch.set_num_threads(2)
    parts, bad = [], False

    def report(name, what, cmp):
        nonlocal bad
        bits = []
        for who, v in cmp:
            if isinstance(v, str):
                bits.append(f"{who} {v}")
                bad = bad or v.startswith("DIFFER") or v.startswith("failed")
            else:
                ok = v <= TOL
                bad = bad or not ok
                bits.append(f"{who} {v:.1e}" + ("" if ok else " (MISMATCH)"))
        line = f"{name} {what} vs PyTorch (max |diff| / max |value|): " + ", ".join(bits)
        print("  " + line, flush=True)
        parts.append(line)

    # BERT
    hf = os.path.join(models, "bert-base", "hf")
    m = transformers.BertModel.from_pretrained(hf).eval()
    ids = ids_for(m.config.vocab_size)
    with torch.inference_mode():
        ref = m(input_ids=torch.tensor([ids])).last_hidden_state.numpy()
    del m
    enc = ctranslate2.Encoder(os.path.join(models, "bert-base", "ct2"), compute_type="float32")
    c2 = np.array(enc.forward_batch([ids], token_type_ids=[[0] * N]).last_hidden_state)
    del enc
    cf, err = cranformer_forward(
        binary, hf, {"input_ids": [ids], "attention_mask": [[1] * N], "token_type_ids": [[0] * N]}
    )
    report(
        "BERT-base",
        "last hidden state",
        [("CTranslate2", rel(ref, c2)),
         ("cranformer", f"failed: {err}" if cf is None else rel(ref, cf["last_hidden_state"]))],
    )

    # GPT-2
    hf = os.path.join(models, "gpt2", "hf")
    m = transformers.GPT2LMHeadModel.from_pretrained(hf).eval()
    ids = ids_for(m.config.vocab_size)
    with torch.inference_mode():
        ref = m(input_ids=torch.tensor([ids])).logits.numpy()
    del m
    gen = ctranslate2.Generator(os.path.join(models, "gpt2", "ct2"), compute_type="float32")
    c2 = np.array(gen.forward_batch([ids]))
    del gen
    cf, err = cranformer_forward(binary, hf, {"input_ids": [ids], "attention_mask": [[1] * N]})
    report(
        "GPT-2",
        "logits",
        [("CTranslate2", rel(ref, c2)),
         ("cranformer", f"failed: {err}" if cf is None else rel(ref, cf["logits"]))],
    )

    # T5
    hf = os.path.join(models, "t5-small", "hf")
    m = transformers.T5ForConditionalGeneration.from_pretrained(hf).eval()
    ids = ids_for(m.config.vocab_size)
    dec = [m.config.decoder_start_token_id] + ids_for(m.config.vocab_size, seed=2)[:7]
    with torch.inference_mode():
        ref = m(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([dec])).logits.numpy()
        greedy = m.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
            num_beams=1,
        )[0, 1:].tolist()
    del m
    ct2_dir = os.path.join(models, "t5-small", "ct2")
    with open(os.path.join(ct2_dir, "shared_vocabulary.json")) as f:
        vocab = json.load(f)
    tr = ctranslate2.Translator(ct2_dir, compute_type="float32")
    hyp = tr.translate_batch(
        [[vocab[i] for i in ids]], beam_size=1, max_decoding_length=8, min_decoding_length=8
    )[0].hypotheses[0]
    del tr
    index = {t: i for i, t in enumerate(vocab)}
    c2_ids = [index[t] for t in hyp]
    cf, err = cranformer_forward(
        binary, hf,
        {"input_ids": [ids], "attention_mask": [[1] * N], "decoder_input_ids": [dec]},
    )
    report(
        "T5-small",
        "logits",
        [("CTranslate2 greedy tokens",
          "same" if c2_ids == greedy else f"DIFFER ({c2_ids} vs {greedy})"),
         ("cranformer", f"failed: {err}" if cf is None else rel(ref, cf["logits"]))],
    )

    with open(out_file, "w") as f:
        f.write("; ".join(parts) + ("" if not bad else " -- MISMATCH") + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
