"""CLI: ``python -m simulator serve --tenant simulator/demo_tenant.json [--urls-file PATH]``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

DEMO = Path(__file__).with_name("demo_tenant.json")


def _serve(args: argparse.Namespace) -> int:
    from .core import TenantSimulator
    from .tenant import Tenant, make_tenant

    tenant = make_tenant(args.users) if args.users else Tenant.load(args.tenant)
    sim = TenantSimulator(tenant)
    sim.latency_ms = args.latency_ms
    sim.drop_notifications = args.drop_notifications
    if args.app_only_writes:
        sim.app_only_property_writes = args.app_only_writes
    sim.start(args.graph_port, args.mysite_port, args.admin_port)
    urls = sim.urls()
    text = json.dumps(urls)
    if args.urls_file:
        tmp = Path(args.urls_file + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, args.urls_file)
    print(text, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    sim.stop()
    return 0


def _token(args: argparse.Namespace) -> int:
    from .tokens import mint_token

    print(mint_token(args.aud, args.kind, args.ttl))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the three listeners until SIGTERM/SIGINT")
    serve.add_argument("--tenant", default=str(DEMO), help="tenant JSON file (default: demo tenant)")
    serve.add_argument("--users", type=int, default=0, help="generate a tenant of N users instead (make_tenant)")
    serve.add_argument("--graph-port", type=int, default=0)
    serve.add_argument("--mysite-port", type=int, default=0)
    serve.add_argument("--admin-port", type=int, default=0)
    serve.add_argument("--urls-file", help="also write the URL JSON here (atomically) once listening")
    serve.add_argument("--latency-ms", type=float, default=0)
    serve.add_argument("--drop-notifications", action="store_true")
    serve.add_argument("--app-only-writes", choices=("refuse", "allow"))
    serve.set_defaults(func=_serve)
    tok = sub.add_parser("token", help="print a token for an audience")
    tok.add_argument("--aud", required=True)
    tok.add_argument("--kind", choices=("app", "user"), default="app")
    tok.add_argument("--ttl", type=int, default=3600)
    tok.set_defaults(func=_token)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
