#!/usr/bin/env bash
# A private one-node SLURM cluster on this machine, for trying profiles/slurm (and for its test).
#
#   scripts/local-slurm.sh start DIR   munge + slurmctld + slurmd with their files under DIR; waits until the node
#                                      is idle, then prints the line to source: export SLURM_CONF=DIR/slurm.conf
#   scripts/local-slurm.sh stop DIR    cancels the cluster's jobs and stops its daemons
#
# Needs the Debian packages slurmctld, slurmd, slurm-client and munge (scripts/setup.sh --slurm installs them).
# The cluster has its own munge key and socket, state, logs and free ports under DIR. One thing lies outside DIR:
# /etc/slurm/slurm.conf, a symbolic link to DIR/slurm.conf while the cluster runs, because the executor plugin's job
# step drops SLURM_CONF before its `srun`, which then reads only the standard location. An existing slurm.conf that
# is not such a link (a real cluster's) is never touched: the script stops instead.
# No accounting (sacct has no data: use `--slurm-status-command squeue`, which works because MinJobAge keeps
# finished jobs visible for 10 minutes), and no cgroups (they rarely work in containers): processes are tracked by
# PID (proctrack/linuxproc), tasks are not confined, memory is not enforced. Finished jobs are logged one per line
# in DIR/jobcomp.log. Run as root (slurmd starts jobs as their user).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf
system_conf=/etc/slurm/slurm.conf
HEADER="# written by scripts/local-slurm.sh: a private one-node cluster"

fail() {
  echo "local-slurm: $*" >&2
  for log in "$dir"/log/*.log; do [ -s "$log" ] && { echo "--- $log (last lines)" >&2; tail -n 20 "$log" >&2; }; done
  exit 1
}

abort() {  # a start that failed half-way: stop what runs, then report
  stop
  fail "$@"
}

stop_pid() {  # stop the daemon whose pid file is $1, waiting up to 10 s for it to exit
  local pid
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

stop() {
  if [ -s "$dir/run/slurmctld.pid" ]; then
    SLURM_CONF=$conf scancel --user "$(id -un)" 2>/dev/null || true
    sleep 1  # slurmd passes the cancellation on to the jobs' slurmstepd
  fi
  stop_pid "$dir/run/slurmd.pid"
  stop_pid "$dir/run/slurmctld.pid"
  stop_pid "$dir/run/munged.pid"
  [ "$(readlink "$system_conf" 2>/dev/null)" != "$conf" ] || rm -f "$system_conf"
}

link_system_conf() {  # /etc/slurm/slurm.conf -> DIR/slurm.conf, unless it belongs to something else
  local target other
  if [ -e "$system_conf" ] || [ -L "$system_conf" ]; then
    target=$(readlink "$system_conf" || true)
    other=$(dirname "$target")
    # ours: a link to a config this script wrote, or into a folder that is gone
    if [ -z "$target" ] || { ! grep -qs "^$HEADER" "$target" && [ -e "$other" ]; }; then
      fail "$system_conf exists and is not a link made by this script: not touching a real SLURM's config"
    fi
    if [ "$target" != "$conf" ] && [ -s "$other/run/slurmctld.pid" ] && kill -0 "$(cat "$other/run/slurmctld.pid")" 2>/dev/null; then
      fail "another local cluster runs in $other: stop it first ($0 stop $other)"
    fi
    rm -f "$system_conf"
  fi
  mkdir -p "$(dirname "$system_conf")"
  ln -s "$conf" "$system_conf"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local missing=""
  for tool in munged slurmctld slurmd sinfo sbatch squeue; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing="$missing $tool"
  done
  [ -z "$missing" ] || fail "not installed:$missing (Debian: apt-get install slurmctld slurmd slurm-client munge)"
  [ "$(id -u)" -eq 0 ] || fail "run as root: slurmd starts jobs as the submitting user"
  export PATH=$PATH:/usr/sbin
  stop  # a previous cluster in the same folder
  link_system_conf  # first: it refuses when another cluster or a real SLURM owns /etc/slurm/slurm.conf
  mkdir -p "$dir"/{munge,state,spool,log,run}
  chmod 700 "$dir/munge"

  # munge: a private key and socket (the system's munged, if any, is left alone)
  [ -s "$dir/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge/munge.key"; }
  chmod 400 "$dir/munge/munge.key"
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
    || abort "munged did not start"

  # one node: this machine, as slurmd sees it (CPUs, sockets, cores). CPUs and memory are not enforced here (no
  # cgroups); they are advertised as at least 8 CPUs and 64 GiB (config_overrides) so that a profile's requests fit
  # on a small machine (a group of three evaluations side by side asks for three times one's threads).
  local host node memory cpus
  host=$(hostname -s)
  node=$(slurmd -C | head -n 1)
  case $node in NodeName=*CPUs=*RealMemory=*) ;; *) abort "slurmd -C gave no node description: $node" ;; esac
  memory=${node##*RealMemory=}; memory=${memory%% *}
  [ "$memory" -ge 65536 ] || node=${node/RealMemory=$memory/RealMemory=65536}
  cpus=${node##*CPUs=}; cpus=${cpus%% *}
  [ "$cpus" -ge 8 ] || node="${node%% *} CPUs=8 Boards=1 SocketsPerBoard=1 CoresPerSocket=8 ThreadsPerCore=1 \
RealMemory=$(( memory > 65536 ? memory : 65536 ))"
  cat > "$conf" <<EOF
$HEADER
ClusterName=steermoe-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# no cgroups: PIDs only, tasks unconfined
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
# finished jobs stay visible to squeue (the executor's status command without accounting)
MinJobAge=600
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$conf
  slurmctld -c -f "$conf" || abort "slurmctld did not start"
  slurmd -f "$conf" -N "$host" || abort "slurmd did not start"
  local state=""
  for _ in $(seq 120); do
    state=$(sinfo --noheader --nodes "$host" --format %t 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.5
  done
  [ "$state" = idle ] || abort "node $host is '${state:-unreachable}', not idle, after 60 s"
  echo "export SLURM_CONF=$conf"
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
