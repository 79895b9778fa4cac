#!/usr/bin/env bash
# Writes a CSV import file of ROWS orders (default 1,000,000) to stdout: every order input plus
# an order id per row, realistic values, about 110 bytes a row (1,000,000 rows: 110 MB). For the import benchmark
# (scripts/bench-import.sh) and for trying the import API by hand:
#
#   scripts/import-file.sh 200000 > orders.csv
set -euo pipefail
rows=${1:-1000000}
case "$rows" in ''|*[!0-9]*) echo "usage: scripts/import-file.sh [ROWS]" >&2; exit 2 ;; esac
awk -v rows="$rows" 'BEGIN {
  print "order_id,origin_country_id,destination_country_id,weight,created_at,customer_id,customer_name,customer_slug"
  split("MY SG TH ID VN PH JP AU", country, " ")
  for (i = 0; i < rows; i++) {
    shop = i % 500
    printf "ORD-%09d,%s,%s,%d.%03d,2026-11-%02dT%02d:%02d:%02d+08:00,%08x-0000-4000-8000-%012x,Shop %d Ltd,shop-%d\n",
      i, country[i % 8 + 1], country[int(i / 8) % 8 + 1], i % 30 + 1, i % 1000,
      i % 28 + 1, i % 24, i % 60, int(i / 60) % 60, shop, shop, shop, shop
  }
}'
