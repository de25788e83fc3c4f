"""Starts a local Ray cluster, deploys 2 replicas of a model server (deploy/ray_serve.py)
behind Ray Serve's proxy, sends embedding requests through the proxy, checks them against
`cranformer embed --json`, checks that both replicas answered, and shuts everything down.

    python deploy/ray_check.py CRANFORMER MODEL_DIR [EXECUTABLE]

With EXECUTABLE (a compiled model), the replicas run it; otherwise `cranformer serve`.
Exit status 0 when every check passed.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, dict(r.headers), json.loads(r.read())


def main():
    cranformer, model_dir = sys.argv[1], sys.argv[2]
    command = [sys.argv[3]] if len(sys.argv) > 3 else [cranformer, model_dir]
    texts = ["A man is eating food.", "A woman is playing violin.", "Ray routes this request."]
    want = json.loads(subprocess.check_output(
        [cranformer, "embed", model_dir, "--json", *texts], text=True).strip().splitlines()[-1])
    import ray
    from ray import serve
    import ray_serve

    port = 8765
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_serve.app(command, replicas=2, threads=1), route_prefix="/")
        replicas = set()
        deadline = time.time() + 120
        n = 0
        while time.time() < deadline and (len(replicas) < 2 or n < 12):
            i = n % len(texts)
            status, headers, got = post(port, "/v1/embeddings", {"input": texts[i]})
            assert status == 200, (status, got)
            v, w = got["data"][0]["embedding"], want["embeddings"][i]
            worst = max(abs(a - b) for a, b in zip(v, w))
            assert len(v) == len(w) and worst <= 2e-5 + 2e-4 * max(abs(x) for x in w), worst
            replicas.add(headers.get("x-cranformer-replica") or headers.get("X-Cranformer-Replica"))
            n += 1
        assert len(replicas) == 2, f"answers came from {replicas}, expected 2 replicas"
        status, _, ready = 0, None, None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=30) as r:
            status, ready = r.status, json.loads(r.read())
        assert status == 200 and ready == {"ready": True}, ready
        print(f"ray serve: {n} requests through the proxy, answered by 2 replicas "
              f"({sorted(replicas)}), embeddings equal to cranformer embed's")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
