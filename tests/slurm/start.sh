#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/test_slurm.py: slurmctld and slurmd from
# Debian's slurm-wlm, no authentication daemon (auth/none: a test cluster only), every file
# under one state folder. Idempotent: a cluster already answering is left as it is.
#
#   bash tests/slurm/start.sh [STATE_DIR]      # default /tmp/hpsearch-slurm
#   export SLURM_CONF=STATE_DIR/slurm.conf      # what sbatch, squeue and the test read
set -euo pipefail
state=${1:-/tmp/hpsearch-slurm}
export SLURM_CONF=$state/slurm.conf
if command -v scontrol >/dev/null && [ -f "$SLURM_CONF" ] && timeout 5 scontrol ping 2>/dev/null | grep -q UP; then
  echo "slurm: already up ($SLURM_CONF)"
  exit 0
fi
for tool in slurmctld slurmd sbatch; do
  command -v "$tool" >/dev/null || { echo "slurm: $tool not found (apt-get install slurm-wlm)" >&2; exit 1; }
done
mkdir -p "$state/ctld" "$state/d" "$state/log"
node=$(hostname -s)
cpus=$(nproc)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat > "$SLURM_CONF" <<CONF
ClusterName=hpsearch-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
KillWait=10
MinJobAge=600
SchedulerType=sched/backfill
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; then
    echo "slurm: up, node $node with $cpus CPUs ($SLURM_CONF)"
    exit 0
  fi
  sleep 0.5
done
echo "slurm: the node did not come up; logs in $state/log" >&2
sinfo >&2 || true
exit 1
