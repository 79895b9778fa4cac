"""schemathesis hooks for scripts/fuzz.sh.

FUZZ_OPTIONAL_HEADERS (space-separated names) makes those response headers optional in the
description under test, for a build that does not send them yet. The description itself is not
changed, and every other check stays as strict as the description says.
"""

import os

import schemathesis

OPTIONAL = {name.lower() for name in os.environ.get("FUZZ_OPTIONAL_HEADERS", "").split()}


def _relax(node):
    if isinstance(node, dict):
        headers = node.get("headers")
        if isinstance(headers, dict):
            for name, header in headers.items():
                if name.lower() in OPTIONAL and isinstance(header, dict) and "$ref" not in header:
                    header["required"] = False
        for value in node.values():
            _relax(value)
    elif isinstance(node, list):
        for value in node:
            _relax(value)


@schemathesis.hook
def before_load_schema(context, raw_schema):
    if OPTIONAL:
        _relax(raw_schema)
