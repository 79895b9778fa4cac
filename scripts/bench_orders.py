#!/usr/bin/env python3
"""Varied orders for the benchmarks, one request per line, for wrk scripts to replay.

Every order has all seven inputs, and each varies from order to order: both countries, the
weight, the order time (with its UTC offset, some with fractions), and the customer (id, name and
slug, one of 20,000 customers). The same SEED gives the same orders.

    bench_orders.py batches COUNT SIZE [SEED]   COUNT lines, each a POST body {"orders": [SIZE orders]}
    bench_orders.py queries COUNT [SEED]        COUNT lines, each the query of a GET /next-tracking-number
"""

import json
import random
import re
import sys
import urllib.parse
import uuid

COUNTRIES = "MY SG TH ID VN PH JP KR CN HK TW AU NZ IN US GB DE FR NL AE".split()
OFFSETS = ["+08:00", "+07:00", "+09:00", "+05:30", "+10:00", "+01:00", "-05:00", "Z"]
FIRST = "Blue Red Golden Swift Harbour Jade Lotus Eastern Northern Bright Urban Royal".split()
SECOND = "Box Parcel Courier Cargo Trading Express Goods Mart Logistics Supply Home Gear".split()
SUFFIX = ["", " Ltd", " Sdn Bhd", " Pte Ltd", " Co.", " Enterprise", " & Sons", " Group"]
CUSTOMERS = 20_000


def customer(number):
    """The id, name and slug of one customer: the same every time for the same number."""
    rng = random.Random(number)
    name = f"{rng.choice(FIRST)} {rng.choice(SECOND)} {number}{rng.choice(SUFFIX)}"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return str(uuid.UUID(int=rng.getrandbits(128), version=4)), name, slug


def orders(count, seed):
    rng = random.Random(seed)
    for _ in range(count):
        customer_id, name, slug = customer(rng.randrange(CUSTOMERS))
        fraction = rng.choice(["", f".{rng.randrange(1000):03d}", f".{rng.randrange(10**6):06d}"])
        created = (
            f"2026-{rng.randrange(9, 13):02d}-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:"
            f"{rng.randrange(60):02d}:{rng.randrange(60):02d}{fraction}{rng.choice(OFFSETS)}"
        )
        yield {
            "origin_country_id": rng.choice(COUNTRIES),
            "destination_country_id": rng.choice(COUNTRIES),
            "weight": rng.randrange(50, 30_000) / 1000,
            "created_at": created,
            "customer_id": customer_id,
            "customer_name": name,
            "customer_slug": slug,
        }


def main(args):
    out = sys.stdout
    if len(args) >= 3 and args[0] == "batches":
        count, size, seed = int(args[1]), int(args[2]), int(args[3]) if len(args) > 3 else 1
        stream = orders(count * size, seed)
        for _ in range(count):
            batch = [next(stream) for _ in range(size)]
            out.write(json.dumps({"orders": batch}, separators=(",", ":")) + "\n")
    elif len(args) >= 2 and args[0] == "queries":
        count, seed = int(args[1]), int(args[2]) if len(args) > 2 else 1
        for order in orders(count, seed):
            out.write(urllib.parse.urlencode(order, quote_via=urllib.parse.quote) + "\n")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
