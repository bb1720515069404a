#!/usr/bin/env bash
# Multi-process feature dump with torchrun, like tools/dist_train.sh: each rank dumps its
# own shard of the images; rank 0 shows one progress bar, names every rank's skipped
# images (with its rank) and writes one index.
#   bash tools/dist_dump.sh CONFIG NPROC [CHECKPOINT] --input PATH --out DIR [dump args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT. Without a GPU the ranks run
# on the CPU with the gloo backend.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash tools/dist_dump.sh CONFIG NPROC [CHECKPOINT] --input PATH --out DIR [dump args...]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-$( [ -x "$HERE/../.venv/bin/python" ] && echo "$HERE/../.venv/bin/python" || echo python)}
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29501}" \
    --nproc_per_node="$NPROC" \
    "$HERE/dump_features.py" "$CONFIG" "$@" --launcher pytorch
