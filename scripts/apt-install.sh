#!/usr/bin/env bash
# Installs Debian packages for the test and cluster scripts, packages only: no service they
# carry (redis-server, nginx) is started on the machine's own ports. Usage:
#   scripts/apt-install.sh <package>...
# Exits 1 with the list to install by hand where there is no apt-get.
set -euo pipefail

if ! command -v apt-get >/dev/null 2>&1; then
  echo "please install with your package manager: $*" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing $* (Debian packages)" >&2
policy=/usr/sbin/policy-rc.d
placed=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  placed=1
fi
trap '[ -z "$placed" ] || $sudo rm -f "$policy"' EXIT
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
