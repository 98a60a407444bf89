"""`gibsey schema`: print the event schemas as JSON Schema for other clients."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gibsey.core.envelope import json_schemas


def _run(args: argparse.Namespace) -> int:
    doc = json_schemas()
    if args.kind:
        if args.kind not in doc["kinds"]:
            known = ", ".join(doc["kinds"])
            print(
                f"gibsey schema: no event kind {args.kind!r}; known kinds: {known}", file=sys.stderr
            )
            return 2
        doc = doc["kinds"][args.kind]
    print(json.dumps(doc, indent=2))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "schema",
        parents=[common],
        help="print the event envelope and every event kind as JSON Schema",
        description="Print the JSON Schema of every event kind (or of one, with --kind).",
    )
    p.add_argument("--kind", help="only this kind, e.g. glyph/rotated")
    p.set_defaults(func=_run)
