#!/usr/bin/env bash
# One table of pengi-kit's training, decoding and data-loading speed (see benchmarks/gpu.py).
#   bash benchmarks/gpu.sh            # one GPU, Pengi-base shape: under 8 minutes on an H100
#   bash benchmarks/gpu.sh --smoke    # tiny sizes on the CPU in seconds (the test suite runs this)
# Extra arguments go to benchmarks/gpu.py (--device, --threads, --workers, --no-compile, --json PATH).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
# Thread counts are set, not inherited by accident: an OMP_NUM_THREADS from the caller wins
# (the test suite runs with 1), else every core, at most 16.
threads="${OMP_NUM_THREADS:-$(( $(nproc) < 16 ? $(nproc) : 16 ))}"
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" TOKENIZERS_PARALLELISM=false
exec "$py" benchmarks/gpu.py --threads "$threads" --command "bash benchmarks/gpu.sh $*" "$@"
