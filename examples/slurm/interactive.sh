#!/bin/bash
# The tutorial's interactive steps with actord, to run (or paste line by
# line) inside an allocation:
#   salloc -N 1 -n 10 -t 30 --qos=interactive
#   bash examples/slurm/interactive.sh
# Environment: ACTORD (the binary, default `actord` on PATH), SCRATCH,
# ACTORD_HOST (the address the scheduler listens on, default every
# interface), DARTS_INPUTS (100) and DARTS_SCALE (1.0).
set -euo pipefail
ACTORD=${ACTORD:-actord}
mkdir -p "${SCRATCH:?set SCRATCH}/actord"
# Whatever happens, nothing this script started outlives it.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
export ACTORD_SCHEDULER_FILE=$SCRATCH/actord/scheduler.json
WORKERS=${SLURM_NTASKS:-10}

# 1. The scheduler (in the background, as `dask-scheduler &`). It writes the
#    scheduler file, mode 0600, once it listens.
"$ACTORD" scheduler --journal "$SCRATCH/actord/journal" ${ACTORD_HOST:+--host "$ACTORD_HOST"} &

# 2. One single-threaded worker per Slurm task (as `srun dask-worker`).
srun -u -n "$WORKERS" "$ACTORD" worker --threads 1 &

# 3. No watching the log scroll by: wait until all of them registered.
"$ACTORD" wait --workers "$WORKERS" --timeout 5m
"$ACTORD" ctl status

# 4. The client: map throw_darts over 100 inputs, gather them, print π.
"$ACTORD" darts --inputs "${DARTS_INPUTS:-100}" --scale "${DARTS_SCALE:-1.0}" --out darts_output.json
echo "dask test completed"

# 5. Stop the scheduler and its workers; srun returns.
"$ACTORD" ctl shutdown
wait
