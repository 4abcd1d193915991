#!/usr/bin/env bash
# Stop the daemons started by start_cluster.sh (every slurmd, then slurmctld); munged keeps running.
set -euo pipefail

stop_daemon() {
    local name=$1 pidfile=$2 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    rm -f "$pidfile"
    # a stale pid file (daemon killed with SIGKILL) may name a reused pid
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# slurmd.pid: the one slurmd of the one-node cluster that start_cluster.sh started before
for pidfile in /run/slurmd-*.pid /run/slurmd.pid; do
    stop_daemon slurmd "$pidfile"
done
stop_daemon slurmctld /run/slurmctld.pid
