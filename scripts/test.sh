#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs redis-server when it is missing
# (Debian/Ubuntu; the Redis tests start their own private servers on free ports), then runs
# every test. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "test.sh: installing redis-server (the Redis tests need it)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  else
    echo "test.sh: the tests need redis-server (Redis 6.2 or later) on PATH; install it, e.g." >&2
    echo "  Debian/Ubuntu: apt-get install redis-server    macOS: brew install redis" >&2
    exit 1
  fi
fi

# Unit tests, then the integration suite (doc tests: none; the binary holds no tests).
cargo test --lib --tests "$@"
