#!/usr/bin/env bash
# Makes sure the servers the backend tests talk to are up: PostgreSQL (127.0.0.1:5432, trust
# auth, database `test`), Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672, guest/guest).
# Each one that does not answer is started with this machine's own start command, then waited
# for. Point the tests elsewhere with NETSCRIPT_TEST_POSTGRES_URL, NETSCRIPT_TEST_REDIS_URL and
# NETSCRIPT_TEST_AMQP_URL; then set NETSCRIPT_SKIP_SERVICES=1 to skip this script.
set -euo pipefail

[[ "${NETSCRIPT_SKIP_SERVICES:-}" == 1 ]] && exit 0

ensure_service() { # name, check command, start command
  local name=$1 check=$2 start=$3
  if bash -c "$check" >/dev/null 2>&1; then
    echo "==> $name is up"
    return 0
  fi
  echo "==> starting $name"
  bash -c "$start"
  for _ in $(seq 1 90); do
    bash -c "$check" >/dev/null 2>&1 && { echo "==> $name is up"; return 0; }
    sleep 1
  done
  echo "$name did not come up within 90 s" >&2
  return 1
}

ensure_service postgresql "pg_isready -q -h 127.0.0.1 -p 5432" \
  'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
ensure_service redis "redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG" \
  'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'
ensure_service rabbitmq "rabbitmq-diagnostics -q check_port_connectivity" \
  'rabbitmq-server -detached'
