#!/usr/bin/env bash
# A real one-node Slurm cluster on loopback for the sweep tests (Debian, as root, no systemd):
# munge, MariaDB + slurmdbd (accounting: submitit reads job states from sacct, so cancelled and
# timed-out jobs are seen), slurmctld and slurmd, all started by hand with PID files that
# .ci/slurm-down.sh uses to stop them. Prints "slurm: ready" when a batch job has run.
#   bash .ci/slurm-up.sh        (then BENCH_SLURM=1 python -m pytest tests/test_slurm.py)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "slurm: not root, not started"; exit 3; }
command -v apt-get >/dev/null || { echo "slurm: no apt-get, not started"; exit 3; }

DB=${BENCH_SLURM_DB:-/opt/bench-slurm-db}   # MariaDB + slurmdbd unpacked here (not installed)
LOG=/var/log/slurm
HOST=$(hostname -s)
export DEBIAN_FRONTEND=noninteractive

running() {  # pid file: whether its process is alive (a second bring-up reuses the daemons)
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

until_ok() {  # what, seconds, command...: poll every 0.1 s
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "slurm: timed out waiting for $what" >&2; exit 1
}

# 1. packages: Slurm and munge installed; the database side unpacked into $DB, which keeps
#    MariaDB's maintainer scripts and system folders out of the way.
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
if [ ! -x "$DB/usr/sbin/slurmdbd" ]; then
  debs=$(mktemp -d) && chmod 777 "$debs"
  (cd "$debs" && apt-get download -qq slurmdbd slurm-wlm-mysql-plugin mariadb-server-core \
      mariadb-client-core libmariadb3 libaio1 liburing2)
  mkdir -p "$DB"
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$DB"; done
  rm -rf "$debs"
fi
mkdir -p $LOG /etc/slurm /var/spool/slurmctld /var/spool/slurmd

# 2. munge (runs as user munge; needs its run folder and a key)
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
if ! running /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged
fi
until_ok munged 10 sh -c 'munge -n | unmunge'

# 3. accounting: MariaDB on 127.0.0.1, then slurmdbd
export LD_LIBRARY_PATH=$DB/usr/lib/x86_64-linux-gnu
data=/var/spool/bench-slurm-mysql
mkdir -p $data /run/mysqld
[ -d $data/mysql ] || "$DB/usr/bin/mariadb-install-db" --no-defaults --basedir="$DB/usr" --datadir=$data \
    --user=root --auth-root-authentication-method=normal --skip-test-db >$LOG/mariadb-install.log 2>&1
if ! running /run/mysqld/mysqld.pid; then  # (not `a || b &`: that subshell would hold stdout)
  setsid "$DB/usr/sbin/mariadbd" --no-defaults --basedir="$DB/usr" --datadir=$data --user=root \
      --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 \
      --port=3306 --log-error=$LOG/mariadb.log --innodb-buffer-pool-size=128M </dev/null >/dev/null 2>&1 &
fi
sql() { "$DB/usr/bin/mariadb" --no-defaults -S /run/mysqld/mysqld.sock -uroot -e "$1"; }
until_ok mariadbd 60 sql 'select 1'
sql "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'bench';
     CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'bench';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=bench
StorageLoc=slurm_acct_db
PluginDir=/usr/lib/x86_64-linux-gnu/slurm-wlm:$DB/usr/lib/x86_64-linux-gnu/slurm-wlm
EOF
chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a readable one
running /run/slurmdbd.pid || "$DB/usr/sbin/slurmdbd"
until_ok slurmdbd 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'

# 4. the cluster: the node line as slurmd sees the hardware, memory at 90% so the node is not
#    refused; fast scheduling, short kill waits and credential lifetimes so cancels and
#    timeouts show in seconds, not minutes.
node=$(slurmd -C | head -1 | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^RealMemory=/) {
  split($i, a, "="); $i = "RealMemory=" int(a[2] * 0.9)}; print}')
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=bench
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=30
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
${node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
running /run/slurmctld.pid || slurmctld
until_ok slurmctld 30 scontrol ping
running /run/slurmd.pid || slurmd
until_ok "an idle node" 60 sh -c '[ "$(sinfo -h -N -o %t)" = idle ]'
# the first batch job after slurmctld starts waits for a scheduling pass: run one now
job=$(sbatch --parsable -o /dev/null -J warmup --wrap true)
until_ok "the warm-up job" 60 sh -c "scontrol -o show job $job | grep -q JobState=COMPLETED"
echo "slurm: ready"
