#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the cluster tests (tests/cluster/test_slurm_cluster.py).
#
#   scripts/local-slurm.sh start   install (apt) if needed, configure and start munge, MariaDB,
#                                  slurmdbd, slurmctld and slurmd; idempotent
#   scripts/local-slurm.sh stop    cancel jobs, stop the daemons by their recorded PIDs
#   scripts/local-slurm.sh status  exit 0 when the node accepts jobs
#   scripts/local-slurm.sh start-multinode
#                                  start as above, plus two more nodes, kd-n1 and kd-n2: each a
#                                  slurmd in a network namespace of its own (and a UTS namespace:
#                                  its own hostname) with its own address on a private bridge, in
#                                  partition `multinode`: a 2-node cluster on one machine; idempotent
#   scripts/local-slurm.sh stop-multinode
#                                  remove those two nodes, their namespaces and the bridge again
#                                  (`stop` removes them too)
#
# Partitions like Northeastern's Discovery (short, debug, express, long, gpu 8 h, multigpu 24 h),
# fake GPUs with Discovery's type names (2 x v100-sxm2, 2 x a100) backed by char devices, and
# accounting through slurmdbd so that sacct works (the Snakemake Slurm plugin polls it).
# The node claims 64 CPUs and 500 GB (SlurmdParameters=config_overrides) so that the profile's
# Discovery-sized requests fit. Needs root and Debian's packages. State, config, logs and PID files live in $LOCAL_SLURM_DIR
# (default /tmp/kdsweep-slurm); /etc/slurm/*.conf are symlinks to it.
#
# The multi-node mode: bridge kdbr0 at 10.203.0.1/24 on this machine; namespaces kd-n1 and kd-n2
# with one end of a veth pair each (10.203.0.11, 10.203.0.12) and no route out: traffic stays
# between this machine's bridge address and the namespaces. Each namespace has its own
# /etc/hosts (/etc/netns/<ns>/hosts, mounted over /etc/hosts for its slurmd) where kd-n1,
# kd-n2 and this machine's name (slurmctld's host) resolve to their bridge addresses, as on a
# real cluster: a node's hostname is its address, so torchrun's rendezvous and gloo bind the
# bridge address without any setting. slurmctld (on this machine, listening on all addresses)
# and this machine's slurmd restart once when the nodes are added or removed (Slurm 22.05 cannot
# add nodes by reconfiguring); start the mode before submitting jobs (running jobs through such
# a restart is not tested). The slurmds of kd-n1/kd-n2 are not started with `ip netns exec`: it
# remounts /sys, which hides the cgroup mounts slurmd needs.
set -euo pipefail
BASE=${LOCAL_SLURM_DIR:-/tmp/kdsweep-slurm}
ACCOUNT=${LOCAL_SLURM_ACCOUNT:-kdsweep}
PKGS="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
BRIDGE=kdbr0
NET=10.203.0
MNODES="kd-n1 kd-n2"  # kd-nI has address $NET.1I
MARKER="$BASE/etc/multinode"  # present while the multi-node mode is on

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
node_ready() { sinfo -h -n "${1:-$(node)}" -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'; }
maddr() { echo "$NET.1${1#kd-n}"; }  # maddr kd-n1 -> 10.203.0.11

install_packages() {
  local missing="" p
  for p in $PKGS ${EXTRA_PKGS:-}; do
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
# Single-node cluster with partitions like Northeastern's Discovery (kdsweep tests)
ClusterName=kdsweeptest
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
SlurmdPidFile=$BASE/run/slurmd-%n.pid
StateSaveLocation=$BASE/state/ctld
SlurmdSpoolDir=$BASE/state/d-%n
SlurmctldLogFile=$BASE/logs/slurmctld.log
SlurmdLogFile=$BASE/logs/slurmd-%n.log
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
  if [ -e "$MARKER" ]; then  # the multi-node mode: two nodes behind the bridge, 2 fake V100s each
    local m
    for m in $MNODES; do
      echo "NodeName=$m NodeAddr=$(maddr "$m") NodeHostname=$m CPUs=64 RealMemory=512000 Gres=gpu:v100-sxm2:2 State=UNKNOWN"
    done >> "$BASE/etc/slurm.conf"
    echo "PartitionName=multinode Nodes=${MNODES// /,} MaxTime=1-00:00:00 DefaultTime=01:00:00 State=UP" \
      >> "$BASE/etc/slurm.conf"
    echo "NodeName=${MNODES// /,} Name=gpu Type=v100-sxm2 File=$BASE/fakegpu/nvidia[0-1]" >> "$BASE/etc/gres.conf"
  fi
  cat > "$BASE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$BASE/logs/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=kdsweep_slurm_acct
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
  mysql --socket=/run/mysqld/mysqld.sock -e "CREATE DATABASE IF NOT EXISTS kdsweep_slurm_acct;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON kdsweep_slurm_acct.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
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
  alive "$BASE/run/slurmd-$(node).pid" || { log "starting slurmd"; slurmd; }
  for _ in $(seq 1 60); do
    node_ready && break
    sinfo -h -n "$(node)" -o '%T' 2>/dev/null | grep -qE '^(drain|down|inval)' \
      && scontrol update nodename="$(node)" state=resume 2>/dev/null || true
    sleep 0.5
  done
  node_ready || { log "node $(node) not usable; see $BASE/logs/slurmd-$(node).log"; exit 1; }
  wait_for 30 sacctmgr -n show cluster format=cluster%-30 || true
  sacctmgr -n show cluster format=cluster%-30 | grep -qw kdsweeptest || sacctmgr -i add cluster kdsweeptest >/dev/null
  sacctmgr -n show account "$ACCOUNT" format=account%-30 | grep -qw "$ACCOUNT" \
    || sacctmgr -i add account "$ACCOUNT" Description=kdsweep Organization=kdsweep >/dev/null
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
  stop_multinode_slurmds
  stop_pidfile slurmd "$BASE/run/slurmd-$(node).pid"
  stop_pidfile slurmd "$BASE/run/slurmd.pid"  # started by an older version of this script
  stop_pidfile slurmctld "$BASE/run/slurmctld.pid"
  stop_pidfile slurmdbd "$BASE/run/slurmdbd.pid"
  stop_pidfile mariadbd "$BASE/run/mariadb.pid"
  stop_pidfile munged "$BASE/run/munged.pid"
}

# --- the multi-node mode ---------------------------------------------------------------------

network_up() {
  local m a o
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  [[ "$(ip addr show dev "$BRIDGE")" == *"inet $NET.1/24"* ]] || ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for m in $MNODES; do
    a=$(maddr "$m")
    [ -e "/run/netns/$m" ] || ip netns add "$m"
    if ! ip link show "v$m" >/dev/null 2>&1; then
      ip link add "v$m" type veth peer name eth0 netns "$m"
      ip link set "v$m" master "$BRIDGE"
    fi
    ip link set "v$m" up
    ip -n "$m" link set lo up
    [[ "$(ip -n "$m" addr show dev eth0)" == *"inet $a/24"* ]] || ip -n "$m" addr add "$a/24" dev eth0
    ip -n "$m" link set eth0 up  # no default route: only the bridge's /24 is reachable
    mkdir -p "/etc/netns/$m"
    {
      echo "127.0.0.1 localhost"
      echo "$NET.1 $(node)"
      for o in $MNODES; do echo "$(maddr "$o") $o"; done
    } > "/etc/netns/$m/hosts"
  done
}

network_down() {
  local m
  for m in $MNODES; do
    ip link del "v$m" 2>/dev/null || true
    ip netns del "$m" 2>/dev/null || true
    rm -rf "/etc/netns/$m"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

restart_ctld() {  # slurmctld and this machine's slurmd reread a changed node list
  stop_pidfile slurmd "$BASE/run/slurmd-$(node).pid"
  stop_pidfile slurmctld "$BASE/run/slurmctld.pid"
  start_daemons
}

stop_multinode_slurmds() {
  local m
  for m in $MNODES; do stop_pidfile "slurmd $m" "$BASE/run/slurmd-$m.pid"; done
}

start_multinode() {
  command -v unshare >/dev/null || { log "needs unshare (util-linux)"; exit 1; }
  local m
  mkdir -p "$BASE/etc"
  touch "$MARKER"
  network_up
  write_config
  if alive "$BASE/run/slurmctld.pid" && ! scontrol show node kd-n1 >/dev/null 2>&1; then
    log "restarting slurmctld: it does not know the nodes ${MNODES// /,} yet"
    restart_ctld
  else
    start_daemons
  fi
  for m in $MNODES; do
    alive "$BASE/run/slurmd-$m.pid" && continue
    log "starting slurmd $m in network namespace $m ($(maddr "$m"))"
    # The node's network namespace, plus a UTS namespace (its own hostname, which torchrun and
    # gloo resolve) and a mount namespace (its own /etc/hosts); jobs inherit all three.
    nsenter --net="/run/netns/$m" unshare --uts --mount --propagation slave \
      sh -c "mount --bind /etc/netns/$m/hosts /etc/hosts && hostname $m && exec slurmd -N $m"
  done
  for m in $MNODES; do
    for _ in $(seq 1 60); do
      node_ready "$m" && break
      sinfo -h -n "$m" -o '%T' 2>/dev/null | grep -qE '^(drain|down|inval)' \
        && scontrol update nodename="$m" state=resume 2>/dev/null || true
      sleep 0.5
    done
    node_ready "$m" || { log "node $m not usable; see $BASE/logs/slurmd-$m.log"; exit 1; }
  done
  log "ready: partition multinode, nodes ${MNODES// /,} ($NET.11-12 on bridge $BRIDGE)"
  sinfo -p multinode -o '%P %a %l %D %T %N %G' >&2
}

stop_multinode() {
  if [ -e "$MARKER" ] && alive "$BASE/run/slurmctld.pid"; then
    local jobs; jobs=$(squeue -h -p multinode -o %i 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$jobs" ] || { log "cancelling jobs: $(echo $jobs)"; scancel $jobs 2>/dev/null || true; }
    for _ in $(seq 1 90); do [ -z "$(squeue -h -p multinode -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  stop_multinode_slurmds
  if [ -e "$MARKER" ]; then
    rm -f "$MARKER"
    write_config
    if alive "$BASE/run/slurmctld.pid"; then
      log "restarting slurmctld without the nodes ${MNODES// /,}"
      restart_ctld
    fi
  fi
  network_down
}

[ "$(id -u)" = 0 ] || { echo "local-slurm.sh: must run as root" >&2; exit 1; }
case "${1:-}" in
  start) install_packages; write_config; start_daemons ;;
  stop) stop_daemons; rm -f "$MARKER"; network_down ;;
  status) node_ready ;;
  start-multinode)
    command -v ip >/dev/null || EXTRA_PKGS="iproute2"
    install_packages
    start_multinode
    ;;
  stop-multinode) stop_multinode ;;
  *) echo "usage: $0 start|stop|status|start-multinode|stop-multinode" >&2; exit 2 ;;
esac
