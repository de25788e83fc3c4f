"""The `openai` Python package, unchanged, against `cranformer serve`:
- embeddings (float and base64) equal to `cranformer embed --json`'s, on all-MiniLM-L6-v2;
- completions and a streamed completion equal to `cranformer generate --json`'s for greedy
  decoding, on gpt2-tiny;
- the errors it raises for a bad request and an unknown model.

    python tests/openai_client.py CRANFORMER MINILM_DIR GPT2_DIR

Servers listen on 127.0.0.1 with --port 0. Prints one line per check and a closing
"N passed, M failed"; exits non-zero on any failure.
"""

import json
import subprocess
import sys
import threading

import openai

CRANFORMER, MINILM, GPT2 = sys.argv[1:4]
results = []


def check(name, fn):
    try:
        fn()
        results.append(True)
        print(f"ok   {name}")
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        results.append(False)
        print(f"FAIL {name}: {type(e).__name__}: {e}")


class Server:
    def __init__(self, model_dir, *args):
        self.proc = subprocess.Popen(
            [CRANFORMER, "serve", model_dir, "--port", "0", "--model-name", "m", *args],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        words = line.split()
        assert "port" in words, f"no ready line: {line!r}"
        self.port = int(words[words.index("port") + 1])
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused",
                                    max_retries=0, timeout=120)

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=60) == 0, "the server did not exit 0 on SIGTERM"


def cli_json(*args):
    out = subprocess.check_output([CRANFORMER, *args, "--json"], text=True)
    return json.loads(out.strip().splitlines()[-1])


def close(got, want):
    assert len(got) == len(want), (len(got), len(want))
    tol = 2e-5 + 2e-4 * max(abs(x) for x in want)
    worst = max(abs(a - b) for a, b in zip(got, want))
    assert worst <= tol, f"worst difference {worst} > {tol}"


texts = ["A man is eating food.", "The girl is carrying a baby.", "Serving is batching."]
want = cli_json("embed", MINILM, *texts)["embeddings"]
s = Server(MINILM)
try:
    def embeddings_float():
        r = s.client.embeddings.create(model="m", input=texts)
        for d, w in zip(r.data, want):
            close(d.embedding, w)
        assert r.usage.prompt_tokens > 0

    def embeddings_base64():
        # The client asks for base64 by default when numpy is present and decodes it; ask
        # explicitly and decode here to be sure which path ran.
        import base64
        import struct
        raw = s.client.embeddings.with_raw_response.create(
            model="m", input=texts[0], encoding_format="base64")
        b64 = json.loads(raw.http_response.text)["data"][0]["embedding"]
        data = base64.b64decode(b64)
        close(list(struct.unpack(f"<{len(data) // 4}f", data)), want[0])

    def unknown_model():
        try:
            s.client.embeddings.create(model="gpt-4", input="x")
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body
            return
        raise AssertionError("no error for an unknown model")

    def bad_request():
        try:
            s.client.embeddings.create(model="m", input="")
        except openai.BadRequestError as e:
            assert "empty" in e.body["message"], e.body
            return
        raise AssertionError("no error for an empty input")

    def models():
        assert [m.id for m in s.client.models.list()] == ["m"]

    check("embeddings (float) equal cranformer embed", embeddings_float)
    check("embeddings (base64) equal cranformer embed", embeddings_base64)
    check("unknown model -> NotFoundError", unknown_model)
    check("empty input -> BadRequestError", bad_request)
    check("models.list", models)
finally:
    check("SIGTERM -> exit 0 (embeddings server)", s.stop)

prompts = ["Hello, my dog is cute", "The meaning of life is"]
gen = [cli_json("generate", GPT2, "--prompt", p, "--max-new-tokens", "12") for p in prompts]
s = Server(GPT2)
try:
    def completions():
        for p, g in zip(prompts, gen):
            r = s.client.completions.create(model="m", prompt=p, max_tokens=12, temperature=0)
            assert r.choices[0].text == g["text"], (r.choices[0].text, g["text"])
            assert r.choices[0].finish_reason == "length"
            assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens == len(g["prompt_ids"])

    def streamed():
        stream = s.client.completions.create(model="m", prompt=prompts[1], max_tokens=12,
                                             temperature=0, stream=True)
        text, finish = "", None
        for chunk in stream:
            for c in chunk.choices:
                text += c.text
                finish = c.finish_reason or finish
        assert text == gen[1]["text"], (text, gen[1]["text"])
        assert finish == "length"

    def too_many_tokens():
        try:
            s.client.completions.create(model="m", prompt="x", max_tokens=100000)
        except openai.BadRequestError as e:
            assert "max_tokens" in e.body["message"], e.body
            return
        raise AssertionError("no error for max_tokens past the limit")

    check("completions equal cranformer generate (greedy)", completions)
    check("streamed completion equals cranformer generate (greedy)", streamed)
    check("max_tokens past the limit -> BadRequestError", too_many_tokens)
finally:
    check("SIGTERM -> exit 0 (completions server)", s.stop)

passed = sum(results)
print(f"openai client: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if all(results) else 1)
