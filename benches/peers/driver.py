"""Runs the peer comparison and writes its table (run.sh calls this inside the venv).

For each round, thread count and workload, in this order: PyTorch, CTranslate2, cranformer,
each in a fresh process, so that the three are measured close together in time. Every
measurement line (JSON) is kept in OUT/raw.jsonl; the table, printed and written to
OUT/results.md, has per framework and thread count the median over rounds of each run's median.

Before each measurement the driver waits (up to --wait-quiet seconds) for the machine to be
quiet: the CPU pressure that other processes cause ("some avg10" of /proc/pressure/cpu) under
--quiet-below percent. The pressure seen at the start of each measurement is recorded and shown.
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
FRAMEWORKS = ["pytorch", "ctranslate2", "cranformer"]


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
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory_gib"] = round(kb / 2**20, 1)
    except OSError:
        pass
    return info


def run_peer(args, framework, threads, workload):
    env = dict(os.environ)
    # Both peers size their OpenMP pools from this too; the scripts set the same count.
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[v] = str(threads)
    cmd = [
        sys.executable,
        os.path.join(HERE, "bench_peers.py"),
        framework,
        "--models",
        args.models,
        "--threads",
        str(threads),
        "--runs",
        str(args.runs),
        "--warmup",
        str(args.warmup),
        "--workload",
        workload,
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr.strip().splitlines()[-5:]
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    return lines[0], None


def run_cranformer(args, threads, workload):
    model, _, flags = WORKLOADS[workload]
    cmd = [
        args.cranformer,
        "bench",
        os.path.join(args.models, model, "hf"),
        "--engine",
        "jit",
        *flags,
        "--threads",
        str(threads),
        "--runs",
        str(args.runs),
        "--warmup",
        str(args.warmup),
        "--json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return None, [" ".join(cmd)] + p.stderr.strip().splitlines()[-5:]
    o = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    o = [x for x in o if x.get("engine") == "jit"][0]
    r = {
        "workload": workload,
        "framework": "cranformer",
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


def measure(a, framework, threads, workload):
    """One measurement, after waiting for a quiet CPU; measured again (up to --retries times)
    when other processes wanted the CPU during it, keeping the least disturbed attempt."""
    best = None
    for attempt in range(1 + a.retries):
        p, waited = wait_quiet(a.wait_quiet, a.quiet_below)
        (busy0, steal0), mine0, t0 = cpu_busy_s(), children_cpu_s(), time.time()
        if framework == "cranformer":
            r, err = run_cranformer(a, threads, workload)
        else:
            r, err = run_peer(a, framework, threads, workload)
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
            pressure=p,
            pressure_during=during,
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


def table(rows, meta):
    """Markdown table: median over rounds; ratio = cranformer's time / this framework's."""
    head = [
        "workload",
        "framework",
        "threads",
        "median ms",
        "ms/token",
        "cranformer ÷ this (ms)",
        "cranformer ÷ this (ms/token)",
        "CPU pressure before % / others' CPU during %",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|",
    ]
    groups = {}
    for r in rows:
        groups.setdefault((r["workload"], r["threads"], r["framework"]), []).append(r)

    def agg(key, field):
        vals = [r[field] for r in groups.get(key, []) if r.get(field) is not None]
        return statistics.median(vals) if vals else None

    for w in WORKLOADS:
        for t in meta["threads"]:
            base_ms = agg((w, t, "cranformer"), "median_ms")
            base_tok = agg((w, t, "cranformer"), "ms_per_token")
            for f in FRAMEWORKS:
                key = (w, t, f)
                if key not in groups:
                    if (w, t) in meta["failed"].get(f, {}):
                        lines.append(f"| {w} | {f} | {t} | failed | | | | |")
                    continue
                ms = agg(key, "median_ms")
                tok = agg(key, "ms_per_token")
                press = [r.get("pressure") for r in groups[key] if r.get("pressure") is not None]
                during = [
                    r.get("pressure_during")
                    for r in groups[key]
                    if r.get("pressure_during") is not None
                ]
                rm = f"{base_ms / ms:.2f}x" if base_ms and ms else "-"
                rt = f"{base_tok / tok:.2f}x" if base_tok and tok else "-"
                ms_s = fmt(ms)
                if len(groups[key]) > 1:
                    lo = min(r["median_ms"] for r in groups[key])
                    hi = max(r["median_ms"] for r in groups[key])
                    ms_s += f" ({lo:.0f}-{hi:.0f})"
                lines.append(
                    f"| {w} | {f} | {t} | {ms_s} | {fmt(tok, 2)} | {rm} | {rt} | "
                    f"{fmt(max(press) if press else None, 0)} / "
                    f"{fmt(max(during) if during else None, 0)} |"
                )
    return "\n".join(lines)


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
    ap.add_argument("--framework", action="append", choices=FRAMEWORKS)
    ap.add_argument("--wait-quiet", type=float, default=60.0)
    ap.add_argument("--quiet-below", type=float, default=10.0)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--retry-above", type=float, default=15.0)
    ap.add_argument("--check", default="", help="check.py's summary file, quoted in results.md")
    a = ap.parse_args()

    threads = [int(t) for t in a.threads.split(",") if t.strip()]
    workloads = a.workload or list(WORKLOADS)
    frameworks = [f for f in FRAMEWORKS if not a.framework or f in a.framework]
    os.makedirs(a.out, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    raw_path = os.path.join(a.out, "raw.jsonl")
    rows, failed, versions = [], {}, {}
    with open(raw_path, "w") as raw:
        for rnd in range(a.rounds):
            for t in threads:
                for w in workloads:
                    for f in frameworks:
                        r, err = measure(a, f, t, w)
                        if r is None:
                            failed.setdefault(f, {})[(w, t)] = err
                            print(f"  {w:<14} {f:<12} {t} threads: FAILED", flush=True)
                            for e in err:
                                print(f"      {e}", flush=True)
                            continue
                        r["round"] = rnd + 1
                        p, took = r["pressure"], r["wall_s"]
                        versions.update(r.pop("versions", {}))
                        rows.append(r)
                        raw.write(json.dumps(r) + "\n")
                        raw.flush()
                        tok = r.get("ms_per_token")
                        print(
                            f"  round {rnd + 1} {w:<14} {f:<12} {t} thread{'s' if t > 1 else ' '}: "
                            f"median {r['median_ms']:9.1f} ms"
                            + (f", {tok:6.2f} ms/token" if tok else "")
                            + f"  (CPU pressure {fmt(p, 0)}% before, other processes' "
                            f"CPU {fmt(r['pressure_during'], 0)}% during; {took:.0f} s"
                            + (f"; {r['tries']} tries" if r["tries"] > 1 else "")
                            + ")",
                            flush=True,
                        )

    finished = datetime.datetime.now(datetime.timezone.utc)
    m = machine()
    meta = {"threads": threads, "failed": failed}
    tbl = table(rows, meta)
    notes = [
        f"Measured {started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC on {m.get('cpu')}, "
        f"{m.get('cores')} cores ({m.get('isa')}"
        + (f", {m['hypervisor']} guest" if m.get("hypervisor") else "")
        + (f", {m['memory_gib']} GiB" if m.get("memory_gib") else "")
        + ").",
        "Peers: "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        + f"; Python {platform.python_version()}. cranformer: {a.cranformer_source or a.cranformer}"
        + " (--engine jit).",
        f"Random-weight full-size models (seed 0) saved once with save_pretrained; PyTorch and "
        f"cranformer read the same safetensors, CTranslate2 a float32 conversion of it. "
        f"Each cell: median of {a.runs} timed runs after {a.warmup} warm-up run{'s' if a.warmup != 1 else ''}"
        + (f", then the median over {a.rounds} rounds (range of the rounds in brackets)" if a.rounds > 1 else "")
        + ".",
        "ms/token: the decode steps after the prompt pass (per-step timestamps in the peers, "
        "cranformer's ms_per_new_token). cranformer ÷ this: under 1 means cranformer is faster.",
        "Contention: the CPU pressure ('some avg10' of /proc/pressure/cpu) when the measurement "
        "started, and the CPU time that other processes (and the host, as steal) took during it, "
        f"in percent of all cores. A measurement where others took over {a.retry_above:.0f}% "
        f"was redone (up to {a.retries} times, the least disturbed kept); high values mean "
        "times inflated by other processes.",
    ]
    if a.check and os.path.isfile(a.check):
        with open(a.check) as f:
            notes.append("Same outputs check: " + f.read().strip())
    md = "# Peer comparison\n\n" + tbl + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    print(f"written: {os.path.join(a.out, 'results.md')} and {raw_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
