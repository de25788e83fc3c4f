"""Times one peer framework (PyTorch or CTranslate2) on the three workloads, at one thread count.

One process per framework and thread count: PyTorch and CTranslate2 bring their own OpenMP
runtimes and fix their thread pools at start-up, so they are kept apart.

Workloads (random token ids from a fixed seed; no text, no tokenizer):
  bert-forward   BERT-base, batch 1, seq 128: one forward pass (BertModel, with the pooler).
                 PyTorch: model(input_ids, attention_mask, token_type_ids);
                 CTranslate2: Encoder.forward_batch(ids, token_type_ids=...).
  gpt2-generate  GPT-2 124M, batch 1, greedy, with a KV cache: a 32-token prompt, then 64
                 single-token decode steps. The prompt pass already picks the first new token,
                 so 65 tokens are generated in all: the same calls cranformer's bench makes
                 (prefill, then --new-tokens steps). min length = max length forces every run
                 to the same length whatever the random model picks.
                 PyTorch: generate(max_new_tokens=min_new_tokens=65);
                 CTranslate2: Generator.generate_batch(include_prompt_in_result=False,
                 min_length=max_length=65).
  t5-generate    T5-small, batch 1, greedy: encode 64 tokens, then 32 decoder steps from the
                 decoder start token. PyTorch: generate(max_new_tokens=min_new_tokens=32);
                 CTranslate2: Translator.translate_batch(min/max_decoding_length=32).

ms/token (generate): a per-step timestamp (a logits processor in PyTorch, the step callback in
CTranslate2) is taken each time a token is picked; ms/token = (last - first) / (steps - 1),
i.e. the decode steps after the prompt pass, as cranformer's ms_per_new_token.

Prints one JSON object per workload on stdout.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

SHAPES = {
    "bert-forward": dict(model="bert-base", seq=128),
    "gpt2-generate": dict(model="gpt2", prompt=32, new=64),
    "t5-generate": dict(model="t5-small", prompt=64, new=32),
}


def random_ids(n, vocab, seed):
    """Token ids clear of the special tokens at both ends of the vocabularies."""
    rng = random.Random(seed)
    return [rng.randrange(1000, vocab - 1000) for _ in range(n)]


def load_vocab(ct2_dir):
    for name in ("vocabulary.json", "shared_vocabulary.json"):
        p = os.path.join(ct2_dir, name)
        if os.path.isfile(p):
            with open(p) as f:
                return json.load(f)
    sys.exit(f"{ct2_dir}: no vocabulary file")


def timed(fn, warmup, runs):
    """Runs fn warmup + runs times; returns (list of wall ms, list of fn results) of timed runs."""
    for _ in range(warmup):
        fn()
    times, results = [], []
    for _ in range(runs):
        t = time.perf_counter()
        r = fn()
        times.append((time.perf_counter() - t) * 1e3)
        results.append(r)
    return times, results


def summary(workload, framework, threads, times, per_token=None, extra=None):
    o = {
        "workload": workload,
        "framework": framework,
        "threads": threads,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "runs": len(times),
    }
    if per_token:
        o["ms_per_token"] = statistics.median(per_token)
    if extra:
        o.update(extra)
    return o


def step_ms(stamps):
    if len(stamps) < 2:
        return None
    return (stamps[-1] - stamps[0]) * 1e3 / (len(stamps) - 1)


# ---------------------------------------------------------------------------------------------
# PyTorch


def run_torch(args, workloads):
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    out = []

    class Stamp(transformers.LogitsProcessor):
        def __init__(self):
            self.t = []

        def __call__(self, input_ids, scores):
            self.t.append(time.perf_counter())
            return scores

    for w in workloads:
        s = SHAPES[w]
        path = os.path.join(args.models, s["model"], "hf")
        if w == "bert-forward":
            model = transformers.BertModel.from_pretrained(path).eval()
            ids = torch.tensor([random_ids(s["seq"], model.config.vocab_size, args.seed)])
            mask = torch.ones_like(ids)
            types = torch.zeros_like(ids)

            def fn():
                with torch.inference_mode():
                    return model(input_ids=ids, attention_mask=mask, token_type_ids=types)

            times, _ = timed(fn, args.warmup, args.runs)
            out.append(summary(w, "pytorch", args.threads, times, extra={"seq": s["seq"]}))
        else:
            cls = (
                transformers.GPT2LMHeadModel
                if w == "gpt2-generate"
                else transformers.T5ForConditionalGeneration
            )
            model = cls.from_pretrained(path).eval()
            n_new = s["new"] + 1 if w == "gpt2-generate" else s["new"]
            ids = torch.tensor([random_ids(s["prompt"], model.config.vocab_size, args.seed)])
            mask = torch.ones_like(ids)
            pad = model.config.pad_token_id
            if pad is None:
                pad = model.config.eos_token_id
            per_token, lengths = [], []

            def fn():
                stamp = Stamp()
                with torch.inference_mode():
                    r = model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=n_new,
                        min_new_tokens=n_new,
                        do_sample=False,
                        num_beams=1,
                        use_cache=True,
                        pad_token_id=pad,
                        logits_processor=transformers.LogitsProcessorList([stamp]),
                    )
                return stamp.t, r.shape[1]

            times, results = timed(fn, args.warmup, args.runs)
            per_token = [step_ms(t) for t, _ in results]
            lengths = sorted({n for _, n in results})
            out.append(
                summary(
                    w,
                    "pytorch",
                    args.threads,
                    times,
                    per_token,
                    {
                        "prompt_tokens": s["prompt"],
                        "picked_tokens": len(results[0][0]),
                        "output_lengths": lengths,
                    },
                )
            )
        del model
    return out, versions


# ---------------------------------------------------------------------------------------------
# CTranslate2


def run_ct2(args, workloads):
    import ctranslate2

    versions = {"ctranslate2": ctranslate2.__version__}
    out = []
    kw = dict(device="cpu", compute_type="float32", inter_threads=1, intra_threads=args.threads)
    for w in workloads:
        s = SHAPES[w]
        path = os.path.join(args.models, s["model"], "ct2")
        vocab = load_vocab(path)
        if w == "bert-forward":
            model = ctranslate2.Encoder(path, **kw)
            ids = random_ids(s["seq"], len(vocab), args.seed)
            types = [0] * len(ids)

            def fn():
                return model.forward_batch([ids], token_type_ids=[types])

            times, _ = timed(fn, args.warmup, args.runs)
            out.append(summary(w, "ctranslate2", args.threads, times, extra={"seq": s["seq"]}))
        else:
            tokens = [vocab[i] for i in random_ids(s["prompt"], len(vocab), args.seed)]
            if w == "gpt2-generate":
                model = ctranslate2.Generator(path, **kw)
                n_new = s["new"] + 1

                def call(cb):
                    r = model.generate_batch(
                        [tokens],
                        max_length=n_new,
                        min_length=n_new,
                        include_prompt_in_result=False,
                        beam_size=1,
                        sampling_topk=1,
                        callback=cb,
                    )
                    return len(r[0].sequences_ids[0])

            else:
                model = ctranslate2.Translator(path, **kw)
                n_new = s["new"]

                def call(cb):
                    r = model.translate_batch(
                        [tokens],
                        max_decoding_length=n_new,
                        min_decoding_length=n_new,
                        beam_size=1,
                        sampling_topk=1,
                        callback=cb,
                    )
                    return len(r[0].hypotheses[0])

            def fn():
                stamps = []

                def cb(step):
                    stamps.append(time.perf_counter())
                    return False

                n = call(cb)
                return stamps, n

            times, results = timed(fn, args.warmup, args.runs)
            per_token = [step_ms(t) for t, _ in results]
            out.append(
                summary(
                    w,
                    "ctranslate2",
                    args.threads,
                    times,
                    per_token,
                    {
                        "prompt_tokens": s["prompt"],
                        "picked_tokens": len(results[0][0]),
                        "output_lengths": sorted({n for _, n in results}),
                    },
                )
            )
        del model
    return out, versions


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("framework", choices=["pytorch", "ctranslate2"])
    ap.add_argument("--models", required=True, help="directory written by make_models.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    ap.add_argument("--workload", action="append", choices=sorted(SHAPES))
    a = ap.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != str(a.threads):
        sys.exit("set OMP_NUM_THREADS to --threads before starting this script (run.sh does)")
    workloads = a.workload or list(SHAPES)
    fn = run_torch if a.framework == "pytorch" else run_ct2
    results, versions = fn(a, workloads)
    for r in results:
        r["versions"] = versions
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
