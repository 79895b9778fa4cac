#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs redis-server when it is missing
# (Debian/Ubuntu; the Redis tests start their own private servers on free ports), then runs
# every test. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: installing redis-server (the Redis tests need it; Redis 6.2 or later)"
  ./scripts/apt-install.sh redis-server
fi

# Unit tests, then the integration suite (doc tests: none; the binary holds no tests).
cargo test --lib --tests "$@"
