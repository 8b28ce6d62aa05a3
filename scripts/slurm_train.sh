#!/bin/bash
# Multi-node gepalib training on Slurm, via torchrun's c10d rendezvous.
#
#   sbatch scripts/slurm_train.sh                                   # gepa11, 2 nodes x 4 GPUs
#   PRESET=small RUN_DIR=runs/small_slurm sbatch --nodes 1 scripts/slurm_train.sh --steps 3000
#
# How it works
# * Slurm starts ONE task per node (srun --ntasks-per-node=1). Each task runs a torchrun
#   agent that spawns GPUS_PER_NODE workers (one per GPU; nccl).
# * The agents find each other through the c10d rendezvous hosted on the first node of
#   the allocation (RDZV_HOST:RDZV_PORT); --rdzv-id is the job id, so a requeued job
#   forms a fresh rendezvous. No MASTER_ADDR / node ranks to compute by hand.
# * The global batch is fixed in tokens (batch_tokens, 786,432 for gepa11); gradient
#   accumulation = batch_tokens / (world_size * micro_batch_tokens) adapts to the number
#   of GPUs, so 1, 2, 4 or 8 GPUs per node train the same math. It must divide evenly:
#   4 nodes x 8 GPUs x 98,304 does not divide 786,432 -> pass --micro-batch-tokens 24576.
# * RUN_DIR must be on a filesystem shared by all nodes: rank 0 writes the checkpoints
#   and every rank reads the newest one when the run resumes.
# * Preemption / time limit: --signal=TERM@180 makes Slurm send SIGTERM to the tasks 3
#   minutes before the limit; torchrun forwards it to the workers, which finish the
#   current step, write a checkpoint, mark summary.json "interrupted" and exit with 143
#   (torchrun waits 30 s for them). The script then requeues the job; the same RUN_DIR
#   resumes from the checkpoint with the identical loss curve.
#   (A run dir refuses to resume with a different config; cadence flags such as
#   --val-every may change.)
# * Single node: `torchrun --standalone --nproc-per-node 8 -m gepalib train ...` is enough.
#
#SBATCH --job-name=gepa-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --signal=TERM@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail

PRESET="${PRESET:-gepa11}"
RUN_DIR="${RUN_DIR:-runs/${PRESET}_slurm_${SLURM_JOB_ID}}"
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}"
RDZV_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
RDZV_PORT="${RDZV_PORT:-29500}"
PYTHON="${PYTHON:-.venv/bin/python}"

# Threads per worker: the CPU share of each GPU process (data loading is memory-mapped).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-8} / GPUS_PER_NODE ))}"
# Plain log lines in the Slurm output (no progress bar).
export CI=1
# Uncomment if nccl picks the wrong network interface:
# export NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0

echo "job:${SLURM_JOB_ID} nodes:${SLURM_JOB_NUM_NODES} gpus_per_node:${GPUS_PER_NODE} rdzv:${RDZV_HOST}:${RDZV_PORT} run_dir:${RUN_DIR}"

set +e
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  "$PYTHON" -m torch.distributed.run \
    --nnodes "${SLURM_JOB_NUM_NODES}" \
    --nproc-per-node "${GPUS_PER_NODE}" \
    --rdzv-backend c10d \
    --rdzv-endpoint "${RDZV_HOST}:${RDZV_PORT}" \
    --rdzv-id "${SLURM_JOB_ID}" \
    -m gepalib train --preset "${PRESET}" --run-dir "${RUN_DIR}" "$@"
rc=$?
set -e

# Workers stopped by SIGTERM exit 143 after writing a checkpoint and marking summary.json
# "train.status": "interrupted" (torchrun itself then exits non-zero). Requeue to resume.
status="$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("train",{}).get("status",""))' \
  "${RUN_DIR}/summary.json" 2>/dev/null || true)"
if [ "$rc" -ne 0 ] && [ "$status" = "interrupted" ]; then
  echo "interrupted with a checkpoint in ${RUN_DIR}; requeueing job ${SLURM_JOB_ID}"
  scontrol requeue "${SLURM_JOB_ID}"
fi
exit "$rc"
