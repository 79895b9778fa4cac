#!/usr/bin/env bash
# The hot-path ratio with API keys and rate limits on: runs ../shared/bench/ratio.sh unchanged,
# with tracknum started with a keys file and a per-key rate limit too high to refuse anything
# (so every bucket check runs), and wrk and curl sending the key on every request (shims first on
# PATH add the header for both servers; the ceiling ignores it).
#
#   scripts/bench-guarded.sh [ratio.sh options...] [-- extra tracknum flags...]
#
# Build first: cargo build --release
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ratio=${RATIO_SH:-$here/../shared/bench/ratio.sh}
[ -x "$ratio" ] || [ -f "$ratio" ] || { echo "bench-guarded.sh: no ratio.sh at $ratio"; exit 2; }
real_wrk=$(command -v wrk) || { echo "bench-guarded.sh: wrk is needed (apt-get install wrk)"; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "bench:sha256:$(printf %s "$key" | sha256sum | cut -d' ' -f1)" > "$work/api-keys"
mkdir "$work/bin"
cat > "$work/bin/wrk" <<SHIM
#!/usr/bin/env bash
exec "$real_wrk" -H "Authorization: Bearer $key" "\$@"
SHIM
real_curl=$(command -v curl)
cat > "$work/bin/curl" <<SHIM
#!/usr/bin/env bash
exec "$real_curl" -H "Authorization: Bearer $key" "\$@"
SHIM
chmod +x "$work/bin/wrk" "$work/bin/curl"

# ratio.sh's own options come first; everything after -- goes to tracknum.
opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
cd "$here"
PATH="$work/bin:$PATH" bash "$ratio" "${opts[@]}" -- \
  --api-keys-file "$work/api-keys" --rate-limit 10000000 --rate-burst 10000000 "$@"
