"""Copies of ONNX Runtime and OpenVINO that see no AVX-512, for `run.sh --isa avx2`.

Neither engine has a knob that holds all of it to AVX2: MLAS (ONNX Runtime's kernels) picks them
from cpuid, and OpenVINO's CPU plugin runs part of its work at AVX-512 whatever
ONEDNN_MAX_CPU_ISA says. Both ask the CPU for AVX-512 the same way: cpuid says the CPU has it,
and XCR0 (read by the `xgetbv` instruction) says the OS saves the AVX-512 registers (bits 5-7,
opmask and the upper ZMM state). Without those bits they take their AVX2 paths, as on a CPU
without AVX-512.

So in a copy of each package this script rewrites the code that reads XCR0: right after
`xgetbv`, the compilers' `mov %eax,%eax` (89 c0: a no-op, as xgetbv already clears the upper
half of rax) becomes `and $0x1f,%al` (24 1f), which clears bits 5-7 and keeps every other bit.
Each reader is matched by its exact bytes (READERS); only those bytes change. The installed
packages are left as they are; the copies go to OUT and are put first on PYTHONPATH for those
engines (driver.py --held-path).

Checked on onnxruntime 1.31.1 and openvino 2026.4.1 on AMD EPYC Zen 5 (benches/peers/README.md):
OpenVINO's runtime model then names no jit_avx512 primitive (25 of them before, with
ONEDNN_MAX_CPU_ISA=AVX2 set), and ONNX Runtime's hot code runs on ymm registers only (zmm
before). bench_peers.py checks the first on every held OpenVINO run.

Exits 1, naming the library, when a package has no reader it knows: then that engine is not
held, and run.sh says so. Standard library only.

    python3 hold_avx2.py SITE_PACKAGES OUT
"""

import hashlib
import json
import os
import shutil
import sys

# The XCR0 readers seen in these packages' libraries: (bytes, offset of `mov %eax,%eax`).
READERS = [
    # xgetbv; mov %eax,%eax; shl $0x20,%rdx; or %rax,%rdx  (MLAS, ORT's CPUIDInfo, OpenVINO)
    (bytes.fromhex("0f01d0" "89c0" "48c1e220" "4809c2"), 3),
    # xgetbv; shl $0x20,%rdx; mov %eax,%eax; mov %rdx,%rdi  (Xbyak in OpenVINO's CPU plugin)
    (bytes.fromhex("0f01d0" "48c1e220" "89c0" "4889d7"), 7),
]
MOV = bytes.fromhex("89c0")
AND = bytes.fromhex("241f")
PACKAGES = ["onnxruntime", "openvino"]
VERSION = 1  # of this script's rewrite: a copy made by another is made again


def patch(data):
    """Rewrites every known XCR0 reader in `data` (a bytearray); returns how many."""
    n = 0
    for pattern, at in READERS:
        i = data.find(pattern)
        while i >= 0:
            assert data[i + at : i + at + 2] == MOV
            data[i + at : i + at + 2] = AND
            n += 1
            i = data.find(pattern, i + len(pattern))
    return n


def libraries(root):
    for d, _, files in os.walk(root):
        for f in sorted(files):
            p = os.path.join(d, f)
            if (f.endswith(".so") or ".so." in f) and not os.path.islink(p):
                yield p


def stamp_of(src):
    """What the copy depends on: this rewrite and the installed package's files."""
    h = hashlib.sha256(f"v{VERSION}".encode())
    for p in libraries(src):
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, src)} {st.st_size} {int(st.st_mtime)}\n".encode())
    return h.hexdigest()


def hold(site, out, name):
    src = os.path.join(site, name)
    if not os.path.isdir(src):
        return f"{name}: not installed in {site}"
    dst = os.path.join(out, name)
    stamp_path = os.path.join(out, f"{name}.stamp.json")
    want = stamp_of(src)
    try:
        with open(stamp_path) as f:
            old = json.load(f)
        if old.get("stamp") == want and os.path.isdir(dst):
            print(f"{name}: kept ({old['sites']} XCR0 readers rewritten in {dst})")
            return None
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(dst, ignore_errors=True)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    shutil.copytree(src, dst, symlinks=True)
    done = {}
    for p in libraries(dst):
        with open(p, "rb") as f:
            data = bytearray(f.read())
        n = patch(data)
        if n:
            with open(p, "wb") as f:
                f.write(data)
            done[os.path.relpath(p, dst)] = n
    if not done:
        shutil.rmtree(dst, ignore_errors=True)
        return (
            f"{name}: no XCR0 reader this script knows in {src}'s libraries (a new version?): "
            "not held"
        )
    total = sum(done.values())
    with open(stamp_path, "w") as f:
        json.dump({"stamp": want, "sites": total, "libraries": done}, f, indent=1)
    print(f"{name}: {total} XCR0 readers rewritten in {dst}: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    return None


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    site, out = sys.argv[1:]
    os.makedirs(out, exist_ok=True)
    errors = [e for e in (hold(site, out, name) for name in PACKAGES) if e]
    for e in errors:
        print(f"hold_avx2.py: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
