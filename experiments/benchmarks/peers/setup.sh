#!/usr/bin/env bash
# Make the peers' venvs for `make bench-peers`, outside the project and the repository; idempotent.
# CLArena 1.1.0 and Avalanche 0.6.0 each get their own venv with torch 2.14.1 / torchvision 0.29.1
# (the versions clcore is measured with; both peers accept them). Nothing goes into pyproject.toml.
set -euo pipefail
PEERS_HOME="${PEERS_HOME:-$HOME/.cache/clcore-peers}"
PYTHON="${PYTHON:-python3}"
TORCH=(torch==2.14.1 torchvision==0.29.1)

make_venv() {  # make_venv <folder> <import name> <requirement>
    local venv="$PEERS_HOME/$1" module="$2" requirement="$3"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $module" 2>/dev/null; then
        echo "ok: $venv ($requirement)"
        return
    fi
    echo "making $venv ($requirement, ${TORCH[*]})"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "$requirement" "${TORCH[@]}"
}

mkdir -p "$PEERS_HOME"
make_venv clarena-1.1.0 clarena clarena==1.1.0
make_venv avalanche-0.6.0 avalanche avalanche-lib==0.6.0
