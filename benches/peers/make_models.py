"""Builds the random-weight, full-size models that the peer comparison runs.

For each of BERT-base, GPT-2 124M and T5-small this script
  1. builds the model with transformers from its config, with weights drawn from a fixed seed
     (transformers' own initialisation), and saves it with save_pretrained (safetensors);
  2. saves next to it a stand-in tokenizer: a word-level vocabulary of the model's full size
     ("[CLS]", "t1234", ...). No text is ever tokenized: every workload is driven by token ids.
     CTranslate2's converter needs a tokenizer only for the id <-> token-string table, and its
     Generator and Translator take token strings, which this table gives;
  3. converts the saved directory to CTranslate2 in float32 (its int8 mode quantizes this one at
     load time);
  4. BERT: exports the saved model to ONNX with torch.onnx.export (onnx/model.onnx, the graph
     ONNX Runtime and OpenVINO run) and quantizes that with ONNX Runtime's quantize_dynamic,
     per-channel QInt8 weights (onnx/model_int8.onnx);
  5. GPT-2: writes the saved safetensors as GGUF with the gguf package (llama.cpp's own
     writer), architecture "gpt2", in f32 and in Q8_0 (gguf/gpt2-f32.gguf, gguf/gpt2-q8_0.gguf).

cranformer reads the same safetensors directory, so every engine runs identical weights (up to
each one's own quantization in the int8 rows).

Usage: python make_models.py OUT_DIR [--seed N] [--force] [--only NAME]...
Writes OUT_DIR/<name>/{hf,ct2}/ (and onnx/ or gguf/); a part whose stamp matches (seed and
package versions) is kept as it is.
"""

import argparse
import glob
import json
import os
import shutil
import sys
import time

import ctranslate2
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

MODELS = {
    # bert-base-uncased's sizes.
    "bert-base": dict(
        cls="BertModel",
        config=transformers.BertConfig(
            vocab_size=30522,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            type_vocab_size=2,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            pad_token_id=0,
            # transformers 5 dropped this field (BERT is always absolute now); CTranslate2's
            # BERT converter still reads it, and cranformer accepts it.
            position_embedding_type="absolute",
        ),
        # token string -> id for the special tokens, as in bert-base-uncased's vocab.txt
        special={"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103},
        roles=dict(
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        ),
    ),
    # gpt2 (124M).
    "gpt2": dict(
        cls="GPT2LMHeadModel",
        config=transformers.GPT2Config(
            vocab_size=50257,
            n_positions=1024,
            n_embd=768,
            n_layer=12,
            n_head=12,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            bos_token_id=50256,
            eos_token_id=50256,
        ),
        special={"<|endoftext|>": 50256},
        roles=dict(
            unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        ),
    ),
    # t5-small: relu feed-forward, tied embeddings.
    "t5-small": dict(
        cls="T5ForConditionalGeneration",
        config=transformers.T5Config(
            vocab_size=32128,
            d_model=512,
            d_kv=64,
            d_ff=2048,
            num_layers=6,
            num_decoder_layers=6,
            num_heads=8,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
            layer_norm_epsilon=1e-6,
            decoder_start_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        ),
        special={"<pad>": 0, "</s>": 1, "<unk>": 2},
        roles=dict(unk_token="<unk>", pad_token="<pad>", eos_token="</s>"),
    ),
}


def stamp_of(seed):
    return {
        "seed": seed,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ctranslate2": ctranslate2.__version__,
        "tokenizers": tokenizers.__version__,
        "format": 1,
    }


def vocabulary(size, special):
    """Token string -> id for every id below `size`: the special tokens, then "t<id>"."""
    by_id = {i: t for t, i in special.items()}
    return {by_id.get(i, f"t{i}"): i for i in range(size)}


def save_tokenizer(out, spec):
    vocab = vocabulary(spec["config"].vocab_size, spec["special"])
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=spec["roles"]["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **spec["roles"])
    fast.save_pretrained(out)
    # The word-level table must load back as itself (not as the architecture's own tokenizer
    # class, which would rebuild a different vocabulary).
    back = transformers.AutoTokenizer.from_pretrained(out)
    got = back.get_vocab()
    if len(got) != len(vocab) or any(got.get(t) != i for t, i in vocab.items()):
        sys.exit(f"{out}: the saved tokenizer does not load back with the same vocabulary")


def build(name, spec, root, seed, force):
    hf = os.path.join(root, name, "hf")
    ct2 = os.path.join(root, name, "ct2")
    stamp_path = os.path.join(root, name, "stamp.json")
    stamp = stamp_of(seed)
    if not force and os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp and os.path.isdir(hf) and os.path.isdir(ct2):
                print(f"{name}: kept ({hf})", flush=True)
                return
    # The ONNX and GGUF files are made from hf/: they go with it.
    for d in (hf, ct2, os.path.join(root, name, "onnx"), os.path.join(root, name, "gguf")):
        shutil.rmtree(d, ignore_errors=True)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    os.makedirs(hf)

    start = time.time()
    torch.manual_seed(seed)
    model = getattr(transformers, spec["cls"])(spec["config"]).eval()
    model.save_pretrained(hf, safe_serialization=True)
    save_tokenizer(hf, spec)
    params = sum(p.numel() for p in model.parameters())
    del model
    if not any(f.endswith(".safetensors") for f in os.listdir(hf)):
        sys.exit(f"{hf}: save_pretrained wrote no safetensors file")

    converter = ctranslate2.converters.TransformersConverter(hf)
    converter.convert(ct2, quantization="float32", force=True)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f, indent=1)
    print(
        f"{name}: {params / 1e6:.1f}M parameters, saved to {hf} and converted to {ct2} "
        f"in {time.time() - start:.0f} s",
        flush=True,
    )


def stamp_ok(path, stamp):
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f) == stamp


def export_onnx(root, force):
    """BERT-base to ONNX (fp32), and ONNX Runtime's dynamic int8 quantization of it."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hf = os.path.join(root, "bert-base", "hf")
    out = os.path.join(root, "bert-base", "onnx")
    with open(os.path.join(root, "bert-base", "stamp.json")) as f:
        stamp = {"hf": json.load(f), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    stamp_path = os.path.join(out, "stamp.json")
    if not force and stamp_ok(stamp_path, stamp):
        print(f"bert-base: ONNX kept ({out})", flush=True)
        return
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    start = time.time()
    # Eager attention: the plain MatMul-Softmax-MatMul pattern that ONNX Runtime's graph
    # optimizer and OpenVINO recognise, rather than whatever SDPA lowers to.
    model = transformers.BertModel.from_pretrained(hf, attn_implementation="eager").eval()
    ids = torch.randint(1000, 2000, (1, 128))
    inputs = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    fp32 = os.path.join(out, "model.onnx")
    common = dict(
        input_names=names,
        output_names=["last_hidden_state", "pooler_output"],
        dynamic_axes={n: {0: "batch", 1: "seq"} for n in names},
        opset_version=18,
    )
    # The torch.export-based exporter (torch's default since 2.9; the TorchScript one trips over
    # transformers 5's forward signature). One self-contained file: 440 MB is under protobuf's
    # 2 GB limit.
    with torch.inference_mode():
        torch.onnx.export(model, inputs, fp32, dynamo=True, external_data=False, **common)
    del model
    onnx.checker.check_model(fp32)
    quantize_dynamic(
        model_input=fp32,
        model_output=os.path.join(out, "model_int8.onnx"),
        per_channel=True,
        weight_type=QuantType.QInt8,
    )
    with open(stamp_path, "w") as f:
        json.dump(stamp, f, indent=1)
    print(f"bert-base: exported to ONNX and quantized (int8) in {out} in {time.time() - start:.0f} s",
          flush=True)


def byte_symbols():
    """The 256 one-character strings byte-level BPE vocabularies (GPT-2's) use for the bytes:
    printable Latin-1 stands for itself, the rest is shifted past U+0100. llama.cpp looks up
    the newline's symbol when it loads a "gpt2" vocabulary."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, shift = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(0x100 + shift)
            shift += 1
    return [out[b] for b in range(256)]


def write_gguf(root, force):
    """GPT-2 as GGUF in f32 and Q8_0, tensors named by gguf's own table for MODEL_ARCH.GPT2."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    hf = os.path.join(root, "gpt2", "hf")
    out = os.path.join(root, "gpt2", "gguf")
    with open(os.path.join(root, "gpt2", "stamp.json")) as f:
        stamp = {"hf": json.load(f), "gguf": _version("gguf"), "format": 1}
    stamp_path = os.path.join(out, "stamp.json")
    if not force and stamp_ok(stamp_path, stamp):
        print(f"gpt2: GGUF kept ({out})", flush=True)
        return
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    start = time.time()
    with open(os.path.join(hf, "config.json")) as f:
        cfg = json.load(f)
    tensors = {}
    for p in sorted(glob.glob(os.path.join(hf, "*.safetensors"))):
        tensors.update(load_file(p))
    arch = gguf.MODEL_ARCH.GPT2
    names = gguf.get_tensor_name_map(arch, cfg["n_layer"])
    vocab = cfg["vocab_size"]
    eos = cfg["eos_token_id"]
    # The stand-in vocabulary (no text is tokenized): the byte symbols, then "t<id>".
    sym = byte_symbols()
    tokens = [sym[i] if i < 256 else f"t{i}" for i in range(vocab)]
    tokens[eos] = "<|endoftext|>"
    types = [int(gguf.TokenType.NORMAL)] * vocab
    types[eos] = int(gguf.TokenType.CONTROL)

    mapped = []
    for key in sorted(tensors):
        base = key.removeprefix("transformer.")
        if base.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers of old checkpoints, not weights
        if key == "lm_head.weight":
            continue  # tied to wte; llama.cpp's gpt2 loader falls back to token_embd
        new = names.get_name(base, try_suffixes=(".weight", ".bias"))
        if new is None:
            sys.exit(f"{hf}: tensor {key} has no GGUF name for architecture gpt2")
        a = tensors[key].astype(np.float32)
        # GPT-2's Conv1D stores (in, out); GGUF wants (out, in) rows like nn.Linear.
        if base.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            a = a.T
        mapped.append((new, np.ascontiguousarray(a)))

    for qtype, ftype, fname in (
        (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32, "gpt2-f32.gguf"),
        (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0, "gpt2-q8_0.gguf"),
    ):
        w = gguf.GGUFWriter(os.path.join(out, fname), gguf.MODEL_ARCH_NAMES[arch])
        w.add_name("random-weight GPT-2 124M (cranformer benches/peers)")
        w.add_block_count(cfg["n_layer"])
        w.add_context_length(cfg["n_positions"])
        w.add_embedding_length(cfg["n_embd"])
        w.add_feed_forward_length(cfg.get("n_inner") or 4 * cfg["n_embd"])
        w.add_head_count(cfg["n_head"])
        w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
        w.add_file_type(ftype)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        # One harmless merge: the gpt2 vocabulary type requires the list; ids go in directly.
        w.add_token_merges(["\u0120 t"])
        w.add_bos_token_id(eos)
        w.add_eos_token_id(eos)
        for name, a in mapped:
            # As llama.cpp's quantize does for Q8_0: every matrix (the tied embedding, which is
            # also the LM head, included) in Q8_0; vectors (norms, biases) stay f32. The
            # position table, read one row a token, stays f32 too.
            pos = name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD])
            if qtype != gguf.GGMLQuantizationType.F32 and a.ndim == 2 and not pos:
                w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
            else:
                w.add_tensor(name, a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    with open(stamp_path, "w") as f:
        json.dump(stamp, f, indent=1)
    print(f"gpt2: wrote f32 and Q8_0 GGUF to {out} in {time.time() - start:.0f} s", flush=True)


def _version(pkg):
    from importlib.metadata import version

    return version(pkg)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--only", action="append", choices=sorted(MODELS))
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    for name, spec in MODELS.items():
        if a.only and name not in a.only:
            continue
        build(name, spec, a.out, a.seed, a.force)
    # The files for the other engines; one that cannot be made is reported and leaves the
    # others (the driver then reports that engine as failed).
    bad = 0
    for name, make in (("bert-base", export_onnx), ("gpt2", write_gguf)):
        if a.only and name not in a.only:
            continue
        try:
            make(a.out, a.force)
        except Exception as e:
            print(f"make_models.py: {make.__name__} for {name} failed: {e!r}", file=sys.stderr)
            bad = 1
    return bad


if __name__ == "__main__":
    sys.exit(main())
