"""N replicas of a cranformer model server behind Ray Serve's HTTP proxy.

Each replica starts the model's own server (`BIN serve --port 0`, a compiled executable, or
`cranformer serve MODEL_DIR`) on loopback, waits for its ready line, and forwards every HTTP
request it receives from Ray's proxy to it unchanged: method, path, query, body, the
`Authorization` header; the answer's status, content type and body come back as they are.
Ray Serve then does what it is for: replicas, routing, autoscaling, a cluster. The batching
stays inside each replica's server, which batches the requests Ray routes to it.

    python deploy/ray_serve.py --replicas 2 -- /path/to/model-executable
    python deploy/ray_serve.py --replicas 2 -- cranformer MODEL_DIR    # (`serve` is added)

Then: curl -s localhost:8000/v1/embeddings -d '{"input": "hello"}'
"""

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

from ray import serve
from starlette.requests import Request
from starlette.responses import Response


@serve.deployment
class CranformerServer:
    def __init__(self, command: list, threads: int = 0):
        # `BIN serve` and `cranformer serve MODEL_DIR` both put `serve` second.
        argv = [command[0], "serve", *command[1:], "--host", "127.0.0.1", "--port", "0"]
        if threads:
            argv += ["--threads", str(threads)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        words = line.split()
        if "port" not in words:
            raise RuntimeError(f"{argv}: no ready line (got {line!r})")
        self.port = int(words[words.index("port") + 1])
        # Keep reading stdout so the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def _forward(self, method, path, body, headers):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body or None, method=method,
            headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, r.headers.get("content-type", ""), r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("content-type", ""), e.read(), dict(e.headers)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if request.url.query:
            path += "?" + request.url.query
        body = await request.body()
        headers = {"Content-Type": request.headers.get("content-type", "application/json")}
        if "authorization" in request.headers:
            headers["Authorization"] = request.headers["authorization"]
        status, ctype, data, rh = await asyncio.to_thread(
            self._forward, request.method, path, body, headers)
        out = {"x-cranformer-replica": str(os.getpid())}
        if "Retry-After" in rh:
            out["Retry-After"] = rh["Retry-After"]
        return Response(content=data, status_code=status, media_type=ctype or None, headers=out)

    def __del__(self):
        proc = getattr(self, "proc", None)
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                proc.kill()


def app(command, replicas=2, threads=0):
    return CranformerServer.options(num_replicas=replicas).bind(command, threads)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="--threads for each replica's server")
    p.add_argument("--port", type=int, default=8000, help="Ray Serve's HTTP proxy port")
    p.add_argument("command", nargs="+", help="the executable (or: cranformer MODEL_DIR)")
    a = p.parse_args()
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(app(a.command, a.replicas, a.threads), route_prefix="/", blocking=True)


if __name__ == "__main__":
    sys.exit(main())
