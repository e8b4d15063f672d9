"""Command line: ``python -m app --version``, ``python -m app token USER [--scope notify] [--ttl S]
[--room PATTERN ...]``."""

from __future__ import annotations

import argparse
import sys

from hubbub import __version__
from hubbub.auth import Authenticator
from hubbub.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="hubbub tools")
    parser.add_argument("--version", action="version", version=f"hubbub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a signed token (needs JWT_SECRET)")
    token.add_argument("user")
    token.add_argument("--scope", default="", help="space-separated scopes, e.g. notify")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--room", action="append", dest="rooms",
                       help="a room pattern the token allows (repeatable; default: all)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ValueError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    if settings.ephemeral_secret:
        print("JWT_SECRET is not set: a token signed now would be useless to a server",
              file=sys.stderr)
        return 2
    authenticator = Authenticator(settings)
    if not authenticator.can_issue:
        print("tokens can only be signed with JWT_SECRET (HS256)", file=sys.stderr)
        return 2
    if args.ttl <= 0:
        print("--ttl must be positive", file=sys.stderr)
        return 2
    print(authenticator.issue(args.user, scope=args.scope, ttl_s=args.ttl, rooms=args.rooms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
