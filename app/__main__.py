"""Command line of the standalone server.

    python -m app --version
    python -m app token USER [--scope notify] [--ttl S] [--room PATTERN ...]
    python -m app publish CHANNEL [TEXT] [--type T] [--data JSON]
    python -m app notify USER MESSAGE
    python -m app broadcast MESSAGE
    python -m app config
    python -m app serve [--host H] [--port P] [--workers N]

Publishing goes over HTTP to ``--url`` (or HUBBUB_URL) with HUBBUB_API_KEY or
HUBBUB_TOKEN, or, with neither URL nor credentials, straight through REDIS_URL
(docs/publishing.md). It prints the message's id.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from hubbub import __version__
from hubbub.auth import Authenticator
from hubbub.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="hubbub tools")
    parser.add_argument("--version", action="version", version=f"hubbub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a signed token (needs JWT_SECRET)")
    token.add_argument("user")
    token.add_argument("--scope", default="", help="space-separated scopes, e.g. notify publish")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--room", action="append", dest="rooms",
                       help="a room pattern the token allows (repeatable; default: all)")
    publish = commands.add_parser("publish", help="publish an event to a channel; prints its id")
    publish.add_argument("channel", help="room:NAME, user:ID or broadcast")
    publish.add_argument("text", nargs="?", help='shorthand for --data \'{"message": TEXT}\'')
    publish.add_argument("--type", default="event", help="the event's type (default: event)")
    publish.add_argument("--data", help="the event's data, as JSON")
    notify = commands.add_parser("notify", help="a notification to one user; prints its id")
    notify.add_argument("user")
    notify.add_argument("message")
    broadcast = commands.add_parser("broadcast", help="a notification to everybody; prints its id")
    broadcast.add_argument("message")
    commands.add_parser("config", help="print the effective configuration, secrets masked")
    serve = commands.add_parser("serve", help="serve: Hypercorn, uvloop, $PORT, WEB_CONCURRENCY workers")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"),
                       help="address to listen on (default HOST, else 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default PORT, else 8000)")
    serve.add_argument("--workers", type=int, help="processes (default WEB_CONCURRENCY, else 1)")
    for command in (publish, notify, broadcast):
        command.add_argument("--url", default=os.environ.get("HUBBUB_URL"),
                             help="the hub over HTTP (default HUBBUB_URL); without it, REDIS_URL")
    args = parser.parse_args(argv)
    if args.command == "token":
        return _token(args)
    if args.command == "serve":
        from app.serve import serve as run_server

        return run_server(args.host, args.port, args.workers)
    if args.command == "config":
        from app.configuration import describe, settings_from_env

        print("\n".join(describe(settings_from_env())))
        return 0
    return _publish(args)


def _token(args: argparse.Namespace) -> int:
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


def _publish(args: argparse.Namespace) -> int:
    from hubbub.client import HubbubError

    try:
        data: Any = {"message": args.message} if args.command != "publish" else _data(args)
        via = _http(args.url) if args.url else _redis()
        if args.command == "publish":
            message_id = via.publish(args.channel, data, type=args.type)
        elif args.command == "notify":
            message_id = via.notify(args.user, data)
        else:
            message_id = via.broadcast(data)
    except (ValueError, HubbubError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(message_id)
    return 0


def _data(args: argparse.Namespace) -> Any:
    if args.text is not None and args.data is not None:
        raise ValueError("give TEXT or --data, not both")
    if args.data is not None:
        try:
            return json.loads(args.data)
        except json.JSONDecodeError as error:
            raise ValueError(f"--data is not JSON: {error}") from None
    return None if args.text is None else {"message": args.text}


def _http(url: str) -> Any:
    from hubbub.client import Publisher

    api_key, token = os.environ.get("HUBBUB_API_KEY"), os.environ.get("HUBBUB_TOKEN")
    if not api_key and not token:
        raise ValueError("set HUBBUB_API_KEY (or HUBBUB_TOKEN, a JWT with scope publish)")
    return Publisher(url, api_key=api_key or None, token=None if api_key else token)


def _redis() -> Any:
    from hubbub.client import RedisEmitter

    settings = Settings.from_env()
    if not settings.redis_url:
        raise ValueError("give --url (or HUBBUB_URL) to publish over HTTP, or set REDIS_URL")
    return RedisEmitter(settings.redis_url, settings.redis_prefix, history_size=settings.history_size,
                        history_ttl_s=settings.history_ttl_s)


if __name__ == "__main__":
    sys.exit(main())
