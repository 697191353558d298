#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the cluster tests (tests/test_slurm_cluster.py).
#
#   scripts/local-slurm.sh start   install (apt) if needed, configure and start munge, MariaDB,
#                                  slurmdbd, slurmctld and slurmd; idempotent
#   scripts/local-slurm.sh stop    cancel jobs, stop the daemons by their recorded PIDs
#   scripts/local-slurm.sh status  exit 0 when the node accepts jobs
#
# Partitions like Northeastern's Discovery (short, debug, express, long, gpu 8 h, multigpu 24 h),
# fake GPUs with Discovery's type names (2 x v100-sxm2, 2 x a100) backed by char devices, and
# accounting through slurmdbd so that sacct works (the Snakemake Slurm plugin polls it).
# The node claims 64 CPUs and 500 GB (SlurmdParameters=config_overrides) so that the profile's
# Discovery-sized requests fit. Needs root and Debian's packages. State, config, logs and PID files live in $LOCAL_SLURM_DIR
# (default /tmp/kdflow-slurm); /etc/slurm/*.conf are symlinks to it.
set -euo pipefail
BASE=${LOCAL_SLURM_DIR:-/tmp/kdflow-slurm}
ACCOUNT=${LOCAL_SLURM_ACCOUNT:-kdflow}
PKGS="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"

log() { printf '[local-slurm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
alive() {  # alive PIDFILE: the process exists and is not a zombie
  local p; p=$(cat "$1" 2>/dev/null) || return 1; [ -n "$p" ] || return 1
  kill -0 "$p" 2>/dev/null && ! grep -qE '^[0-9]+ \(.*\) Z' "/proc/$p/stat" 2>/dev/null
}
wait_for() {  # wait_for SECONDS CMD...
  local t=$1; shift
  for _ in $(seq 1 $((t * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  return 1
}
stop_pidfile() {  # stop_pidfile NAME FILE: TERM, then KILL after 30 s
  local name=$1 f=$2 pid
  alive "$f" || return 0
  pid=$(cat "$f"); log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do alive "$f" || return 0; sleep 0.25; done
  log "$name still alive after 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
}
node() { hostname -s; }
node_ready() { sinfo -h -n "$(node)" -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'; }

install_packages() {
  local missing="" p
  for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-cache policy slurmctld 2>/dev/null | grep -q 'Candidate: [0-9]' || apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

write_config() {
  local n
  n=$(node)
  getent hosts "$n" >/dev/null || echo "127.0.0.1 $n" >> /etc/hosts
  mkdir -p "$BASE"/{etc,logs,run,state/ctld,state/d,fakegpu,mysql}
  for i in 0 1 2 3; do  # /dev/null clones: Slurm needs char devices; nothing opens them
    [ -c "$BASE/fakegpu/nvidia$i" ] || { rm -f "$BASE/fakegpu/nvidia$i"; mknod "$BASE/fakegpu/nvidia$i" c 1 3; }
  done
  cat > "$BASE/etc/slurm.conf" <<EOF
# Single-node cluster with partitions like Northeastern's Discovery (kdflow tests)
ClusterName=kdflowtest
SlurmctldHost=$n
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
ReturnToService=2
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
StateSaveLocation=$BASE/state/ctld
SlurmdSpoolDir=$BASE/state/d
SlurmctldLogFile=$BASE/logs/slurmctld.log
SlurmdLogFile=$BASE/logs/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
MinJobAge=300
KillWait=30
InactiveLimit=0
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu,gres/gpu:v100-sxm2,gres/gpu:a100
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
# The node advertises a Discovery GPU node's size (64 CPUs, 500 GB) whatever this machine has, so
# the profile's real requests fit unchanged; jobs then share the real cores.
SlurmdParameters=config_overrides
NodeName=$n CPUs=64 RealMemory=512000 Gres=gpu:v100-sxm2:2,gpu:a100:2 State=UNKNOWN
PartitionName=short    Nodes=$n Default=YES MaxTime=1-00:00:00 DefaultTime=01:00:00 State=UP
PartitionName=debug    Nodes=$n MaxTime=00:20:00 DefaultTime=00:10:00 State=UP
PartitionName=express  Nodes=$n MaxTime=01:00:00 DefaultTime=00:30:00 State=UP
PartitionName=long     Nodes=$n MaxTime=5-00:00:00 DefaultTime=01:00:00 State=UP
PartitionName=gpu      Nodes=$n MaxTime=08:00:00 DefaultTime=01:00:00 State=UP
PartitionName=multigpu Nodes=$n MaxTime=1-00:00:00 DefaultTime=01:00:00 State=UP
EOF
  cat > "$BASE/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$n Name=gpu Type=v100-sxm2 File=$BASE/fakegpu/nvidia[0-1]
NodeName=$n Name=gpu Type=a100 File=$BASE/fakegpu/nvidia[2-3]
EOF
  cat > "$BASE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$BASE/logs/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=kdflow_slurm_acct
StorageUser=slurm
StoragePass=slurmpw
EOF
  chmod 600 "$BASE/etc/slurmdbd.conf"
  mkdir -p /etc/slurm
  for f in slurm.conf gres.conf slurmdbd.conf; do ln -sfn "$BASE/etc/$f" "/etc/slurm/$f"; done
}

start_daemons() {
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if ! alive /run/munge/munged.pid; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    wait_for 10 munge -n || { log "munged did not come up"; exit 1; }
    ln -sfn /run/munge/munged.pid "$BASE/run/munged.pid"
  fi
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld "$BASE/mysql"
  ln -sfn "$BASE/mysql/mariadb.pid" "$BASE/run/mariadb.pid"
  if ! alive "$BASE/run/mariadb.pid"; then
    log "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --pid-file="$BASE/mysql/mariadb.pid" --socket=/run/mysqld/mysqld.sock \
      --log-error="$BASE/mysql/mariadb.log" --innodb-buffer-pool-size=256M </dev/null >/dev/null 2>&1 &
    wait_for 30 mysqladmin --socket=/run/mysqld/mysqld.sock ping || { log "mariadbd did not come up"; exit 1; }
  fi
  mysql --socket=/run/mysqld/mysqld.sock -e "CREATE DATABASE IF NOT EXISTS kdflow_slurm_acct;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON kdflow_slurm_acct.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  if ! alive "$BASE/run/slurmdbd.pid"; then
    log "starting slurmdbd"
    slurmdbd
    wait_for 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819' || { log "slurmdbd did not come up"; exit 1; }
  fi
  if ! alive "$BASE/run/slurmctld.pid"; then
    log "starting slurmctld"
    slurmctld
    wait_for 30 scontrol ping || { log "slurmctld did not come up; see $BASE/logs/slurmctld.log"; exit 1; }
  fi
  alive "$BASE/run/slurmd.pid" || { log "starting slurmd"; slurmd; }
  for _ in $(seq 1 60); do
    node_ready && break
    sinfo -h -n "$(node)" -o '%T' 2>/dev/null | grep -qE '^(drain|down|inval)' \
      && scontrol update nodename="$(node)" state=resume 2>/dev/null || true
    sleep 0.5
  done
  node_ready || { log "node $(node) not usable; see $BASE/logs/slurmd.log"; exit 1; }
  wait_for 30 sacctmgr -n show cluster format=cluster%-30 || true
  sacctmgr -n show cluster format=cluster%-30 | grep -qw kdflowtest || sacctmgr -i add cluster kdflowtest >/dev/null
  sacctmgr -n show account "$ACCOUNT" format=account%-30 | grep -qw "$ACCOUNT" \
    || sacctmgr -i add account "$ACCOUNT" Description=kdflow Organization=kdflow >/dev/null
  sacctmgr -n show assoc where user="$(id -un)" account="$ACCOUNT" format=user%-30 | grep -qw "$(id -un)" \
    || sacctmgr -i add user "$(id -un)" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
  log "ready: node $(node), account $ACCOUNT"
  sinfo -o '%P %a %l %D %T %N %G' >&2
}

stop_daemons() {
  if alive "$BASE/run/slurmctld.pid"; then
    local jobs; jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $(echo $jobs)"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 90); do [ -z "$(squeue -h -o %i -t R,CG,PD 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  stop_pidfile slurmd "$BASE/run/slurmd.pid"
  stop_pidfile slurmctld "$BASE/run/slurmctld.pid"
  stop_pidfile slurmdbd "$BASE/run/slurmdbd.pid"
  stop_pidfile mariadbd "$BASE/run/mariadb.pid"
  stop_pidfile munged "$BASE/run/munged.pid"
}

[ "$(id -u)" = 0 ] || { echo "local-slurm.sh: must run as root" >&2; exit 1; }
case "${1:-}" in
  start) install_packages; write_config; start_daemons ;;
  stop) stop_daemons ;;
  status) node_ready ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
