#!/usr/bin/env bash
# Start a two-node SLURM cluster on this machine: munged, slurmctld, and one slurmd per node, each
# with a name and a port of its own. The node names resolve to this machine (/etc/hosts): a job of
# several nodes meets at its first node's name (torch.distributed's rendezvous).
# Idempotent: safe to run again while the cluster is up or after its daemons died.
# Needs root; installs the Debian packages only when the binaries are missing.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)
NODES=(cleanclip1 cleanclip2)
FIRST_PORT=6818
WAIT_S=30

install_packages() {
    if command -v slurmctld && command -v slurmd && command -v sinfo && command -v munged; then
        return 0
    fi >/dev/null
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
}

# True if a live (non-zombie) process has this name; zombies can linger here
# because the daemons double-fork and PID 1 may not reap them.
running() {
    ps -C "$1" -o stat= | grep -qv '^Z'
}

# True if the pid file of node $1's slurmd names a live slurmd.
slurmd_running() {
    local pid
    pid=$(cat "/run/slurmd-$1.pid" 2>/dev/null) || return 1
    [[ $(ps -p "$pid" -o comm= 2>/dev/null) == slurmd && $(ps -p "$pid" -o stat=) != Z* ]]
}

resolve_nodes() {
    local node
    for node in "${NODES[@]}"; do
        getent hosts "$node" >/dev/null || echo "127.0.0.1 $node" >>/etc/hosts
    done
}

start_munge() {
    if [[ ! -f /etc/munge/munge.key ]]; then
        install -d -o munge -g munge -m 700 /etc/munge
        head -c 1024 /dev/urandom >/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    # --force: a munged killed with SIGKILL leaves its socket behind
    running munged || runuser -u munge -- munged --force
}

memory_mb() {
    local total_mb
    total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    total_mb=$((total_mb * 9 / 10))
    echo $((total_mb < 16000 ? total_mb : 16000))
}

render_conf() {
    cat <<EOF
# Written by tests/slurm/start_cluster.sh
ClusterName=cleanclip
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may only restart once its old credential expired (default 120 s)
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# a requeued job becomes eligible cred_expire+1 s later, and then waits for a periodic
# pass of the main scheduler (default every 60 s; backfill skips passes when nothing changed)
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
# %n: the node's name; a slurmd per node
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ReturnToService=2
JobRequeue=1
# seconds between SIGTERM and SIGKILL when a job is cancelled or requeued
KillWait=5
EOF
    local i
    # each node has all the machine's CPUs and memory: a one-node job of two tasks runs on either
    for i in "${!NODES[@]}"; do
        echo "NodeName=${NODES[i]} NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=$((FIRST_PORT + i))" \
            "CPUs=$(nproc) RealMemory=$(memory_mb) State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
}

# Writes slurm.conf; when it changed, running daemons are stopped so they pick it up.
write_conf() {
    local new
    new=$(render_conf)
    [[ -f $CONF && $(cat "$CONF") == "$new" ]] && return 0
    install -d /etc/slurm
    printf '%s\n' "$new" >"$CONF"
    "$(dirname "$0")/stop_cluster.sh"
}

start_slurm() {
    local node
    install -d -m 755 /var/spool/slurmctld /var/log/slurm
    # -c: forget jobs from an earlier life; after a SIGKILL the saved state can hold
    # finished jobs as RUNNING, which would keep the node's CPUs allocated forever
    running slurmctld || slurmctld -c
    for node in "${NODES[@]}"; do
        install -d -m 755 "/var/spool/slurmd/$node"
        slurmd_running "$node" || slurmd -N "$node"
    done
}

node_state() {
    sinfo -h -o %t -n "$1" 2>/dev/null || true
}

wait_for_node() {
    local state deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        state=$(node_state "$1")
        case $state in
            idle | mix | alloc) return 0 ;;
            down | drain | drng) scontrol update NodeName="$1" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    echo "start_cluster.sh: node $1 not ready after ${WAIT_S}s (state: '${state:-none}');" \
        "see /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd-$1.log" >&2
    return 1
}

if [[ $EUID -eq 0 ]]; then
    install_packages
    start_munge
    resolve_nodes
    write_conf
    start_slurm
else
    echo "start_cluster.sh: not root, so only waiting for a cluster started by root" >&2
fi
for node in "${NODES[@]}"; do
    wait_for_node "$node" || exit 1
done
echo "slurm cluster up: $(sinfo -h -N -o '%N %t' | paste -sd ' ')"
