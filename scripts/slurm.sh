#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the Slurm executor's tests (and for trying
# `harness run --executor slurm` without a cluster).
#
#   scripts/slurm.sh up      install slurm-wlm + munge from the Debian packages if missing (root),
#                            write a one-node config, start munged, slurmctld and slurmd, and wait
#                            until the node is idle. Idempotent: a running cluster is left alone.
#   scripts/slurm.sh down    stop the daemons this script started (by their pid files).
#   scripts/slurm.sh status  sinfo.
#
# Containers usually lack systemd and delegated cgroups, so the config uses proctrack/linuxproc,
# task/none and no accounting database (jobs are read back through squeue/scontrol).
set -euo pipefail

CONF_DIR=/etc/slurm
STATE=/var/lib/kd-harness-slurm
LOGS=/var/log/slurm

say() { echo "slurm.sh: $*" >&2; }

node_up() {
    # The node answers and is usable (idle, mixed or allocated; not down or drained).
    local s
    s=$(timeout 10 sinfo -h -N -o '%T' 2>/dev/null | head -1) || return 1
    [[ $s == idle* || $s == mixed* || $s == allocated* ]]
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    if [[ $(id -u) != 0 ]]; then
        say "Slurm is not installed and installing it needs root (apt-get install slurm-wlm munge)"
        return 1
    fi
    say "installing slurm-wlm and munge from the Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    local pkgs=(slurm-wlm munge)
    if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/tmp/kd-harness-slurm-apt.log 2>&1; then
        apt-get update -q >>/tmp/kd-harness-slurm-apt.log 2>&1
        apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>/tmp/kd-harness-slurm-apt.log 2>&1 || {
            tail -20 /tmp/kd-harness-slurm-apt.log >&2
            return 1
        }
    fi
}

write_config() {
    local host node
    host=$(hostname -s)
    # The node line as slurmd sees this machine (CPUs, sockets, cores, threads); memory is left out
    # so that a slightly different reading later cannot drain the node.
    node=$(slurmd -C | head -1 | sed -e 's/ RealMemory=[0-9]*//')
    [[ $node == NodeName=* ]] || { say "unexpected 'slurmd -C' output: $node"; return 1; }
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
    cat >"$CONF_DIR/slurm.conf.new" <<EOF
# Written by kd-harness scripts/slurm.sh: a single-node cluster on $host.
ClusterName=kdharness
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
ReturnToService=2
# Finished jobs stay visible to scontrol for 10 minutes (there is no accounting database).
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=2
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
    # slurmd 22.05 initialises a cgroup plugin even when no cgroup plugin is selected; nothing is
    # constrained (ConstrainCores etc. default to no), it only has to find the hierarchy.
    printf 'CgroupPlugin=autodetect\nCgroupMountpoint=/sys/fs/cgroup\nIgnoreSystemd=yes\n' >"$CONF_DIR/cgroup.conf"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    if [[ -S /run/munge/munge.socket.2 ]] && timeout 5 munge -n </dev/null | timeout 5 unmunge >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        timeout 5 munge -n </dev/null | timeout 5 unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    say "munged did not start"
    return 1
}

up() {
    if command -v sinfo >/dev/null && node_up; then
        say "cluster already up: $(sinfo -h -N -o '%N %T %c CPUs')"
        return 0
    fi
    install
    write_config
    start_munge
    alive "$STATE/slurmctld.pid" || slurmctld
    alive "$STATE/slurmd.pid" || slurmd
    for _ in $(seq 60); do
        if node_up; then
            say "cluster up: $(sinfo -h -N -o '%N %T %c CPUs')"
            return 0
        fi
        # A node that registered as down (e.g. after a config change) is resumed once.
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    say "the node did not become idle; see $LOGS/slurmctld.log and $LOGS/slurmd.log"
    sinfo -N -l >&2 || true
    tail -5 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
    return 1
}

down() {
    local f
    for f in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" /run/munge/munged.pid; do
        if alive "$f"; then kill "$(cat "$f")"; fi
    done
    say "stopped"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) sinfo -N -l ;;
    *)
        echo "usage: scripts/slurm.sh up|down|status" >&2
        exit 2
        ;;
esac
