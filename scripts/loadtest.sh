#!/usr/bin/env bash
# Load-test a tracknum deployment and check every number it hands out (the `loadtest` tool,
# in loadtest/, built in release mode). Usage:
#   scripts/loadtest.sh <URL> [options]        e.g. scripts/loadtest.sh https://my-app.fly.dev -d 30s -c 32
#   scripts/loadtest.sh --help                 every option
# LOADTEST_BIN=path/to/loadtest uses a binary already built instead of `cargo run --release`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
  echo "usage: scripts/loadtest.sh <URL> [options]   (scripts/loadtest.sh --help lists them)" >&2
  exit 2
fi
if [ -n "${LOADTEST_BIN:-}" ]; then
  exec "$LOADTEST_BIN" "$@"
fi
exec cargo run --quiet --release -p loadtest -- "$@"
