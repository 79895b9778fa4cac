#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs redis-server and the filesystem tools
# when they are missing (Debian/Ubuntu; the Redis tests start their own private servers on free
# ports; the disk fault tests mount and freeze filesystems of their own, as root), then runs
# every test of the workspace. Also installs Chromium and chromedriver for the web page's
# browser tests. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: installing redis-server (the Redis tests need it; Redis 6.2 or later)"
  ./scripts/apt-install.sh redis-server
fi
if ! command -v redis-cli >/dev/null 2>&1; then
  echo "test.sh: installing redis-tools (the Redis Cluster tests create clusters with redis-cli)"
  ./scripts/apt-install.sh redis-tools
fi

# The disk fault tests mount a small tmpfs and an ext4 image on a loop device, and freeze it
# (they need root): mount, losetup, fsfreeze and mkfs.ext4.
missing=()
command -v losetup >/dev/null 2>&1 || missing+=(mount)
command -v fsfreeze >/dev/null 2>&1 || missing+=(util-linux)
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]} (the disk fault tests need them)"
  ./scripts/apt-install.sh "${missing[@]}"
fi

# The web page's browser tests (tests/api/browser.rs) drive headless Chromium through
# chromedriver, both from Debian.
browser=()
[ -x /usr/bin/chromium ] || browser+=(chromium)
[ -x /usr/bin/chromedriver ] || browser+=(chromium-driver)
if [ ${#browser[@]} -gt 0 ]; then
  echo "test.sh: installing ${browser[*]} (the web page's browser tests need them)"
  ./scripts/apt-install.sh "${browser[@]}"
fi

# Both packages of the workspace, tracknum and loadtest: unit tests, then the integration suites
# (doc tests: none; tracknum's binary holds no tests, loadtest's holds its unit tests).
cargo test --workspace --lib --tests "$@"
