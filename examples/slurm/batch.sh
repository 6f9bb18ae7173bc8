#!/bin/bash
# The tutorial's batch job with actord: a scheduler, one worker per Slurm
# task, the darts client, and a clean end of the cluster, with no `sleep`s.
#   sbatch examples/slurm/batch.sh
# Environment (sbatch passes yours on): ACTORD (the binary, default `actord`
# on PATH), SCRATCH (where the scheduler file, journal and output go),
# ACTORD_HOST (the address the scheduler listens on, default every
# interface), DARTS_INPUTS (100) and DARTS_SCALE (1.0).
#SBATCH -J actord_darts
#SBATCH --ntasks=2
#SBATCH --time=10
set -euo pipefail
ACTORD=${ACTORD:-actord}
RUN=${SCRATCH:?set SCRATCH}/actord/$SLURM_JOB_ID
mkdir -p "$RUN"
# Every actord command below finds the scheduler through this file.
# Whatever happens, nothing this script started outlives it.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
export ACTORD_SCHEDULER_FILE=$RUN/scheduler.json

# 1. The scheduler, on this (the batch) node; it writes the file once it listens.
"$ACTORD" scheduler --journal "$RUN/journal" ${ACTORD_HOST:+--host "$ACTORD_HOST"} &

# 2. One single-threaded worker per Slurm task, on every node of the job.
#    (Or a nanny per node that supervises them:
#    srun -n $SLURM_JOB_NUM_NODES --ntasks-per-node=1 "$ACTORD" nanny --workers 2 --threads 1 &)
srun -u -n "$SLURM_NTASKS" "$ACTORD" worker --threads 1 &

# 3. Instead of `sleep`: block until the scheduler answers and every worker registered.
"$ACTORD" wait --workers "$SLURM_NTASKS" --timeout 5m

# 4. The client: throw_darts over the inputs, gathered; prints π.
"$ACTORD" darts --inputs "${DARTS_INPUTS:-100}" --scale "${DARTS_SCALE:-1.0}" --out "$RUN/darts.json"

# 5. A clean end: the scheduler tells its workers to exit, so srun returns
#    and the job ends now instead of at its time limit.
"$ACTORD" ctl shutdown
wait
echo "done: results in $RUN/darts.json"
