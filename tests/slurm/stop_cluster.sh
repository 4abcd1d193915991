#!/usr/bin/env bash
# Stop the daemons started by start_cluster.sh (slurmd, then slurmctld); munged keeps running.
set -euo pipefail

stop_daemon() {
    local name=$1 pidfile=/run/$1.pid pid
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

stop_daemon slurmd
stop_daemon slurmctld
