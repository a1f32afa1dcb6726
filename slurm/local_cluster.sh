#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (slurmctld + slurmd + munged, as root, no cgroups),
# for trying the sbatch templates and the submitit launcher, and for the `slurm` tests.
#
#   slurm/local_cluster.sh [start]   # install slurm-wlm + munge if missing, write slurm.conf, start, wait for idle
#   slurm/local_cluster.sh stop      # cancel this cluster's jobs, stop the daemons it started
#   slurm/local_cluster.sh status    # sinfo + squeue
#   eval "$(slurm/local_cluster.sh env)"   # export SLURM_CONF for sbatch/srun/squeue in this shell
#
# Idempotent: `start` on a running cluster only waits for the node. Everything lives under
# $SPARSE_SLURM_DIR (default /tmp/sparse_lightning_slurm); /etc/slurm is untouched (SLURM_CONF points
# clients and daemons at $SPARSE_SLURM_DIR/etc/slurm.conf). Job ids survive a stop/start (state is kept),
# so a run dir keyed on SLURM_JOB_ID is never reused by a later job.
# Partition `debug` (default): this machine (node name = `hostname -s`), all CPUs, all memory but 2 GB.
# Partition `gpu`: two 4-GPU nodes that are declared but never started, only for `sbatch --test-only -p gpu`
# of the GPU and multi-node templates. Ports: SPARSE_SLURM_PORT (slurmctld, default 6817) and +1 (slurmd).
# Needs root and apt-get (Debian 12: slurm-wlm 22.05, munge 0.5.15).
set -euo pipefail

D=${SPARSE_SLURM_DIR:-/tmp/sparse_lightning_slurm}
PORT=${SPARSE_SLURM_PORT:-6817}
CONF=$D/etc/slurm.conf
NODE=$(hostname -s)  # the node name is the hostname, so Lightning and Ray resolve SLURM_NODELIST
export SLURM_CONF=$CONF

say() { echo "local_cluster: $*" >&2; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    [[ $(id -u) -eq 0 ]] || { say "slurm-wlm/munge are missing and installing them needs root"; exit 3; }
    command -v apt-get >/dev/null || { say "slurm-wlm/munge are missing and there is no apt-get"; exit 3; }
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || { say "apt-get update failed"; exit 3; }
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || { say "apt-get install failed"; exit 3; }
}

write_conf() {
    mkdir -p "$D/etc" "$D/state" "$D/spool" "$D/log"
    local ncpu mem
    ncpu=$(nproc)
    mem=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 2048 ))
    cat > "$CONF.tmp" <<CONF
# Written by slurm/local_cluster.sh: this machine as one node, root daemons, no cgroups, no accounting.
ClusterName=local
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
GresTypes=gpu
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
KillWait=10
SuspendProgram=/bin/true
ResumeProgram=/bin/true
ResumeTimeout=30
SuspendTime=INFINITE
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
NodeName=$NODE CPUs=$ncpu RealMemory=$mem State=UNKNOWN
# Declared, never started (CLOUD = powered down): 2 GPU nodes so GPU and multi-node sbatch templates can be
# checked with "sbatch --test-only -p gpu". Never submit real jobs to this partition.
NodeName=gpu[1-2] NodeAddr=127.0.0.2 Port=$((PORT + 9)) CPUs=64 RealMemory=500000 Gres=gpu:4 State=CLOUD
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=gpu[1-2] MaxTime=INFINITE State=UP
CONF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged is already serving this machine: share it
    fi
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do
        if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
            cp /run/munge/munged.pid "$D/munged.pid"  # ours: `stop` ends it
            return
        fi
        sleep 0.1
    done
    say "munged does not answer"; exit 4
}

wait_idle() {
    for _ in $(seq 1 120); do
        local state
        state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
        case $state in
            idle|mix|alloc) return 0 ;;
            down*|drain*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    say "node $NODE is not idle after 60 s (see $D/log/slurmctld.log, $D/log/slurmd.log)"
    exit 5
}

start() {
    install_packages
    [[ $(id -u) -eq 0 ]] || { say "the daemons run as root here; run as root"; exit 3; }
    if ! alive "$D/slurmctld.pid" || ! alive "$D/slurmd.pid"; then
        write_conf
        start_munge
        alive "$D/slurmctld.pid" || /usr/sbin/slurmctld -i
        alive "$D/slurmd.pid" || /usr/sbin/slurmd
    fi
    wait_idle
    sinfo >&2
    echo "export SLURM_CONF=$CONF"
}

stop() {
    if alive "$D/slurmctld.pid"; then
        scancel --partition=debug 2>/dev/null || true  # SIGTERM, SIGKILL after KillWait
        for _ in $(seq 1 60); do [[ -z $(squeue -h -t R,CG 2>/dev/null) ]] && break; sleep 0.25; done
    fi
    local f pid
    for f in slurmd slurmctld munged; do
        alive "$D/$f.pid" || { rm -f "$D/$f.pid"; continue; }
        pid=$(cat "$D/$f.pid")
        kill "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        rm -f "$D/$f.pid"
    done
    say "stopped"
}

case ${1:-start} in
    start) start ;;
    stop) stop ;;
    status) sinfo; squeue ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) say "usage: $0 [start|stop|status|env]"; exit 2 ;;
esac
