"""Times one peer engine on the workloads it runs, at one thread count.

Engines (see ENGINES): PyTorch; CTranslate2 in float32 and int8; ONNX Runtime on the exported
BERT in fp32 and dynamic per-channel int8; OpenVINO on the same ONNX BERT in f32; llama.cpp
(llama-cpp-python) on GPT-2 written as an f32 and a Q8_0 GGUF. One process per engine, thread
count and workload: the peers bring their own OpenMP runtimes and fix their thread pools at
start-up, so they are kept apart.

Workloads (random token ids from a fixed seed; no text, no tokenizer):
  bert-forward   BERT-base, batch 1, seq 128: one forward pass (BertModel, with the pooler).
                 PyTorch: model(input_ids, attention_mask, token_type_ids);
                 CTranslate2: Encoder.forward_batch(ids, token_type_ids=...);
                 ONNX Runtime: InferenceSession.run (ORT_ENABLE_ALL, intra_op_num_threads=N);
                 OpenVINO: the compiled model's infer request (INFERENCE_PRECISION_HINT f32,
                 INFERENCE_NUM_THREADS=N, one stream, latency hint).
  gpt2-generate  GPT-2 124M, batch 1, greedy, with a KV cache: a 32-token prompt, then 64
                 single-token decode steps. The prompt pass already picks the first new token,
                 so 65 tokens are generated in all: the same calls cranformer's bench makes
                 (prefill, then --new-tokens steps). min length = max length forces every run
                 to the same length whatever the random model picks.
                 PyTorch: generate(max_new_tokens=min_new_tokens=65);
                 CTranslate2: Generator.generate_batch(include_prompt_in_result=False,
                 min_length=max_length=65);
                 llama.cpp: Llama.eval(prompt ids), then 64 times Llama.eval([argmax]): the
                 ids go in directly, nothing is tokenized, the end token is not special-cased.
  t5-generate    T5-small, batch 1, greedy: encode 64 tokens, then 32 decoder steps from the
                 decoder start token. PyTorch: generate(max_new_tokens=min_new_tokens=32);
                 CTranslate2: Translator.translate_batch(min/max_decoding_length=32).

ms/token (generate): a per-step timestamp (a logits processor in PyTorch, the step callback in
CTranslate2, after each argmax for llama.cpp) is taken each time a token is picked; ms/token = (last - first) / (steps - 1),
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
    """CTranslate2 on the float32 conversion; "ctranslate2-int8" loads the same directory with
    compute_type="int8", which quantizes the weights at load (per output row, symmetric)."""
    import ctranslate2

    name = args.engine
    versions = {"ctranslate2": ctranslate2.__version__}
    out = []
    compute = "int8" if name == "ctranslate2-int8" else "float32"
    kw = dict(device="cpu", compute_type=compute, inter_threads=1, intra_threads=args.threads)
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
            out.append(summary(w, name, args.threads, times, extra={"seq": s["seq"]}))
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
                    name,
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


# ---------------------------------------------------------------------------------------------
# ONNX Runtime and OpenVINO (BERT only: the ONNX export of the same safetensors, make_models.py)


def bert_feeds(args, input_names):
    """The BERT inputs as the exported graph names them (int64, batch 1)."""
    import numpy as np

    s = SHAPES["bert-forward"]
    with open(os.path.join(args.models, s["model"], "hf", "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    ids = np.array([random_ids(s["seq"], vocab, args.seed)], dtype=np.int64)
    every = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    missing = [n for n in input_names if n not in every]
    if missing:
        sys.exit(f"the ONNX BERT has inputs {missing} that this script does not know")
    return {n: every[n] for n in input_names}


def onnx_path(args, int8):
    p = os.path.join(args.models, "bert-base", "onnx", "model_int8.onnx" if int8 else "model.onnx")
    if not os.path.isfile(p):
        sys.exit(f"{p}: missing (make_models.py writes it)")
    return p


def held_copy(module):
    """With PEERS_HELD_AVX2 set (driver.py, for a run held to AVX2), `module` must have been
    imported from hold_avx2.py's copy there, which sees no AVX-512: a figure labelled held is
    never the installed package's. Returns the suffix for its version."""
    held = os.environ.get("PEERS_HELD_AVX2")
    if not held:
        return ""
    where = os.path.dirname(os.path.abspath(module.__file__))
    if os.path.commonpath([where, os.path.abspath(held)]) != os.path.abspath(held):
        sys.exit(f"{module.__name__} was imported from {where}, not from the held copy in {held}")
    return " (held to AVX2: hold_avx2.py's copy)"


def run_ort(args, workloads):
    import onnxruntime as ort

    versions = {"onnxruntime": ort.__version__ + held_copy(ort)}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(
        onnx_path(args, args.engine == "onnxruntime-int8"),
        sess_options=opts,
        providers=["CPUExecutionProvider"],
    )
    feeds = bert_feeds(args, [i.name for i in sess.get_inputs()])
    times, _ = timed(lambda: sess.run(None, feeds), args.warmup, args.runs)
    seq = SHAPES["bert-forward"]["seq"]
    return [summary("bert-forward", args.engine, args.threads, times, extra={"seq": seq})], versions


def run_openvino(args, workloads):
    import openvino as ov

    versions = {"openvino": ov.get_version() + held_copy(ov)}
    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": args.threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = core.compile_model(onnx_path(args, False), "CPU", config)
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    if str(got).lower() not in ("f32", "<type: 'float32'>", "float32"):
        sys.exit(f"OpenVINO compiled the model with inference precision {got}, not f32")
    if os.environ.get("PEERS_HELD_AVX2"):
        # The runtime model names each node's kernel (e.g. jit_avx2_f32): none may be AVX-512.
        kinds = {
            info["primitiveType"].astype(str)
            for info in (op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops())
            if "primitiveType" in info
        }
        wide = sorted(k for k in kinds if "avx512" in k or "amx" in k)
        if wide:
            sys.exit(f"OpenVINO held to AVX2 still chose AVX-512 kernels: {', '.join(wide)}")
    req = compiled.create_infer_request()
    feeds = bert_feeds(args, [i.get_any_name() for i in compiled.inputs])
    times, _ = timed(lambda: req.infer(feeds), args.warmup, args.runs)
    seq = SHAPES["bert-forward"]["seq"]
    extra = {"seq": seq, "openvino_precision": str(got)}
    return [summary("bert-forward", args.engine, args.threads, times, extra=extra)], versions


# ---------------------------------------------------------------------------------------------
# llama.cpp (GPT-2 only: GGUF files written by make_models.py)


def gguf_path(models, q8):
    p = os.path.join(models, "gpt2", "gguf", "gpt2-q8_0.gguf" if q8 else "gpt2-f32.gguf")
    if not os.path.isfile(p):
        sys.exit(f"{p}: missing (make_models.py writes it)")
    return p


def llama_open(path, threads, n_ctx, kv_f32):
    """A llama.cpp context on the CPU, last-token logits only. kv_f32: the KV cache in f32
    (the f32 column: f32 end to end, as the other f32 engines), else llama.cpp's default f16
    (the Q8_0 column, as llama.cpp users run it)."""
    import llama_cpp

    kv = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if kv_f32 else {}
    return llama_cpp.Llama(
        **kv,
        model_path=path,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0,
        logits_all=False,
        verbose=False,
    )


def llama_logits(llm):
    """The last evaluated position's logits, read in place (with logits_all=False llama.cpp
    computes only that row, and Llama.scores is not filled)."""
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def llama_greedy(llm, prompt, n_new, stamps=None, logits=None):
    """Greedy ids after `prompt`: one eval of the prompt, then one eval per picked token.
    n_new tokens are picked in n_new model calls (the prompt's call picks the first). A list
    given as `logits` receives a copy of each call's logits."""
    import numpy as np

    llm.reset()
    llm.eval(prompt)
    picked = []
    while True:
        row = llama_logits(llm)
        if logits is not None:
            logits.append(row.copy())
        picked.append(int(np.argmax(row)))
        if stamps is not None:
            stamps.append(time.perf_counter())
        if len(picked) == n_new:
            return picked
        llm.eval([picked[-1]])


def run_llamacpp(args, workloads):
    import llama_cpp

    versions = {"llama-cpp-python": llama_cpp.__version__}
    s = SHAPES["gpt2-generate"]
    n_new = s["new"] + 1
    q8 = args.engine == "llama.cpp-q8_0"
    llm = llama_open(gguf_path(args.models, q8), args.threads, s["prompt"] + n_new, not q8)
    ids = random_ids(s["prompt"], llm.n_vocab(), args.seed)

    def fn():
        stamps = []
        n = len(llama_greedy(llm, ids, n_new, stamps))
        return stamps, n

    times, results = timed(fn, args.warmup, args.runs)
    extra = {
        "prompt_tokens": s["prompt"],
        "picked_tokens": len(results[0][0]),
        "output_lengths": sorted({n for _, n in results}),
        "llama_system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }
    per_token = [step_ms(t) for t, _ in results]
    return [summary("gpt2-generate", args.engine, args.threads, times, per_token, extra)], versions


# engine -> (function, the workloads it runs)
ENGINES = {
    "pytorch": (run_torch, list(SHAPES)),
    "ctranslate2": (run_ct2, list(SHAPES)),
    "ctranslate2-int8": (run_ct2, list(SHAPES)),
    "onnxruntime": (run_ort, ["bert-forward"]),
    "onnxruntime-int8": (run_ort, ["bert-forward"]),
    "openvino": (run_openvino, ["bert-forward"]),
    "llama.cpp": (run_llamacpp, ["gpt2-generate"]),
    "llama.cpp-q8_0": (run_llamacpp, ["gpt2-generate"]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine", choices=list(ENGINES))
    ap.add_argument("--models", required=True, help="directory written by make_models.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    ap.add_argument("--workload", action="append", choices=sorted(SHAPES))
    a = ap.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != str(a.threads):
        sys.exit("set OMP_NUM_THREADS to --threads before starting this script (run.sh does)")
    fn, runs = ENGINES[a.engine]
    workloads = a.workload or runs
    other = [w for w in workloads if w not in runs]
    if other:
        sys.exit(f"{a.engine} does not run {', '.join(other)} (only {', '.join(runs)})")
    results, versions = fn(a, workloads)
    for r in results:
        r["versions"] = versions
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
