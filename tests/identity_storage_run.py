"""Run by tests/test_clients_closed.py in a child process
(`python -X dev -m tests.identity_storage_run <user id>`): one queued sync and one timer tick with
identity-based storage settings, then exit.

A child process, because what the test looks for appears only when objects are collected and the
interpreter exits: aiohttp's "Unclosed client session" / "Unclosed connector" (logged at ERROR by
the `asyncio` logger) and Python's ResourceWarning (shown under -X dev). Its stdout is one JSON
line saying what ran, so the test knows the run really used the storage it was given.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys


def main(user_id: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from shared import handlers
    from shared.queue import SyncRequest

    settings = handlers.get_settings()
    assert settings.storage.connection_string is None, "expected identity-based storage settings"
    result = asyncio.run(handlers.handle_sync_message(SyncRequest(user_id, "manual").to_json()))
    timer = asyncio.run(handlers.handle_timer())
    handlers.reset_process_caches()
    gc.collect()
    print(json.dumps({"sync": result.outcome.value if result else None,
                      "reconcile": timer.get("reconcile")}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
