"""Builds the random-weight, full-size models that the peer comparison runs.

For each of BERT-base, GPT-2 124M and T5-small this script
  1. builds the model with transformers from its config, with weights drawn from a fixed seed
     (transformers' own initialisation), and saves it with save_pretrained (safetensors);
  2. saves next to it a stand-in tokenizer: a word-level vocabulary of the model's full size
     ("[CLS]", "t1234", ...). No text is ever tokenized: every workload is driven by token ids.
     CTranslate2's converter needs a tokenizer only for the id <-> token-string table, and its
     Generator and Translator take token strings, which this table gives;
  3. converts the saved directory to CTranslate2 in float32.

cranformer reads the same safetensors directory, so all three frameworks run identical weights.

Usage: python make_models.py OUT_DIR [--seed N] [--force]
Writes OUT_DIR/<name>/hf/ and OUT_DIR/<name>/ct2/; a model whose stamp matches (seed and
package versions) is kept as it is.
"""

import argparse
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
    for d in (hf, ct2):
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


if __name__ == "__main__":
    main()
