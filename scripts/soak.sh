#!/usr/bin/env bash
# The soak (benches/soak.rs): 1,000,000 jobs through the embedded store and through PostgreSQL
# while worker processes are SIGKILLed at random, then an accounting of every job (enqueued =
# succeeded + dead, nothing missing, every result the job's own). Bounded: each backend must
# finish within MAX_SECS or fails. Slow, so not part of scripts/test.sh; docs/RELIABILITY.md
# records the latest figures.
#
#   SOAK_BACKENDS  backends to run, space-separated (default: "embedded postgres")
#   JOBS           jobs per backend (default 1000000)
#   WORKERS        worker processes (default 3)
#   KILL_EVERY     seconds between kills, a random draw from LO-HI (default 2-6; 0: no kills)
#   MAX_SECS       hard bound per backend, accounting included (default 1200)
#   SEED           the kill schedule's seed (default: from the clock; printed)
#   CONCURRENCY, LEASE_MS   slots per worker (4) and lease (2000 ms)
#   NETSCRIPT_TEST_POSTGRES_URL  the PostgreSQL server (default: the local service)
#   CARGO_TARGET_DIR            where to build (default target/)
#
# Prints each backend's progress on stderr, then one summary line and one JSON line per
# backend; exits non-zero if any backend failed its accounting or its time bound.
set -euo pipefail
cd "$(dirname "$0")/.."

backends=${SOAK_BACKENDS:-embedded postgres}
export JOBS=${JOBS:-1000000} WORKERS=${WORKERS:-3} KILL_EVERY=${KILL_EVERY:-2-6} MAX_SECS=${MAX_SECS:-1200}

if [[ " $backends " == *" postgres "* ]]; then
  ./scripts/services.sh
fi

echo "==> building benches/soak.rs (release)"
# Built once and run directly: both backends run the same build, even if the sources change
# meanwhile.
exe=$(cargo bench --all-features --bench soak --no-run --message-format=json \
  | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -n 1)
if [[ -z "$exe" || ! -x "$exe" ]]; then
  echo "could not find the soak executable cargo built" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
echo "==> $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')\
$(git status --porcelain 2>/dev/null | grep -q . && echo ' (uncommitted changes)'), load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
for backend in $backends; do
  echo "==> soak on $backend: JOBS=$JOBS WORKERS=$WORKERS KILL_EVERY=$KILL_EVERY MAX_SECS=$MAX_SECS"
  # The bench enforces MAX_SECS itself; the outer timeout only catches a hung process.
  if ! timeout --kill-after=30 $((MAX_SECS + 120)) \
      "$exe" "$backend" | tee -a "$log"; then
    status=1
  fi
done

echo
echo "==> summary"
grep -E '^(soak |\{)' "$log" || true
exit $status
