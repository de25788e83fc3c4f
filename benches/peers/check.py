"""Checks that the engines compute the same thing on the saved models before timing them.

On 16 random token ids per model: BERT's last hidden state and GPT-2's and T5's logits from
PyTorch, CTranslate2 (BERT, GPT-2; T5: the greedy tokens of 8 decode steps, as its Translator
returns no logits) and `cranformer forward` on the same directory; BERT's from ONNX Runtime and
OpenVINO on the ONNX export; GPT-2's last-position logits and 8 greedy tokens from llama.cpp on
the f32 GGUF, for three prompts, against PyTorch's. Prints one line per model and writes a
one-line summary to OUT_FILE. Exits 1 on a float32 result beyond float32 noise (or llama.cpp
f32 picking other tokens). The int8 results (CTranslate2 int8, ONNX Runtime int8, llama.cpp
Q8_0) are reported, not judged: their error is what the precision costs.

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


def attempt(fn):
    """fn's result, or "failed: why" (a peer that is missing or broken is reported, and the
    others still checked)."""
    try:
        return fn()
    except Exception as e:
        return f"failed: {e!r}"[:300]


def ct2_bert(models, ids, compute):
    enc = ctranslate2.Encoder(os.path.join(models, "bert-base", "ct2"), compute_type=compute)
    return np.array(enc.forward_batch([ids], token_type_ids=[[0] * len(ids)]).last_hidden_state)


def ct2_gpt2(models, ids, compute):
    gen = ctranslate2.Generator(os.path.join(models, "gpt2", "ct2"), compute_type=compute)
    return np.array(gen.forward_batch([ids]))


def ort_bert(path, feeds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(["last_hidden_state"], {n: feeds[n] for n in names})[0]


def openvino_bert(path, feeds):
    import openvino as ov

    compiled = ov.Core().compile_model(
        path, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}
    )
    names = [i.get_any_name() for i in compiled.inputs]
    out = compiled({n: feeds[n] for n in names})
    return out[compiled.output("last_hidden_state")]


def torch_greedy(model, prompt, n):
    """(last-position logits of the prompt, n greedy ids), recomputing the whole sequence each
    step: plain argmax, nothing suppressed, as the llama.cpp side does."""
    seq, first, picked = list(prompt), None, []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].numpy()
            if first is None:
                first = logits.copy()
            picked.append(int(np.argmax(logits)))
            seq.append(picked[-1])
    return first, picked


def llama_greedy_check(path, prompts):
    """[(last-position logits of the prompt, 8 greedy ids)] from llama.cpp (bench_peers.py's
    decode loop), one context reused across the prompts."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_peers import llama_greedy, llama_open

    llm = llama_open(path, 2, 64, kv_f32="q8_0" not in path)
    out = []
    for p in prompts:
        logits = []
        picked = llama_greedy(llm, p, 8, logits=logits)
        out.append((np.asarray(logits[0], np.float32), picked))
    return out


def main():
    models, binary, out_file = sys.argv[1:4]
    torch.set_num_threads(2)
    parts, bad = [], False

    def report(name, what, cmp):
        nonlocal bad
        bits = []
        for who, v, *judged in cmp:
            judged = judged[0] if judged else True
            if isinstance(v, str):
                bits.append(f"{who} {v}")
                bad = bad or (judged and (v.startswith("DIFFER") or v.startswith("failed")))
            elif not judged:
                bits.append(f"{who} {v:.1e}")
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
    c2_int8 = attempt(lambda: rel(ref, ct2_bert(models, ids, "int8")))
    onnx_dir = os.path.join(models, "bert-base", "onnx")
    feeds = {
        "input_ids": np.array([ids], np.int64),
        "attention_mask": np.ones((1, N), np.int64),
        "token_type_ids": np.zeros((1, N), np.int64),
    }
    report(
        "BERT-base",
        "last hidden state",
        [("CTranslate2", rel(ref, c2)),
         ("cranformer", f"failed: {err}" if cf is None else rel(ref, cf["last_hidden_state"])),
         ("ONNX Runtime", attempt(lambda: rel(ref, ort_bert(os.path.join(onnx_dir, "model.onnx"), feeds)))),
         ("OpenVINO f32", attempt(lambda: rel(ref, openvino_bert(os.path.join(onnx_dir, "model.onnx"), feeds)))),
         ("CTranslate2 int8", c2_int8, False),
         ("ONNX Runtime int8", attempt(lambda: rel(ref, ort_bert(os.path.join(onnx_dir, "model_int8.onnx"), feeds))), False)],
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
    c2_int8 = attempt(lambda: rel(ref, ct2_gpt2(models, ids, "int8")))
    report(
        "GPT-2",
        "logits",
        [("CTranslate2", rel(ref, c2)),
         ("cranformer", f"failed: {err}" if cf is None else rel(ref, cf["logits"])),
         ("CTranslate2 int8", c2_int8, False)],
    )
    # llama.cpp: last-position logits and 8 greedy tokens for three prompts, against PyTorch.
    m = transformers.GPT2LMHeadModel.from_pretrained(hf).eval()
    prompts = [ids_for(m.config.vocab_size, seed=s) for s in (1, 2, 3)]
    want = [torch_greedy(m, p, 8) for p in prompts]
    del m
    for fname, what, judged in (("gpt2-f32.gguf", "llama.cpp f32", True),
                                ("gpt2-q8_0.gguf", "llama.cpp Q8_0", False)):
        try:
            got = llama_greedy_check(os.path.join(models, "gpt2", "gguf", fname), prompts)
        except Exception as e:
            report("GPT-2", what, [(what, f"failed: {e}", judged)])
            continue
        same = sum(g == w_[1] for (_, g), w_ in zip(got, want))
        errs = [rel(w_[0], l) for (l, _), w_ in zip(got, want)]
        tokens = "same" if same == len(want) else (
            f"DIFFER ({same} of {len(want)} prompts the same; llama.cpp {[g for _, g in got]} "
            f"vs PyTorch {[w_[1] for w_ in want]})"
        )
        report(
            "GPT-2",
            f"{what} (last-position logits, 8 greedy tokens of 3 prompts)",
            [(f"{what} logits", max(errs), judged), (f"{what} greedy tokens", tokens, judged)],
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
    def ct2_t5_int8():
        tr = ctranslate2.Translator(ct2_dir, compute_type="int8")
        hyp = tr.translate_batch(
            [[vocab[i] for i in ids]], beam_size=1, max_decoding_length=8, min_decoding_length=8
        )[0].hypotheses[0]
        got = [index[t] for t in hyp]
        agree = sum(a == b for a, b in zip(got, greedy))
        return f"{agree} of {len(greedy)} the same"

    report(
        "T5-small",
        "logits",
        [("CTranslate2 greedy tokens",
          "same" if c2_ids == greedy else f"DIFFER ({c2_ids} vs {greedy})"),
         ("CTranslate2 int8 greedy tokens", attempt(ct2_t5_int8), False),
         ("cranformer", f"failed: {err}" if cf is None else rel(ref, cf["logits"]))],
    )

    with open(out_file, "w") as f:
        f.write("; ".join(parts) + ("" if not bad else " -- MISMATCH") + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
