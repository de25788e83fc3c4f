#!/usr/bin/env bash
# Installs Ray Serve into a venv (target/venv-ray) and runs deploy/ray_check.py: a local Ray
# cluster, 2 replicas of the model server behind Ray's proxy, answers checked, shut down.
#   deploy/ray_check.sh CRANFORMER MODEL_DIR [EXECUTABLE]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-ray
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q "ray[serve]" >&2
exec "$venv/bin/python" deploy/ray_check.py "$@"
