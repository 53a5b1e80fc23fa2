#!/usr/bin/env bash
# The whole test suite, set-up included: what the README tells you to run, and what
# .ci/run runs after formatting and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# The OpenAPI test checks the document with a standard validator (Python).
if ! python3 -c "import openapi_spec_validator" >/dev/null 2>&1; then
  echo "==> installing openapi-spec-validator (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator
fi

# The backend tests use real PostgreSQL, Redis and RabbitMQ servers: start any that is down.
./scripts/services.sh

cargo test --workspace --all-features "$@"
