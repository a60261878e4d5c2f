#!/usr/bin/env bash
# Stop what .ci/slurm-up.sh started, by the PIDs in their PID files (never by name):
# compute node, controller, accounting daemon, database, munge.
stop() {  # name, pid file
  local name=$1 file=$2 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "slurm: stopped $name ($pid)"
  fi
  rm -f "$file"
}
stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop slurmdbd /run/slurmdbd.pid
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
