#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the `decodebench slurm` integration test
# (harness/tests/runner.rs, `slurm_*`) and for trying a sweep by hand.
#
#   scripts/slurm-local.sh start DIR   install Debian's Slurm and munge where missing, write
#                                      DIR/slurm.conf (one CPU node: this host, all its cores),
#                                      start munged, slurmctld and slurmd, wait for the node
#   scripts/slurm-local.sh stop DIR    stop the daemons that `start DIR` started
#
# Clients need `export SLURM_CONF=DIR/slurm.conf`. Everything Slurm writes (state, spool, logs,
# pid files) stays in DIR. Needs root (SlurmUser=root): the test machines' user.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/slurm.conf"

stop() {
    # slurmd and slurmctld by their pid files, then munged if this script started it.
    for name in slurmd slurmctld munged; do
        pidfile="$dir/$name.pid"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi
if [ "$cmd" != start ]; then
    echo "$0: unknown command '$cmd' (start or stop)" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "$0: needs root (the test cluster runs jobs as SlurmUser=root)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    pkgs="slurmctld slurmd slurm-client munge"
    apt-get install -y --no-install-recommends $pkgs >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends $pkgs >/dev/null; }
fi
# The packages' systemd units are not what runs here: this script starts its own daemons.

host=$(hostname -s)
cpus=$(nproc)
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
cat >"$conf" <<EOF
# Written by decodebench's scripts/slurm-local.sh: one node, this host, for tests.
ClusterName=decodebench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# munge: the packaged key (made at install), a socket of our own so a system munged is left alone.
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chmod 0400 /etc/munge/munge.key
socket="$dir/munge/munge.socket"
if [ ! -S "$socket" ] || ! munge -n -S "$socket" >/dev/null 2>&1; then
    munged --force --socket="$socket" --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
        --seed-file="$dir/munge/seed" --key-file=/etc/munge/munge.key
fi
# Slurm's auth/munge plugin reads the socket from AuthInfo. cred_expire (120 s by default) is
# also how long a requeued job waits before it may start again: slurmd refuses to launch a job
# whose credential it revoked at the kill ("Job credential revoked") until then, and the job
# then FAILS for good. 10 s keeps the requeue test short without starting it early.
sed -i "s|^AuthType=auth/munge|AuthType=auth/munge\nAuthInfo=socket=$socket,cred_expire=10|" "$conf"

# One cluster per machine: the ports are fixed, and a second slurmctld would fail to bind them
# while its clients talked to the first one (a cluster left running by a killed test did that).
for port in "${SLURMCTLD_PORT:-6817}" "${SLURMD_PORT:-6818}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$0: port $port is in use: another Slurm is running here (stop it: $0 stop ITS_DIR, or pkill slurmctld slurmd)" >&2
        exit 1
    fi
done
export SLURM_CONF="$conf"
slurmctld -f "$conf"
slurmd -f "$conf"

# The node is up once slurmctld sees it idle.
for _ in $(seq 150); do
    if scontrol show node "$host" 2>/dev/null | grep -q "State=IDLE"; then
        echo "slurm: node $host ($cpus CPUs) is idle; export SLURM_CONF=$conf"
        exit 0
    fi
    sleep 0.2
done
echo "$0: the node did not come up within 30 s; logs: $dir/slurmctld.log, $dir/slurmd.log" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
stop
exit 1
