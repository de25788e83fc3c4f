"""Tests of driver.py's "Issue 8's targets" and of hold_avx2.py's rewrite (run by .ci/run:
`python3 benches/peers/test_targets.py`). Standard library only; no engine runs."""

import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402
import hold_avx2  # noqa: E402


def row(workload, framework, threads, rnd, value):
    r = {"workload": workload, "framework": framework, "threads": threads, "round": rnd}
    r[driver.HEADLINE[workload]] = value
    if driver.HEADLINE[workload] != "median_ms":
        r["median_ms"] = value * 100
    return r


def meta(engines, workloads, threads=(2, 1), rounds=3):
    return {
        "threads": list(threads),
        "workloads": workloads,
        "engines": engines,
        "rounds": list(range(1, rounds + 1)),
    }


def line(text, start):
    return next(l for l in text.splitlines() if l.startswith(start))


class Targets(unittest.TestCase):
    def test_the_quickest_peer_of_each_round_sets_the_bar(self):
        # Round 1: OpenVINO quickest (90 / 100 = 0.9); round 2: ONNX Runtime (90 / 95);
        # round 3: CTranslate2 (90 / 80). Median of 0.9, 0.947, 1.125: 0.947, over 0.9.
        rows = []
        for rnd, (ct2, ort, ov) in enumerate([(120, 110, 100), (120, 95, 100), (80, 110, 100)], 1):
            rows += [
                row("bert-forward", "cranformer", 2, rnd, 90),
                row("bert-forward", "ctranslate2", 2, rnd, ct2),
                row("bert-forward", "onnxruntime", 2, rnd, ort),
                row("bert-forward", "openvino", 2, rnd, ov),
            ]
        out = driver.targets(
            rows, meta(["cranformer", "ctranslate2", "onnxruntime", "openvino"], ["bert-forward"]),
            "AVX2",
        )
        got = line(out, "- BERT-base seq 128")
        self.assertIn("0.95x (0.90-1.12)", got)
        self.assertIn("against CTranslate2 f32, ONNX Runtime f32, OpenVINO f32", got)
        self.assertTrue(got.endswith("NOT met"), got)
        self.assertNotIn("held to AVX2 alone", got)

    def test_at_the_bound_is_met_and_peers_not_run_are_named(self):
        rows = [row("t5-generate", "cranformer", 2, r, 80) for r in (1, 2, 3)]
        rows += [row("t5-generate", "ctranslate2", 2, r, 100) for r in (1, 2, 3)]
        rows += [row("gpt2-generate", "cranformer", 2, r, 10) for r in (1, 2, 3)]
        rows += [row("gpt2-generate", "ctranslate2", 2, r, 9) for r in (1, 2, 3)]
        out = driver.targets(
            rows, meta(["cranformer", "ctranslate2"], ["gpt2-generate", "t5-generate"]), "AVX2"
        )
        self.assertTrue(line(out, "- T5-small").endswith("0.80x (0.80-0.80) against CTranslate2 f32: met"))
        gpt2 = line(out, "- GPT-2 decode")
        self.assertIn("1.11x", gpt2)
        self.assertIn("NOT met; not run: llama.cpp f32", gpt2)

    def test_held_to_avx2_judges_again_against_the_held_peers(self):
        rows = []
        for rnd in (1, 2, 3):
            rows += [
                row("bert-forward", "cranformer", 2, rnd, 90),
                row("bert-forward", "ctranslate2", 2, rnd, 105),
                row("bert-forward", "onnxruntime", 2, rnd, 60),
            ]
        out = driver.targets(
            rows, meta(["cranformer", "ctranslate2", "onnxruntime"], ["bert-forward"]), "held",
            driver.HELD,
        )
        got = line(out, "- BERT-base seq 128")
        self.assertIn("1.50x (1.50-1.50) against ONNX Runtime f32: NOT met", got)
        self.assertIn("held to AVX2 alone: 0.86x (0.86-0.86) against CTranslate2 f32: met", got)
        self.assertIn("not run: OpenVINO f32", got)

    def test_with_every_named_peer_held_there_is_one_verdict(self):
        rows = []
        for rnd in (1, 2, 3):
            rows += [
                row("gpt2-generate", "cranformer", 2, rnd, 10),
                row("gpt2-generate", "ctranslate2", 2, rnd, 13),
                row("gpt2-generate", "llama.cpp", 2, rnd, 12),
            ]
        engines = ["cranformer", "ctranslate2", "llama.cpp"]
        held = driver.HELD | {"llama.cpp"}
        got = line(driver.targets(rows, meta(engines, ["gpt2-generate"]), "held", held), "- GPT-2")
        self.assertIn("0.83x (0.83-0.83) against llama.cpp f32: met", got)
        self.assertNotIn("held to AVX2 alone", got)
        # llama.cpp not held: judged again against CTranslate2 alone.
        got = line(driver.targets(rows, meta(engines, ["gpt2-generate"]), "held", driver.HELD), "- GPT-2")
        self.assertIn("held to AVX2 alone: 0.77x (0.77-0.77) against CTranslate2 f32: met", got)

    def test_only_held_peers_ran_one_verdict(self):
        rows = []
        for rnd in (1, 2, 3):
            rows += [row("bert-forward", "cranformer", 2, rnd, 90), row("bert-forward", "ctranslate2", 2, rnd, 100)]
        got = line(
            driver.targets(rows, meta(["cranformer", "ctranslate2"], ["bert-forward"]), "held", driver.HELD),
            "- BERT-base seq 128",
        )
        self.assertIn("0.90x (0.90-0.90) against CTranslate2 f32: met; not run: ONNX Runtime f32, OpenVINO f32", got)
        self.assertNotIn("held to AVX2 alone", got)

    def test_nothing_to_judge(self):
        rows = [row("bert-forward", "cranformer", 2, r, 90) for r in (1, 2, 3)]
        out = driver.targets(rows, meta(["cranformer"], ["bert-forward"]), "AVX2")
        self.assertIn("not measured", line(out, "- BERT-base seq 128"))
        self.assertIsNone(driver.targets(rows, meta(["cranformer"], ["bert-forward"], threads=(1,)), "AVX2"))

    def test_thread_scaling(self):
        rows = []
        for rnd, one in zip((1, 2, 3), (170, 190, 150)):
            rows += [row("bert-forward", "cranformer", 1, rnd, one), row("bert-forward", "cranformer", 2, rnd, 100)]
        out = driver.targets(rows, meta(["cranformer"], ["bert-forward"]), "AVX2")
        self.assertTrue(line(out, "- BERT-base 1 -> 2 threads").endswith("1.70x (1.50-1.90): NOT met"))


class HoldAvx2(unittest.TestCase):
    # Two readers as compiled in the libraries, between other code, and bytes that only look
    # like the start of one (0f 01 d0 followed by something else).
    MLAS = bytes.fromhex("0f01d0" "89c0" "48c1e220" "4809c2")
    XBYAK = bytes.fromhex("0f01d0" "48c1e220" "89c0" "4889d7")
    LOOKALIKE = bytes.fromhex("0f01d0" "41f60434080f84")

    def test_each_reader_clears_the_avx512_state_bits_and_nothing_else(self):
        data = bytearray(b"\x90" * 5 + self.MLAS + self.LOOKALIKE + self.XBYAK + self.MLAS + b"\xc3")
        before = bytes(data)
        self.assertEqual(hold_avx2.patch(data), 3)
        changed = [i for i in range(len(data)) if data[i] != before[i]]
        # `and $0x1f,%al` where each `mov %eax,%eax` was, and only there.
        at = [5 + 3, 5 + 12 + 10 + 7, 5 + 12 + 10 + 12 + 3]
        self.assertEqual(changed, [i + k for i in at for k in (0, 1)])
        for i in at:
            self.assertEqual(bytes(data[i : i + 2]), bytes.fromhex("241f"))
        self.assertEqual(hold_avx2.patch(data), 0, "a rewritten reader is not rewritten again")

    def test_a_copy_with_no_known_reader_is_refused_and_not_held(self):
        with tempfile.TemporaryDirectory() as d:
            site, out = os.path.join(d, "site"), os.path.join(d, "out")
            os.makedirs(os.path.join(site, "onnxruntime", "capi"))
            with open(os.path.join(site, "onnxruntime", "capi", "lib.so"), "wb") as f:
                f.write(b"\x90" * 64 + self.MLAS)
            os.makedirs(os.path.join(site, "openvino", "libs"))
            with open(os.path.join(site, "openvino", "libs", "lib.so.1"), "wb") as f:
                f.write(b"\x90" * 64 + self.LOOKALIKE)
            self.assertIn("openvino: no XCR0 reader", hold_avx2.hold(site, out, "openvino"))
            self.assertIsNone(hold_avx2.hold(site, out, "onnxruntime"))
            with open(os.path.join(out, "onnxruntime", "capi", "lib.so"), "rb") as f:
                self.assertEqual(f.read()[64 + 3 : 64 + 5], bytes.fromhex("241f"))
            with open(os.path.join(site, "onnxruntime", "capi", "lib.so"), "rb") as f:
                self.assertEqual(f.read()[64:], self.MLAS, "the installed package is left as it was")
            with open(os.path.join(out, "onnxruntime.stamp.json")) as f:
                self.assertEqual(json.load(f)["sites"], 1)
            # The driver holds ONNX Runtime's engines only, and says OpenVINO ran wide.
            self.assertEqual(driver.held_engines(out), {"onnxruntime", "onnxruntime-int8"})
            note = driver.isa_note(type("A", (), {"isa": "avx2", "llama_python": "", "held_path": out}))
            self.assertIn("ONNX Runtime from copies that see no AVX-512", note)
            self.assertIn("Not held, with the machine's full ISA: llama.cpp", note)
            self.assertIn("OpenVINO in part", note)
            self.assertNotIn("ONNX Runtime (it picks", note)


if __name__ == "__main__":
    unittest.main()
