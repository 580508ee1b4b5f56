#!/usr/bin/env bash
# Start a real single-node Slurm on this machine (controller and compute node on localhost), for the Slurm
# executor of cfl-grid (cfl_timm/grid) and its smoke test. Idempotent: a second call finds everything running and
# only waits for the node to be ready.
#
# Needs root and a Debian-like system. Installs the Debian packages slurm-wlm and munge when sbatch is missing,
# creates a munge key if there is none, starts munged as the munge user, writes a one-node slurm.conf
# (SlurmUser=root, ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, NodeName=<hostname> CPUs=<nproc>,
# no accounting) unless a slurm.conf not written by this script exists, then starts slurmctld and slurmd and
# waits until the node accepts jobs.
#
# Exit codes: 0 ready; 3 cannot run here (not root, no apt-get, foreign slurm.conf); 1 failed to start.
set -euo pipefail

MARKER='# written by bench/slurm/start_local_slurm.sh'
CONF=/etc/slurm/slurm.conf
WAIT_S=${SLURM_START_TIMEOUT:-90}

log() { echo "[start_local_slurm] $*" >&2; }
cannot() { log "cannot start a local Slurm here: $*"; exit 3; }

[ "$(id -u)" -eq 0 ] || cannot "needs root (got uid $(id -u))"

if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || cannot "sbatch/slurmctld/munged missing and no apt-get to install slurm-wlm and munge"
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q slurm-wlm munge >/dev/null
fi

# --- munge: a key readable only by the munge user, the daemon running as that user
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating a munge key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged as munge"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || { log "munged did not come up"; exit 1; }
fi

# --- slurm.conf for this host
HOST=$(hostname -s)
CPUS=$(nproc)
if [ -f "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
    cannot "$CONF exists and was not written by this script (a real cluster?); not touching it"
fi
NEW_CONF=$(cat <<EOF
$MARKER
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    log "writing $CONF (node $HOST, $CPUS CPUs)"
    install -d -m 0755 /etc/slurm
    printf '%s\n' "$NEW_CONF" > "$CONF.tmp" && mv "$CONF.tmp" "$CONF"
    CHANGED=1
fi
install -d -m 0755 /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$CHANGED" -eq 1 ] && running /run/slurmctld.pid; then
    log "configuration changed: reconfiguring"
    scontrol reconfigure || true
fi
if ! running /run/slurmctld.pid; then
    log "starting slurmctld"
    slurmctld
fi
if ! running /run/slurmd.pid; then
    log "starting slurmd"
    slurmd
fi

# --- wait until the node takes jobs
deadline=$((SECONDS + WAIT_S))
while :; do
    state=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "node $HOST not ready after ${WAIT_S} s (state '${state:-none}'); see /var/log/slurm/"
        exit 1
    fi
    sleep 1
done
log "Slurm ready: node $HOST ($state), partition debug"
