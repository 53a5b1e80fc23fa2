#!/usr/bin/env bash
# The whole test suite, set-up included: what the README tells you to run, and what
# .ci/run runs after formatting and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# The OpenAPI test checks the document with a standard validator, the metrics test parses
# /metrics with Prometheus's own parser (both Python).
if ! python3 -c "import openapi_spec_validator" >/dev/null 2>&1; then
  echo "==> installing openapi-spec-validator (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator
fi
if ! python3 -c "import prometheus_client" >/dev/null 2>&1; then
  echo "==> installing prometheus-client (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check prometheus-client
fi

# The backend tests use real PostgreSQL, Redis and RabbitMQ servers: start any that is down.
./scripts/services.sh

cargo test --workspace --all-features "$@"
FUZZ_EXAMPLES=50 FUZZ_CARGO_FLAGS="--workspace --all-features" ./scripts/fuzz-api.sh # property-based API fuzzing, docs/api-fuzzing.md
