#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests/test_slurm.py (and by hand).
#
#   bash tests/cluster/slurm.sh up     # install if missing, configure, start (idempotent)
#   bash tests/cluster/slurm.sh down   # stop the daemons by the pids in their pid files
#   bash tests/cluster/slurm.sh status # sinfo + the daemons' pids
#
# Debian 12 (slurm 22.05), run as root, no systemd needed: every daemon is started by hand,
# in order munged, mariadbd, slurmdbd, slurmctld, slurmd. Accounting goes through slurmdbd
# and MariaDB so that `sacct` (what snakemake-executor-plugin-slurm checks job status with)
# works. One node, on 127.0.0.1, with all this machine's CPUs and ~85% of its memory.
# `up` wipes the controller's StateSaveLocation before starting slurmctld (a clean queue,
# job ids from 1); the accounting database is kept. Settings (environment):
#   SLURM_TEST_ACCOUNT (bioaug), SLURM_TEST_PARTITION (debug), SLURM_TEST_CLUSTER (bioaug),
#   SLURM_TEST_APT_LOCK (a file to flock around apt-get, shared with other installers)
# This rewrites /etc/slurm/slurm.conf and slurmdbd.conf: only for throwaway (CI) machines.
set -euo pipefail

ACCOUNT=${SLURM_TEST_ACCOUNT:-bioaug}
PARTITION=${SLURM_TEST_PARTITION:-debug}
CLUSTER=${SLURM_TEST_CLUSTER:-bioaug}
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
ETC=/etc/slurm
RUN=/run/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
DB_PASS=bioaug-slurmdbd   # local-only MariaDB user for slurmdbd (socket, localhost)
MUNGE_PID=/run/munge/munged.pid
MYSQL_PID=/run/mysqld/mysqld.pid
DBD_PID=$RUN/slurmdbd.pid
CTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid

log() { echo "slurm.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

alive() { # alive PIDFILE: the pid file names a live process
    local pid
    [[ -s $1 ]] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

wait_for() { # wait_for SECONDS WHAT CMD...: retry CMD every 0.5 s
    local secs=$1 what=$2; shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.5
    done
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "apt-get not found: cannot install ${missing[*]}"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # One apt-get at a time with the test session's other installs: a flock on
    # $SLURM_TEST_APT_LOCK, held here only. (Held around the whole script it was inherited by
    # munged, which keeps it open: every later apt-get of the session waited for the cluster's end.)
    (
        if [[ -n ${SLURM_TEST_APT_LOCK:-} ]] && command -v flock >/dev/null; then flock 9; fi
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    ) 9>>"${SLURM_TEST_APT_LOCK:-/dev/null}"
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
    install -d -o slurm -g slurm -m 0755 "$ETC" "$RUN" "$STATE" "$SPOOL" "$LOGS"
    cat >"$ETC/slurm.conf" <<CONF
# Written by tests/cluster/slurm.sh: a one-node test cluster on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=300
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    cat >"$ETC/slurmdbd.conf" <<CONF
# Written by tests/cluster/slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$DBD_PID
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
    chown slurm:slurm "$ETC/slurmdbd.conf"
    chmod 0600 "$ETC/slurmdbd.conf"
    chmod 0644 "$ETC/slurm.conf"
}

start_munged() {
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        runuser -u munge -- /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
    fi
    alive "$MUNGE_PID" && { log "munged already running"; return 0; }
    runuser -u munge -- /usr/sbin/munged
    wait_for 20 munged sh -c 'munge -n | unmunge'
}

start_mariadbd() {
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    if ! alive "$MYSQL_PID"; then
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        fi
        setsid /usr/sbin/mariadbd --user=mysql --pid-file="$MYSQL_PID" \
            --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
            </dev/null >>"$LOGS/mariadbd.log" 2>&1 &
    else
        log "mariadbd already running"
    fi
    wait_for 60 mariadbd mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    wait_for 10 "mariadbd pid file" alive "$MYSQL_PID"
    mariadb --socket=/run/mysqld/mysqld.sock <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

start_slurmdbd() {
    if alive "$DBD_PID"; then log "slurmdbd already running"; else /usr/sbin/slurmdbd; fi
    wait_for 60 slurmdbd sacctmgr -n list cluster
    if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER" format=Cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    if alive "$CTLD_PID"; then
        log "slurmctld already running"
    else
        # A clean run: no jobs or node state left from an earlier bring-up.
        find "$STATE" -mindepth 1 -delete
        /usr/sbin/slurmctld
    fi
    wait_for 60 slurmctld sh -c 'scontrol ping | grep -q UP'
}

node_ready() { sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }

start_slurmd() {
    if alive "$SLURMD_PID"; then log "slurmd already running"; else /usr/sbin/slurmd; fi
    local end=$((SECONDS + 30))
    until node_ready || ((SECONDS >= end)); do sleep 0.5; done
    if ! node_ready; then
        # e.g. left DOWN by an unclean stop: resume it
        scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
        wait_for 30 "node $(hostname -s) to be idle" node_ready
    fi
}

add_account() {
    if [[ -z $(sacctmgr -n -P list account "$ACCOUNT" format=Account) ]]; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=tests Organization=tests >/dev/null
    fi
    if [[ -z $(sacctmgr -n -P list association cluster="$CLUSTER" account="$ACCOUNT" user=root format=User) ]]; then
        sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
    fi
}

up() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    install_packages
    write_config
    start_munged
    start_mariadbd
    start_slurmdbd
    start_slurmctld
    start_slurmd
    add_account
    log "up: cluster $CLUSTER, partition $PARTITION, account $ACCOUNT, node $(hostname -s) ($(nproc) CPUs)"
}

stop() { # stop NAME PIDFILE
    local pid
    if ! alive "$2"; then log "$1 not running"; rm -f "$2"; return 0; fi
    pid=$(tr -dc '0-9' <"$2")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then log "$1 ($pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" || true; fi
    rm -f "$2"
    log "stopped $1 ($pid)"
}

down() {
    stop slurmd "$SLURMD_PID"
    stop slurmctld "$CTLD_PID"
    stop slurmdbd "$DBD_PID"
    stop mariadbd "$MYSQL_PID"
    stop munged "$MUNGE_PID"
}

status() {
    local name file
    for name in munged:$MUNGE_PID mariadbd:$MYSQL_PID slurmdbd:$DBD_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
        file=${name#*:}
        if alive "$file"; then echo "${name%%:*} $(tr -dc '0-9' <"$file")"; else echo "${name%%:*} -"; fi
    done
    sinfo 2>/dev/null || true
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
