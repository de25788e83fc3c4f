"""Runs the peer comparison and writes its table (run.sh calls this inside the venv).

For each round, thread count and workload, every selected engine (ENGINES: cranformer at each
precision, PyTorch, CTranslate2 f32/int8, ONNX Runtime fp32/int8, OpenVINO f32, llama.cpp
f32/Q8_0) once, each in a fresh process, so that they are measured close together in time; the
order is reversed every other round. Every measurement line (JSON) is kept in OUT/raw.jsonl. The
tables, printed and written to OUT/results.md, have one column per engine and precision: the
median over rounds of each measurement's median, and cranformer's figure divided by the
column's within each round, the median of those ratios over the rounds.

Before each measurement the driver waits (up to --wait-quiet seconds) for the machine to be
quiet: the CPU pressure that other processes cause ("some avg10" of /proc/pressure/cpu) under
--quiet-below percent. The pressure seen at the start of each measurement is recorded and shown.

With --placement (placement.c, built by run.sh), the round trip of a cache line between the first
two CPUs is measured just before each measurement (0.2 s) and recorded as placement_ns. On a
virtual machine it tells where the host put the vCPUs: on the AMD EPYC Zen 5 KVM guest it was
110-140 ns at some times and 370-420 ns at others, and every engine's multi-threaded time was
slower in the second state (cranformer's BERT-base on 2 threads 47-48 ms against 52-54).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# workload -> (model directory name, title, cranformer bench flags)
WORKLOADS = {
    "bert-forward": (
        "bert-base",
        "BERT-base forward, batch 1, seq 128",
        ["--task", "forward", "--seq", "128", "--batch", "1"],
    ),
    "gpt2-generate": (
        "gpt2",
        "GPT-2 124M greedy, 32 prompt + 64 decode steps",
        ["--task", "generate", "--prompt-tokens", "32", "--new-tokens", "64"],
    ),
    "t5-generate": (
        "t5-small",
        "T5-small greedy, 64 input tokens + 32 decode steps",
        ["--task", "generate", "--prompt-tokens", "64", "--new-tokens", "32"],
    ),
}

# engine -> (who, precision, workloads it runs (None: all)). The order is the order of the
# table's columns and of the measurements in a round (reversed every other round).
ENGINES = {
    "cranformer": ("cranformer", "f32", None),
    "cranformer-bf16": ("cranformer", "bf16", None),
    "cranformer-int8": ("cranformer", "int8", None),
    "pytorch": ("PyTorch", "f32", None),
    "ctranslate2": ("CTranslate2", "f32", None),
    "ctranslate2-int8": ("CTranslate2", "int8", None),
    "onnxruntime": ("ONNX Runtime", "f32", ["bert-forward"]),
    "onnxruntime-int8": ("ONNX Runtime", "int8", ["bert-forward"]),
    "openvino": ("OpenVINO", "f32", ["bert-forward"]),
    "llama.cpp": ("llama.cpp", "f32", ["gpt2-generate"]),
    "llama.cpp-q8_0": ("llama.cpp", "Q8_0", ["gpt2-generate"]),
}
# --engines takes engine names or these families (every precision of that peer).
FAMILIES = {
    "cranformer": ["cranformer", "cranformer-bf16", "cranformer-int8"],
    "pytorch": ["pytorch"],
    "torch": ["pytorch"],
    "ctranslate2": ["ctranslate2", "ctranslate2-int8"],
    "ct2": ["ctranslate2", "ctranslate2-int8"],
    "onnxruntime": ["onnxruntime", "onnxruntime-int8"],
    "ort": ["onnxruntime", "onnxruntime-int8"],
    "openvino": ["openvino"],
    "ov": ["openvino"],
    "llama.cpp": ["llama.cpp", "llama.cpp-q8_0"],
    "llamacpp": ["llama.cpp", "llama.cpp-q8_0"],
}
# Which figure each workload is judged by (issues 8 and 9): the whole forward for BERT, the
# decode step for GPT-2, the whole 64 + 32 run for T5.
HEADLINE = {"bert-forward": "median_ms", "gpt2-generate": "ms_per_token", "t5-generate": "median_ms"}
# --isa avx2 on a wider machine: what each engine is told (those that listen; see README.md).
ISA_ENV = {
    "avx2": {
        "CRANFORMER_ISA": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "DNNL_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "CT2_FORCE_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    },
}


def precision(engine):
    return ENGINES[engine][1]


def label(engine):
    who, prec, _ = ENGINES[engine]
    return f"{who} {prec}"


def runs_workload(engine, workload):
    only = ENGINES[engine][2]
    return only is None or workload in only


def baseline(engine):
    """The cranformer engine a column is compared with: the same precision for int8 peers
    (Q8_0 counts as int8), f32 otherwise; cranformer's own bf16/int8 against its f32."""
    if ENGINES[engine][0] == "cranformer":
        return None if engine == "cranformer" else "cranformer"
    return "cranformer-int8" if precision(engine) in ("int8", "Q8_0") else "cranformer"


def select_engines(engines, frameworks):
    """The engines to run, in table order. cranformer f32 always (every ratio needs it), and
    cranformer int8 whenever an int8 peer runs."""
    if not engines and not frameworks:
        return list(ENGINES)
    want = set(frameworks or [])
    for e in engines or []:
        for name in e.split(","):
            name = name.strip().lower()
            if not name:
                continue
            stem, _, prec = name.rpartition("-")
            if name in FAMILIES:
                want.update(FAMILIES[name])
            elif prec in ("f32", "fp32") and stem in FAMILIES:
                # A family's f32 engine alone (each family lists it first).
                want.add(FAMILIES[stem][0])
            elif name in ENGINES:
                want.add(name)
            else:
                sys.exit(
                    f"driver.py: --engines: unknown engine {name!r}; engines: "
                    f"{', '.join(ENGINES)}; families: {', '.join(FAMILIES)}"
                )
    want.add("cranformer")
    if any(baseline(e) == "cranformer-int8" for e in want):
        want.add("cranformer-int8")
    return [e for e in ENGINES if e in want]


def cpu_pressure():
    """'some avg10' of /proc/pressure/cpu (percent), or None without PSI."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return float(line.split()[1].split("=")[1])
    except OSError:
        return None
    return None


def cpu_busy_s():
    """CPU seconds all CPUs spent busy since boot (/proc/stat), and steal seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def placement_ns(probe):
    """The cache line round trip between the first two CPUs in ns (placement.c), or None."""
    if not probe:
        return None
    try:
        out = subprocess.run([probe, "200"], capture_output=True, text=True, timeout=30).stdout
        return float(out.strip())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def wait_quiet(limit, below):
    start = time.time()
    while True:
        p = cpu_pressure()
        if p is None or p < below or time.time() - start >= limit:
            return p, time.time() - start
        time.sleep(3)


def machine():
    info = {"cpu": platform.processor() or "?", "cores": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (l.partition(":") for l in out.splitlines())
        )
        info["cpu"] = fields.get("Model name", info["cpu"])
        info["cores"] = fields.get("CPU(s)", info["cores"])
        info["hypervisor"] = fields.get("Hypervisor vendor")
        flags = fields.get("Flags", "").split()
        info["isa"] = (
            "AVX-512"
            if "avx512f" in flags
            else "AVX2"
            if "avx2" in flags
            else "SSE/other"
        )
        extras = [
            name
            for flag, name in (
                ("avx512_vnni", "VNNI"),
                ("avx512_bf16", "BF16"),
                ("amx_int8", "AMX-INT8"),
                ("amx_bf16", "AMX-BF16"),
                ("avx_vnni", "AVX-VNNI"),
                ("f16c", "F16C"),
            )
            if flag in flags
        ]
        if extras:
            info["isa"] += " (" + ", ".join(extras) + ")"
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory_gib"] = round(kb / 2**20, 1)
    except OSError:
        pass
    return info


def child_env(a, threads):
    env = dict(os.environ)
    # The peers size their OpenMP pools from these too; the scripts set the same count.
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[v] = str(threads)
    env.update(ISA_ENV.get(a.isa, {}))
    return env


def last_lines(text, n=5):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-n:] or ["(no output)"]


# The packages hold_avx2.py can hold to AVX2, and the engines that import them.
HOLDABLE = {"onnxruntime": ["onnxruntime", "onnxruntime-int8"], "openvino": ["openvino"]}
LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def held_packages(path):
    """The packages hold_avx2.py made an AVX2 copy of in `path` (its stamp says it finished)."""
    if not path:
        return set()
    return {p for p in HOLDABLE if os.path.isfile(os.path.join(path, f"{p}.stamp.json"))}


def held_engines(path):
    return {e for p in held_packages(path) for e in HOLDABLE[p]}


def run_peer(a, engine, threads, workload):
    # llama.cpp from its AVX2 build when the run is held to AVX2 (run.sh makes it).
    python = a.llama_python if a.llama_python and engine.startswith("llama.cpp") else sys.executable
    env = child_env(a, threads)
    # ONNX Runtime and OpenVINO from the copies that see no AVX-512 (hold_avx2.py): first on
    # the path, and named to bench_peers.py, which refuses to run another copy.
    if engine in a.held_engines:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [a.held_path, env.get("PYTHONPATH")]))
        env["PEERS_HELD_AVX2"] = a.held_path
    cmd = [
        python,
        os.path.join(HERE, "bench_peers.py"),
        engine,
        "--models",
        a.models,
        "--threads",
        str(threads),
        "--runs",
        str(a.runs),
        "--warmup",
        str(a.warmup),
        "--workload",
        workload,
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return None, last_lines(p.stderr)
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return None, ["bench_peers.py printed no result"] + last_lines(p.stderr)
    return lines[0], None


def pick_jit(lines, dtype):
    """cranformer bench's line for the compiled engine at `dtype`. Binaries that do not print
    the dtype only run f32 (they reject any other --dtype)."""
    jit = [o for o in lines if str(o.get("engine", "")).startswith("jit")]
    tagged = [o for o in jit if o.get("dtype") is not None]
    if tagged:
        jit = [o for o in tagged if str(o["dtype"]).lower() == dtype]
    return jit[0] if jit else None


def run_cranformer(a, engine, threads, workload):
    model, _, flags = WORKLOADS[workload]
    dtype = precision(engine)
    cmd = [
        a.cranformer,
        "bench",
        os.path.join(a.models, model, "hf"),
        "--engine",
        "jit",
        *flags,
        "--threads",
        str(threads),
        "--runs",
        str(a.runs),
        "--warmup",
        str(a.warmup),
        "--json",
    ]
    if dtype != "f32":
        # Only then: a binary from before --dtype keeps working for the f32 column.
        cmd += ["--dtype", dtype]
    p = subprocess.run(cmd, env=child_env(a, threads), capture_output=True, text=True)
    if p.returncode != 0:
        return None, [" ".join(cmd)] + last_lines(p.stderr)
    try:
        lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    except json.JSONDecodeError as e:
        return None, [" ".join(cmd), f"unreadable JSON line: {e}"]
    o = pick_jit(lines, dtype)
    if o is None:
        return None, [" ".join(cmd), f"no jit result for dtype {dtype} in its output"]
    r = {
        "workload": workload,
        "framework": engine,
        "threads": o.get("threads", threads),
        "median_ms": o["median_ms"],
        "min_ms": o["min_ms"],
        "runs": o["runs"],
        "build_ms": o.get("build_ms"),
        "gflops": o.get("gflops"),
        "bench": o,
    }
    if "ms_per_new_token" in o:
        r["ms_per_token"] = o["ms_per_new_token"]
    return r, None


def measure(a, engine, threads, workload):
    """One measurement, after waiting for a quiet CPU; measured again (up to --retries times)
    when other processes wanted the CPU during it, keeping the least disturbed attempt."""
    best = None
    for attempt in range(1 + a.retries):
        p, waited = wait_quiet(a.wait_quiet, a.quiet_below)
        trip = placement_ns(a.placement) if threads > 1 else None
        (busy0, steal0), mine0, t0 = cpu_busy_s(), children_cpu_s(), time.time()
        if ENGINES[engine][0] == "cranformer":
            r, err = run_cranformer(a, engine, threads, workload)
        else:
            r, err = run_peer(a, engine, threads, workload)
        took = time.time() - t0
        (busy1, steal1), mine1 = cpu_busy_s(), children_cpu_s()
        if r is None:
            return None, err
        # Other processes' CPU use during the measurement, in percent of all cores: what the
        # machine did minus what the measured process did (and the host's steal).
        cores = os.cpu_count() or 1
        during = max(0.0, (busy1 - busy0) - (mine1 - mine0) + (steal1 - steal0))
        during = 100.0 * during / (took * cores)
        r.update(
            framework=engine,
            precision=precision(engine),
            pressure=p,
            pressure_during=during,
            placement_ns=trip,
            loadavg=loadavg(),
            waited_s=round(waited, 1),
            wall_s=round(took, 1),
        )
        if best is None or (during or 0) < (best["pressure_during"] or 0):
            best = r
        if during is None or during <= a.retry_above:
            break
    best["tries"] = attempt + 1
    return best, None


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def round_ratio(by, rounds, field, num, den):
    """A table cell: `num`'s `field` divided by `den`'s within each round (each a (workload,
    threads, engine) key of `by` without the round), the median over the rounds, and their
    range in brackets."""
    vals = []
    for rnd in rounds:
        x, y = by.get((*num, rnd)), by.get((*den, rnd))
        if x and y and x.get(field) and y.get(field):
            vals.append(x[field] / y[field])
    if not vals:
        return "-"
    s = f"{statistics.median(vals):.2f}x"
    return s + (f" ({min(vals):.2f}-{max(vals):.2f})" if len(vals) > 1 else "")


def tables(rows, meta):
    """One markdown table per workload: a column per engine and precision, per thread count
    the median over rounds of the headline figure (and the other one), and the median over
    rounds of cranformer's time divided by the column's time within the same round."""
    by = {}
    for r in rows:
        by[(r["workload"], r["threads"], r["framework"], r["round"])] = r
    out = []
    for w in meta["workloads"]:
        cols = [e for e in meta["engines"] if runs_workload(e, w)]
        head = HEADLINE[w]
        other = "ms_per_token" if head == "median_ms" else "median_ms"
        unit = {"median_ms": "ms", "ms_per_token": "ms/token"}
        title = WORKLOADS[w][1]
        out.append(f"### {title}: {unit[head]} ({'decode steps after the prompt' if head == 'ms_per_token' else 'whole call'})")
        out.append("")
        out.append("| threads | | " + " | ".join(label(e) for e in cols) + " |")
        out.append("|---|---|" + "---:|" * len(cols))
        for t in meta["threads"]:
            def cell_rows(e):
                return [by[k] for k in sorted(by) if k[:3] == (w, t, e)]

            def med(e, field):
                v = [r[field] for r in cell_rows(e) if r.get(field) is not None]
                return statistics.median(v) if v else None

            def missing(e):
                err = meta["failed"].get((e, w, t))
                if err is None:
                    return "-"
                return "n/a" if e in meta["unavailable"] else "failed"

            def ratio(e, base):
                if base is None or base not in cols:
                    return ""
                return round_ratio(by, meta["rounds"], head, (w, t, base), (w, t, e))

            def ms_cell(e, field, digits):
                v = med(e, field)
                if v is None:
                    return missing(e)
                rs = [r[field] for r in cell_rows(e) if r.get(field) is not None]
                rng = f" ({min(rs):.{digits}f}-{max(rs):.{digits}f})" if len(rs) > 1 else ""
                return fmt(v, digits) + rng

            digits = 2 if head == "ms_per_token" else 1
            out.append(f"| {t} | **{unit[head]}** | " + " | ".join(ms_cell(e, head, digits) for e in cols) + " |")
            if other == "median_ms" or any(med(e, other) is not None for e in cols):
                od = 2 if other == "ms_per_token" else 1
                out.append(f"| {t} | {unit[other]} | " + " | ".join(
                    ms_cell(e, other, od) if med(e, other) is not None else "" for e in cols) + " |")
            out.append(
                f"| {t} | cranformer ÷ this | " + " | ".join(ratio(e, baseline(e)) for e in cols) + " |"
            )
            # The int8 columns against cranformer f32 too (issue 9's starting point).
            if any(baseline(e) == "cranformer-int8" for e in cols):
                out.append(
                    f"| {t} | cranformer f32 ÷ this | "
                    + " | ".join(
                        ratio(e, "cranformer") if baseline(e) == "cranformer-int8" else ""
                        for e in cols
                    )
                    + " |"
                )
            during = []
            for e in cols:
                v = [r.get("pressure_during") for r in cell_rows(e) if r.get("pressure_during") is not None]
                during.append(fmt(max(v), 0) if v else "")
            out.append(f"| {t} | others' CPU % (max) | " + " | ".join(during) + " |")
            trips = []
            for e in cols:
                v = [r["placement_ns"] for r in cell_rows(e) if r.get("placement_ns") is not None]
                trips.append(f"{min(v):.0f}-{max(v):.0f}" if v else "")
            if any(trips):
                out.append(f"| {t} | CPU round trip ns | " + " | ".join(trips) + " |")
        # Thread scaling: each engine's 1-thread time over its N-thread time within a round,
        # the median over rounds (above 1: N threads are faster).
        for t in meta["threads"]:
            if t == 1 or 1 not in meta["threads"]:
                continue

            out.append(f"| 1 → {t} | speed-up | " + " | ".join(
                round_ratio(by, meta["rounds"], head, (w, 1, e), (w, t, e)) for e in cols) + " |")
        out.append("")
    return "\n".join(out)


# Issue 8's targets for an AVX2 server's f32 on all its cores, each a bound on the median over
# rounds of cranformer's figure divided by the quickest of the listed peers in the same round
# (workload, peers, bound, what is asked). "1 -> N threads" is cranformer's own speed-up.
TARGETS = [
    ("bert-forward", ["ctranslate2", "onnxruntime", "openvino"], 0.9,
     "BERT-base seq 128: at most 0.9x the fastest of CTranslate2, ONNX Runtime and OpenVINO"),
    ("gpt2-generate", ["ctranslate2", "llama.cpp"], 1.0,
     "GPT-2 decode: at most 1.0x the faster of CTranslate2 and llama.cpp (f32)"),
    ("t5-generate", ["ctranslate2"], 0.8, "T5-small 64+32: at most 0.8x CTranslate2"),
]
SCALING_TARGET = 1.8
# The peers `--isa avx2` holds there entirely (see ISA_ENV and README.md; llama.cpp too when
# run.sh built it for AVX2, ONNX Runtime and OpenVINO when hold_avx2.py made their copies):
# held to AVX2, each target is judged again against these alone.
HELD = {"ctranslate2", "pytorch"}


def targets(rows, meta, isa, held=None):
    """Issue 8's "done when", judged on this run: per target, the per-round ratio against the
    quickest listed peer that ran in that round, its median and range over the rounds, and
    whether the median meets the bound. `isa`: what the engines ran at, said beside the
    verdicts (the targets are for an AVX2 machine; a wider one held to AVX2 only approximates
    it); `held`: the engines held to AVX2 entirely when the run held them (None otherwise),
    against which each target is judged again. None when the run has no more than one
    thread."""
    by = {(r["workload"], r["threads"], r["framework"], r["round"]): r for r in rows}
    t = max(meta["threads"])
    if t < 2:
        return None
    out = [f"### Issue 8's targets (f32, {t} threads; {isa})", ""]
    for w, peers, bound, what in TARGETS:
        if w not in meta["workloads"]:
            continue
        head = HEADLINE[w]

        def judged(among):
            """Per round, cranformer over the quickest of `among` that ran: the median and
            range over the rounds, the engines that set the bar and the verdict, as text; None
            when no round had both."""
            vals, used = [], set()
            for rnd in meta["rounds"]:
                ours = by.get((w, t, "cranformer", rnd), {}).get(head)
                theirs = [
                    (by[(w, t, e, rnd)][head], e)
                    for e in among
                    if by.get((w, t, e, rnd), {}).get(head)
                ]
                if ours and theirs:
                    best, e = min(theirs)
                    vals.append(ours / best)
                    used.add(label(e))
            if not vals:
                return None
            med = statistics.median(vals)
            return (
                f"{med:.2f}x ({min(vals):.2f}-{max(vals):.2f}) against {', '.join(sorted(used))}: "
                + ("met" if med <= bound else "NOT met")
            )

        missing = [label(e) for e in peers if e not in meta["engines"]]
        line = judged(peers)
        if line is None:
            out.append(
                f"- {what}: not measured (no round with cranformer f32 and one of them"
                + (f"; not run: {', '.join(missing)})" if missing else ")")
            )
            continue
        # Judged again when a peer that ran is not held (with only held ones it is the same).
        if held is not None and any(e not in held for e in peers if e in meta["engines"]):
            alone = judged([e for e in peers if e in held])
            line += "; against the peers held to AVX2 alone: " + (alone or "none of them ran")
        out.append(f"- {what}: {line}" + (f"; not run: {', '.join(missing)}" if missing else ""))
    if "bert-forward" in meta["workloads"] and 1 in meta["threads"]:
        vals = []
        for rnd in meta["rounds"]:
            one = by.get(("bert-forward", 1, "cranformer", rnd), {}).get("median_ms")
            many = by.get(("bert-forward", t, "cranformer", rnd), {}).get("median_ms")
            if one and many:
                vals.append(one / many)
        if vals:
            med = statistics.median(vals)
            out.append(
                f"- BERT-base 1 -> {t} threads: at least {SCALING_TARGET}x: {med:.2f}x "
                f"({min(vals):.2f}-{max(vals):.2f}): {'met' if med >= SCALING_TARGET else 'NOT met'}"
            )
    out.append(
        "- Decode at the bandwidth roof (at least 85 % of the DRAM read): "
        "`benches/peers/decode_roof.py`, not this run."
    )
    out.append("")
    return "\n".join(out)


def isa_note(a):
    """How each engine was held to --isa, and which were not."""
    say = [f"ISA limited to {a.isa}: " + ", ".join(f"{k}={v}" for k, v in ISA_ENV[a.isa].items())]
    wide = []
    if a.llama_python:
        say.append(f"llama.cpp from its {a.isa.upper()} build ({a.llama_python})")
    else:
        wide.append("llama.cpp (its kernels are fixed when it is built)")
    packages = held_packages(a.held_path)
    if packages:
        say.append(
            " and ".join(LABELS[p] for p in sorted(packages))
            + f" from copies that see no AVX-512 ({a.held_path}, hold_avx2.py: their XCR0 "
            "reads clear the AVX-512 state bits, so they take the paths of a CPU without it)"
        )
    if "onnxruntime" not in packages:
        wide.append("ONNX Runtime (it picks its kernels from cpuid)")
    if "openvino" not in packages:
        wide.append(
            "OpenVINO in part (it names AVX2 kernels for its matmuls, but on AMD Zen 5 its "
            "BERT-base reached 282 GFLOP/s, above two cores' AVX2 FMA peak of 267)"
        )
    return "; ".join(say) + "." + (
        " Not held, with the machine's full ISA: " + "; ".join(wide) + "." if wide else ""
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--cranformer", required=True, help="the cranformer binary")
    ap.add_argument("--cranformer-source", default="", help="what the binary was built from")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workload", action="append", choices=list(WORKLOADS))
    ap.add_argument(
        "--framework",
        action="append",
        choices=list(ENGINES),
        help="only this engine (repeatable); cranformer f32 always runs",
    )
    ap.add_argument(
        "--engines",
        action="append",
        help="comma-separated engines or families (" + ", ".join(FAMILIES) + ")",
    )
    ap.add_argument("--isa", choices=sorted(ISA_ENV), help="ask every engine that can to stay at this ISA")
    ap.add_argument(
        "--runs-llama",
        action="store_true",
        help="measure nothing: exit 0 if the selection runs llama.cpp on a workload, else 1",
    )
    ap.add_argument(
        "--llama-python",
        default="",
        help="the Python of a venv whose llama-cpp-python was built for --isa (run.sh's)",
    )
    ap.add_argument(
        "--held-path",
        default="",
        help="hold_avx2.py's directory: ONNX Runtime and OpenVINO from the copies made there",
    )
    ap.add_argument("--wait-quiet", type=float, default=60.0)
    ap.add_argument("--quiet-below", type=float, default=10.0)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--retry-above", type=float, default=15.0)
    ap.add_argument("--check", default="", help="check.py's summary file, quoted in results.md")
    ap.add_argument("--from-raw", help="no measuring: the tables of this raw.jsonl")
    ap.add_argument("--placement", default="", help="placement.c's binary, run before each measurement")
    a = ap.parse_args()
    # The engines run from hold_avx2.py's copies, read once for the whole run.
    a.held_engines = held_engines(a.held_path)

    threads = [int(t) for t in a.threads.split(",") if t.strip()]
    workloads = a.workload or list(WORKLOADS)
    engines = select_engines(a.engines, a.framework)
    if a.runs_llama:
        return 0 if any(
            e.startswith("llama.cpp") and runs_workload(e, w) for e in engines for w in workloads
        ) else 1
    os.makedirs(a.out, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = open("/proc/loadavg").read().split()[:3]
    raw_path = os.path.join(a.out, "raw.jsonl" if not a.from_raw else "raw-again.jsonl")
    rows, failed, unavailable, versions = [], {}, set(), {}
    print(f"engines: {', '.join(engines)}; workloads: {', '.join(workloads)}", flush=True)
    if a.from_raw:
        # Tables again from a finished or interrupted run's measurements (no failures known).
        with open(a.from_raw) as f:
            rows = [json.loads(l) for l in f if l.strip()]
        for r in rows:
            versions.update(r.get("versions", {}))
        threads = [t for t in threads if any(r["threads"] == t for r in rows)]
        workloads = [w for w in workloads if any(r["workload"] == w for r in rows)]
        a.rounds = max((r["round"] for r in rows), default=1)
        a.runs = max((r["runs"] for r in rows), default=a.runs)
        a.warmup = next((r["bench"]["warmup"] for r in rows if "warmup" in r.get("bench", {})), a.warmup)
        if rows:
            started = datetime.datetime.fromtimestamp(os.path.getmtime(a.from_raw), datetime.timezone.utc)
    else:
        with open(raw_path, "w") as raw:
            for rnd in range(a.rounds):
                # Interleaved: every engine once per round and workload, the order reversed every
                # other round so that no engine always runs first after a change of workload.
                # An engine's thread counts run back to back (their order reversed every other
                # round too), so that its 1 -> N threads ratio compares neighbouring minutes.
                order = engines if rnd % 2 == 0 else engines[::-1]
                counts = threads if rnd % 2 == 0 else threads[::-1]
                for w in workloads:
                    for e in order:
                        for t in counts:
                            if not runs_workload(e, w) or (e, w, t) in failed:
                                continue
                            r, err = measure(a, e, t, w)
                            if r is None:
                                failed[(e, w, t)] = err
                                # cranformer's other precisions may not be built yet: shown as
                                # not available with their error, without failing the run.
                                if e in ("cranformer-bf16", "cranformer-int8"):
                                    unavailable.add(e)
                                    what = "not available"
                                else:
                                    what = "FAILED"
                                print(f"  {w:<14} {e:<17} {t} threads: {what}", flush=True)
                                for line in err:
                                    print(f"      {line}", flush=True)
                                continue
                            r["round"] = rnd + 1
                            p, took = r["pressure"], r["wall_s"]
                            versions.update(r.get("versions", {}))
                            rows.append(r)
                            raw.write(json.dumps(r) + "\n")
                            raw.flush()
                            tok = r.get("ms_per_token")
                            print(
                                f"  round {rnd + 1} {w:<14} {e:<17} {t} thread{'s' if t > 1 else ' '}: "
                                f"median {r['median_ms']:9.1f} ms"
                                + (f", {tok:6.2f} ms/token" if tok else "")
                                + f"  (CPU pressure {fmt(p, 0)}% before, other processes' "
                                f"CPU {fmt(r['pressure_during'], 0)}% during, load {r['loadavg']:.1f}; "
                                f"{took:.0f} s"
                                + (f"; {r['tries']} tries" if r["tries"] > 1 else "")
                                + ")",
                                flush=True,
                            )

    finished = datetime.datetime.now(datetime.timezone.utc)
    load_end = open("/proc/loadavg").read().split()[:3]
    m = machine()
    meta = {
        "threads": threads,
        "workloads": workloads,
        "engines": engines,
        "failed": failed,
        "unavailable": unavailable,
        "rounds": list(range(1, a.rounds + 1)),
    }
    tbl = tables(rows, meta)
    if a.isa:
        ran_at = (
            f"held to {a.isa.upper()} on a CPU with {m.get('isa')}: an approximation of an "
            "AVX2 machine, and only the engines the notes name as held are held"
        )
    elif str(m.get("isa", "")).startswith("AVX2"):
        ran_at = f"an AVX2 machine ({m.get('isa')}): the machine the targets are for"
    else:
        ran_at = f"{m.get('isa')} as detected: the targets are for an AVX2 machine"
    held = HELD | a.held_engines | (
        {"llama.cpp", "llama.cpp-q8_0"} if a.llama_python else set()
    )
    goals = targets(rows, meta, ran_at, held if a.isa else None)
    if goals:
        tbl += "\n" + goals
    llama_info = next((r["llama_system_info"] for r in rows if r.get("llama_system_info")), None)
    notes = [
        f"Measured {started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC on {m.get('cpu')}, "
        f"{m.get('cores')} cores, ISA {m.get('isa')}"
        + (f", {m['hypervisor']} guest" if m.get("hypervisor") else "")
        + (f", {m['memory_gib']} GiB" if m.get("memory_gib") else "")
        + f"; threads {', '.join(map(str, threads))}. Load average (1, 5, 15 min) "
        f"{' '.join(load_start)} at the start, {' '.join(load_end)} at the end.",
        isa_note(a) if a.isa else "ISA: each engine used what it detects (no limit asked).",
        "Peers: "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        + f"; Python {platform.python_version()}. cranformer: {a.cranformer_source or a.cranformer}"
        + " (--engine jit).",
        "Method: every engine in a fresh process for each workload, thread count and round; "
        "the engines interleaved within a round (order reversed every other round). Each "
        f"measurement: the median of {a.runs} timed runs after {a.warmup} warm-up "
        f"run{'s' if a.warmup != 1 else ''}. A cell: the median over {a.rounds} "
        f"round{'s' if a.rounds != 1 else ''} (range in brackets). cranformer ÷ this: "
        "cranformer's figure divided by the column's, taken within each round, then the median "
        "of those ratios (range in brackets); under 1 means cranformer is faster. int8 columns "
        "(and llama.cpp Q8_0) are divided into cranformer int8 (and, on the row below, into "
        "cranformer f32), cranformer's own bf16/int8 columns into its f32, the others into "
        "cranformer f32.",
        "Weights: random full-size models (seed 0) saved once with save_pretrained; PyTorch "
        "and cranformer read the same safetensors; CTranslate2 a float32 conversion (int8: "
        "quantized at load, compute_type=int8); ONNX Runtime and OpenVINO its ONNX export "
        "(int8: quantize_dynamic, per-channel QInt8); llama.cpp a GGUF written from it (f32, "
        "Q8_0).",
        "ms/token: the decode steps after the prompt pass (per-step timestamps in the peers, "
        "cranformer's ms_per_new_token).",
        "Contention: others' CPU % is the CPU time that other processes (and the host, as "
        f"steal) took during a measurement, in percent of all cores. Over {a.retry_above:.0f}% "
        f"a measurement was redone (up to {a.retries} times, the least disturbed kept); high "
        "values mean times inflated by other processes.",
    ]
    if any(r.get("placement_ns") is not None for r in rows):
        notes.append(
            "CPU round trip: a cache line's trip between the first two CPUs and back, measured "
            "just before each multi-threaded measurement (placement.c, min-max over the cell). "
            "On a virtual machine it shows where the host put the vCPUs at that moment; a far "
            "placement makes every thread's share of data slower to reach the other."
        )
    if llama_info:
        notes.append(f"llama.cpp's build: {llama_info}")
    # One note per engine and message (the same refusal on every workload is said once).
    said = {}
    for (e, w, t), err in sorted(failed.items()):
        said.setdefault((e, err[-1]), []).append((f"{w} at {t} threads", err))
    for (e, _), where in said.items():
        what = "not available" if e in unavailable else "failed"
        notes.append(
            f"{label(e)} {what} on {', '.join(p for p, _ in where)}: "
            + " / ".join(where[0][1][-3:])
        )
    if a.check and os.path.isfile(a.check):
        with open(a.check) as f:
            notes.append("Same outputs check: " + f.read().strip())
    md = "# Peer comparison\n\n" + tbl + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    print(f"written: {os.path.join(a.out, 'results.md')} and {raw_path}")
    hard = [k for k in failed if k[0] not in unavailable]
    return 1 if hard else 0


if __name__ == "__main__":
    sys.exit(main())
