#!/usr/bin/env bash
# Sampling speed on one CUDA GPU, one prepared command (issue 10); finishes in
# under 5 minutes (a 270 s budget inside, a hard stop at 295 s).
#
# Measures the released architecture (SD2.1-base UNet + detail extractor + VAE
# + DINOv2-g, random weights) at 512 px: the fp32 released way (sequential
# guidance, per-step detail features, DDIM 50) as the baseline, then bf16 with
# DDIM 50 and DPM-Solver++(2M) 20 steps, batch 1 and 4, per-step vs batched
# detail features, the automatic detail-feature mode once, and one
# torch.compile'd setting (compiled once, last). The markdown table is
# rewritten after every setting, so a stop keeps what ran.
#
# Usage, from anywhere:
#   bash benchmarks/gpu.sh [OUT.md] [--dry-run]
#   OUT.md defaults to benchmarks/results/gpu_sampling.md;
#   --dry-run runs the same matrix's code path on the CPU with the embedded
#   default (2 steps, compile through dynamo only): a check, not a measurement.
#
# Environment it is made for: Python 3.12 with torch and transformers but no
# diffusers (and no open_clip, which this benchmark does not use), no network.
# diffusers is pure Python; the other things it needs (huggingface-hub>=1.32,
# safetensors>=0.8, regex, requests, filelock, numpy, Pillow) and the project's
# own (opencv-python-headless, PyYAML) are in that image, and importlib_metadata
# is needed only before Python 3.8. So one wheel goes beside this script,
# downloaded beforehand on a machine with network, from the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp -d benchmarks/wheels diffusers==0.42.1
#
# (benchmarks/wheels/ is git-ignored: wheels are not committed.) When diffusers
# is missing, the wheels are installed into a temporary folder put first on
# PYTHONPATH (not the project's full install); the project runs from its source.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT_FILE="$ROOT/benchmarks/results/gpu_sampling.md"
DEVICE=cuda
EXTRA=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) DEVICE=cpu; EXTRA+=(--dry-run) ;;
        -*) echo "gpu.sh: unknown option $arg (usage: bash benchmarks/gpu.sh [OUT.md] [--dry-run])" >&2; exit 2 ;;
        *) OUT_FILE="$arg" ;;
    esac
done

if ! "$PYTHON" -c "import diffusers" 2>/dev/null || [ -n "${GPU_SH_FORCE_WHEELS:-}" ]; then
    shopt -s nullglob
    wheels=("$ROOT"/benchmarks/wheels/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "gpu.sh: diffusers is not installed and benchmarks/wheels/ holds no wheel; see this script's header" >&2
        exit 2
    fi
    SITE="$(mktemp -d)"
    trap 'rm -rf "$SITE"' EXIT
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [ "$DEVICE" = cuda ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: torch sees no CUDA GPU (use --dry-run for a CPU check)')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PYTHON" -c "import torch, diffusers, transformers; print('torch', torch.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"

mkdir -p "$(dirname "$OUT_FILE")"
timeout --signal=TERM 295 "$PYTHON" "$ROOT/benchmarks/bench_sampling.py" \
    --matrix gpu --model full --device "$DEVICE" --steps 50 --fewer-steps 20 \
    --warmup 1 --repeats 3 --time-budget 270 --compile-reserve 150 \
    --out "$OUT_FILE" "${EXTRA[@]}"
echo "gpu.sh: table written to $OUT_FILE"
