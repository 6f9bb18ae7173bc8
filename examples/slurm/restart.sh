#!/bin/bash
# A job longer than one allocation: each allocation starts the scheduler on
# the journal in $SCRATCH, queues its own successor (it starts when this
# allocation ends, e.g. at its walltime), and the job goes on from what the
# journal holds: finished tasks are not run again.
#   sbatch examples/slurm/restart.sh
# Environment: ACTORD (default `actord` on PATH), SCRATCH, ACTORD_HOST,
# TASKS (how many tasks the job has, 200), TASK_SECONDS (each one's length,
# 5), MAX_ALLOCATIONS (allocations in a row at most, 10).
#SBATCH -J actord_restart
#SBATCH --ntasks=2
#SBATCH --time=30
set -euo pipefail
ACTORD=${ACTORD:-actord}
STATE=${SCRATCH:?set SCRATCH}/actord-restart
mkdir -p "$STATE"
export ACTORD_SCHEDULER_FILE=$STATE/scheduler.json

# At most MAX_ALLOCATIONS (10) allocations in a row, so that a job that
# cannot finish does not resubmit itself for ever.
count=$(( $(cat "$STATE/allocations" 2>/dev/null || echo 0) + 1 ))
echo "$count" >"$STATE/allocations"
next=
if (( count < ${MAX_ALLOCATIONS:-10} )); then
  # The successor, in case this allocation ends before the job does
  # (sbatch passes this environment on; $0 is Slurm's copy of this script).
  next=$(sbatch --parsable --dependency=afterany:"$SLURM_JOB_ID" "$0")
fi
echo "allocation $SLURM_JOB_ID ($count); successor ${next:-none}"
# A command that fails while this allocation is still running is a real
# failure: cancel the successor. One that fails because the allocation is
# ending (its walltime, or `scancel`: Slurm marks the job first, then signals
# every process) keeps it: that is what the successor is for.
on_error() {
  local state
  state=$(squeue -h -j "$SLURM_JOB_ID" -o %T 2>/dev/null || true)
  if [[ $state == RUNNING ]]; then
    [[ -z $next ]] || scancel "$next"
    echo "failed; not resubmitting" >&2
  else
    echo "allocation ending (${state:-state unknown}); successor ${next:-none} resumes the job" >&2
  fi
}
trap on_error ERR
# Stop what this script started (a scheduler left behind would keep the
# journal locked).
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# The scheduler replays the journal: the job, its finished tasks, its results.
"$ACTORD" scheduler --journal "$STATE/journal" ${ACTORD_HOST:+--host "$ACTORD_HOST"} &
srun -u -n "$SLURM_NTASKS" "$ACTORD" worker --threads 1 &
"$ACTORD" wait --workers "$SLURM_NTASKS" --timeout 5m

# The job's id is chosen once and kept in $SCRATCH; submitting the same job
# again is answered as the first time (idempotent), so a crash between the
# two lines loses nothing. The end of an allocation kills the tasks running
# then (Slurm signals every process of the job): --retries runs them again.
[[ -s $STATE/job ]] || cat /proc/sys/kernel/random/uuid >"$STATE/job"
job=$(<"$STATE/job")
"$ACTORD" submit --job-id "$job" --retries 3 --array 1-"${TASKS:-200}" -- \
  sh -c "sleep ${TASK_SECONDS:-5}; echo \$ACTORD_TASK" >/dev/null
"$ACTORD" ctl job "$job"

# Waits for the tasks still to run (the ones of earlier allocations are done).
"$ACTORD" gather "$job" --out "$STATE/results.json"

# Finished: the successor is not needed, and the cluster ends cleanly.
[[ -z $next ]] || scancel "$next"
rm -f "$STATE/allocations"
"$ACTORD" ctl shutdown
wait
echo "done: results in $STATE/results.json"
