#!/usr/bin/env bash
# Multi-process training with torchrun and mmengine's DDP, like mmdet's dist_train.sh.
#   bash tools/dist_train.sh CONFIG NPROC [train.py args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT. On a machine without a GPU
# the processes train on the CPU with the gloo backend.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash tools/dist_train.sh CONFIG NPROC [train.py args...]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-$( [ -x "$HERE/../.venv/bin/python" ] && echo "$HERE/../.venv/bin/python" || echo python)}
# One thread per process unless set: the value torchrun and mmengine pick anyway, set here
# so that neither prints its warning about choosing it (two UserWarnings per run).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$HERE/train.py" "$CONFIG" --launcher pytorch "$@"
