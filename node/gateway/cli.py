"""`gibsey gateway token`: print the node's write token, for the dashboard's "write token" field
or a script's `Authorization: Bearer` header.

With no token configured (`[gateway] token`, `token_file`, GIBSEY_GATEWAY_TOKEN), the node makes
one at its first start and keeps it in DATA/gateway.token (mode 0600); this command prints that
one, making it now if the node has not started yet. Run it as the node's user (on the SD image:
`sudo -u gibsey gibsey gateway token`). A new token: delete the file and restart the node.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gibsey.core.config import ConfigError, load_section, resolve_data_dir
from gibsey.core.storage import StorageError
from gibsey.node.gateway.config import GatewayConfig
from gibsey.node.gateway.tokens import node_token


def _token(args: argparse.Namespace) -> int:
    data = resolve_data_dir(getattr(args, "data", None))
    try:
        config = load_section(GatewayConfig, "gateway", data)
        token, where = node_token(config, data)
    except ConfigError as exc:
        print(f"gibsey gateway token: {exc}", file=sys.stderr)
        return 1
    except StorageError:
        raise  # the disk refused the token's write: said by `gibsey` itself, exit 75
    except OSError as exc:
        print(f"gibsey gateway token: cannot keep a token in {data}: {exc}", file=sys.stderr)
        return 1
    print(token)
    print(f"(from {where})", file=sys.stderr)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "gateway",
        parents=[common],
        help="the HTTP gateway: its write token",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = p.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)
    t = commands.add_parser(
        "token", parents=[common], help="print the write token (made now if there is none yet)"
    )
    t.set_defaults(func=_token)
