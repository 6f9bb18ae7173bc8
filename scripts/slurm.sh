#!/usr/bin/env bash
# A one-node Slurm on this machine, for tests and trying the examples:
#   scripts/slurm.sh install        apt-get slurm-wlm and munge when missing (root)
#   scripts/slurm.sh start [DIR]    install, write DIR/slurm.conf, start munged,
#                                   slurmctld and slurmd; wait until the node is idle
#   scripts/slurm.sh stop DIR       kill those daemons by the pids in DIR/pids/
# `start` prints `export SLURM_CONF=…` (and the same goes to DIR/env): source
# it to use sbatch, squeue, … against this Slurm. DIR defaults to a fresh
# /tmp/actord-slurm.XXXXXX. Exit 3 means this machine cannot run Slurm (not
# root, apt-get failed): tests skip on it. Everything lives under DIR.
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 1; }
cannot() { echo "slurm.sh: cannot run Slurm here: $*" >&2; exit 3; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null; then
    return 0
  fi
  [[ $(id -u) == 0 ]] || cannot "installing slurm-wlm and munge needs root"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q slurm-wlm munge </dev/null >/dev/null 2>&1 \
      || { apt-get update -q </dev/null >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge </dev/null >/dev/null 2>&1; }; } \
    || cannot "apt-get install slurm-wlm munge failed"
}

# A free TCP port on 127.0.0.1 (the kernel picks it; Slurm binds it right after).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < end )) || return 1
    sleep 0.2
  done
}

# Starts a daemon in the background with its output in DIR/log/NAME.out; its pid goes to DIR/pids/NAME.
daemon() {
  local name=$1; shift
  setsid "$@" </dev/null >"$DIR/log/$name.out" 2>&1 &
  echo $! >"$DIR/pids/$name"
}

write_conf() {
  local host mem ctld_port d_port
  host=$(hostname -s)
  # RealMemory a bit under what is free, so slurmd does not drain the node.
  mem=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  ctld_port=$(free_port)
  d_port=$(free_port)
  while [[ $d_port == "$ctld_port" ]]; do d_port=$(free_port); done
  cat >"$DIR/slurm.conf" <<EOF
ClusterName=actord
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=2 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
  mkdir -p "$DIR/munge"
  chmod 0700 "$DIR/munge"
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$DIR/munge/munge.key"
  daemon munged munged --foreground --force \
    --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
  wait_for 10 test -S "$DIR/munge/munge.socket" || die "munged did not start: $(tail -3 "$DIR/log/munged.out" "$DIR/log/munged.log" 2>/dev/null)"
}

node_idle() {
  [[ $(sinfo -h -N -o '%T' 2>/dev/null) == idle ]]
}

start() {
  install
  DIR=${1:-$(mktemp -d /tmp/actord-slurm.XXXXXX)}
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  mkdir -p "$DIR"/{state,spool,log,pids}
  write_conf
  export SLURM_CONF="$DIR/slurm.conf"
  echo "export SLURM_CONF=$SLURM_CONF" >"$DIR/env"
  start_munge
  daemon slurmctld slurmctld -D -i -f "$SLURM_CONF"
  wait_for 20 scontrol ping || { stop_daemons; die "slurmctld did not answer: $(tail -5 "$DIR/log/slurmctld.log" 2>/dev/null)"; }
  daemon slurmd slurmd -D -f "$SLURM_CONF"
  if ! wait_for 60 node_idle; then
    local why
    why="$(sinfo -N -o '%N %T %E' 2>&1 | tail -2); $(tail -5 "$DIR/log/slurmd.log" 2>/dev/null)"
    stop_daemons
    die "the node never became idle: $why"
  fi
  echo "export SLURM_CONF=$SLURM_CONF"
}

# Cancels every job of this Slurm (their processes are slurmstepd's, not
# slurmd's children), then kills the daemons whose pids are in DIR/pids
# (SIGTERM, SIGKILL after 5 s).
stop_daemons() {
  local f pid
  if [[ -f $DIR/pids/slurmctld && -f $DIR/slurm.conf ]]; then
    export SLURM_CONF=$DIR/slurm.conf
    scancel --full --quiet $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
    wait_for 15 bash -c '[[ -z $(squeue -h -o %i 2>/dev/null) ]]' || true
  fi
  for f in "$DIR"/pids/slurmd "$DIR"/pids/slurmctld "$DIR"/pids/munged; do
    [[ -f $f ]] || continue
    pid=$(<"$f")
    kill -TERM "$pid" 2>/dev/null || true
    wait_for 5 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) [[ -n ${2:-} ]] || die "usage: slurm.sh stop DIR"; DIR=$2; stop_daemons ;;
  *) echo "usage: scripts/slurm.sh install | start [DIR] | stop DIR" >&2; exit 2 ;;
esac
