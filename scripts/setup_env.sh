#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the CPU torch wheel and every extra.
# Usage: scripts/setup_env.sh [VENV_DIR]   (default .venv)
set -euo pipefail
venv=${1:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade "pip>=24" >/dev/null
# torch==2.13.0 in the SAME command as everything that depends on torch, or pip may pull a
# multi-GB CUDA build (see docs/environment notes in README).
$pip install -q "torch==2.13.0" -e "$here[all]"
# These pin CUDA torch / old transformers in their metadata but work with ours: no deps.
$pip install -q --no-deps "llava-torch==1.2.2.post1" "lmms-eval==0.7.3"
touch "$venv/.installed"
echo "environment ready: $venv"
