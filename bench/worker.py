"""The client side of a benchmark, in its own process: `python -m bench.worker`.

The parent (bench.run) keeps Azurite and the tenant simulator; this process runs only photo-sync
(or the naive baseline) so its peak RSS and its CPU are photo-sync's alone. Protocol: one JSON
command per line on stdin, one JSON answer per line on the original stdout (everything the code
under test prints goes to stderr).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
import traceback
from typing import Any


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    VmHWM (the high-water mark of this process's own memory map) rather than getrusage's
    ru_maxrss: Linux carries ru_maxrss across exec, and Python starts children with vfork, so a
    worker's ru_maxrss starts at the *parent's* peak (the simulator's tenant), not its own.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def cmd_warmup() -> dict[str, Any]:
    """Import the app and get the three tokens, so timed runs measure steady work, not start-up."""
    import function_app  # noqa: F401  (what the Functions worker imports at start)
    from shared.credentials import scope_for
    from shared.handlers import get_credential, get_settings, reset_process_caches

    reset_process_caches()
    settings = get_settings()
    for url in (settings.graph_base_url, settings.mysite_url, settings.admin_url):
        get_credential().get_token(scope_for(url))
    return {"rss_mb": current_rss_mb(), "max_rss_mb": max_rss_mb()}


def cmd_reconcile(profile: str = "", until_complete: bool = False) -> dict[str, Any]:
    """One reconciliation exactly as the control queue / timer runs it (shared.handlers);
    `until_complete` runs the next slice while one pauses at its time budget, as the control
    messages it leaves behind would."""
    from shared.handlers import run_reconcile

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    report = asyncio.run(run_reconcile())
    slices = 1
    while until_complete and not report.complete and not report.skipped:
        report = asyncio.run(run_reconcile())
        slices += 1
    elapsed = time.perf_counter() - started
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    return {"elapsed": elapsed, "report": report.as_dict(), "slices": slices,
            "rss_mb": current_rss_mb(),
            "max_rss_mb": max_rss_mb()}


def cmd_drain(expected: int, timeout: float = 600, process_clients: bool = True
              ) -> dict[str, Any]:
    """Run the sync_photo queue function on every queued message, as the Functions host would,
    until `expected` messages were handled (no idle polling is counted in the time).
    `process_clients=False` opens the clients per message, as photo-sync did before issue 11."""
    import function_app
    from shared import handlers
    from shared.handlers import get_settings
    from simulator.functions_host import QueueWorker

    handlers.PROCESS_CLIENTS = process_clients

    async def go() -> dict[str, Any]:
        worker = QueueWorker(function_app.app, get_settings().storage.connection_string or "",
                             "sync_photo")
        async with worker:
            started = time.perf_counter()
            handled = 0
            deadline = started + timeout
            while handled < expected and time.perf_counter() < deadline:
                received = await worker.run_once()
                handled += received
                if not received:
                    await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            return {"elapsed": elapsed, "handled": handled, "processed": worker.processed,
                    "failures": worker.failures}

    return asyncio.run(go())


def cmd_drain_all(timeout: float = 1800, progress_every: float = 30) -> dict[str, Any]:
    """Run sync_photo until the queue holds nothing, not even messages a throttled sync put
    back with a visibility delay; report what the host saw (failures, poison)."""
    import function_app
    from shared import pacing
    from shared.handlers import get_settings
    from simulator.functions_host import QueueWorker

    async def go() -> dict[str, Any]:
        settings = get_settings()
        worker = QueueWorker(function_app.app, settings.storage.connection_string or "",
                             "sync_photo")
        async with worker:
            started = time.perf_counter()
            deadline, report_at = started + timeout, started + progress_every
            handled = 0
            while time.perf_counter() < deadline:
                received = await worker.run_once()
                handled += received
                if time.perf_counter() > report_at:
                    report_at += progress_every
                    print(f"  drain: {handled:,} messages handled after "
                          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
                if received:
                    continue
                left = (await worker.queue.get_queue_properties()).approximate_message_count
                if not left:
                    break
                await asyncio.sleep(0.2)
            elapsed = time.perf_counter() - started
            poisoned = (await worker.poison.get_queue_properties()).approximate_message_count
            pacer = pacing.sharepoint_pacer(settings)
            return {"elapsed": elapsed, "handled": handled, "processed": worker.processed,
                    "failures": worker.failures, "poisoned": poisoned,
                    "pacer": dict(pacer.stats)}

    return asyncio.run(go())


def cmd_verify(sample: int) -> dict[str, Any]:
    """Sync the users `verify` samples (so SharePoint shows photo-sync's pictures), then run the
    sampled verify as the daily timer does; its time and requests per user."""
    from shared import verify
    from shared.handlers import get_credential, get_settings
    from shared.queue import SyncRequest
    from shared.reconcile import users_in_scope
    from shared.sync import open_context, sync_user

    async def sync_sample() -> None:
        async with open_context(get_settings(), get_credential()) as context:
            drawn, _total = await verify.smallest(users_in_scope(context.settings, context.graph),
                                                  sample)
            gate = asyncio.Semaphore(8)

            async def one(user_id: str) -> None:
                async with gate:
                    await sync_user(context, SyncRequest(user_id, "manual"))
            await asyncio.gather(*(one(u.id) for u in drawn))

    asyncio.run(sync_sample())
    report = asyncio.run(verify.run_verify(get_settings(), sample=sample,
                                           credential=get_credential()))
    return {"users": len(report.verdicts), "seconds": report.seconds,
            "requests_per_user": report.requests_per_user(), "counts": report.counts,
            "graph_requests": report.graph_requests,
            "sharepoint_requests": report.sharepoint_requests}


def cmd_outcomes() -> dict[str, int]:
    """Users per outcome, as status reports them."""
    from shared.handlers import get_settings
    from shared.operations import outcome_counts

    return asyncio.run(outcome_counts(get_settings())).outcomes


# The freshness scenario (bench/freshness.py): one long-lived event loop, as a Functions worker has,
# and a simulated wall clock for the app (the waits between timer ticks are skipped; the work is
# real and its real duration moves the clock on).
_loop: asyncio.AbstractEventLoop | None = None
_clock_offset = 0.0


def _worker_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop


def _simulated_now() -> Any:
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) + timedelta(seconds=_clock_offset)


def cmd_set_clock(epoch_seconds: float) -> dict[str, Any]:
    """From now on the app's clock (shared.state.utc_now, as the timer and the pass read it)
    reads `epoch_seconds`, then runs on in real time."""
    global _clock_offset
    from shared import handlers, reconcile, state

    _clock_offset = epoch_seconds - time.time()
    for module in (state, reconcile, handlers):
        module.utc_now = _simulated_now  # type: ignore[attr-defined]
    return {"offset": _clock_offset}


def cmd_tick() -> dict[str, Any]:
    """One run of the reconcile timer: what function_app.reconcile awaits, on the worker's loop."""
    from shared.handlers import handle_timer

    started = time.perf_counter()
    outcome = _worker_loop().run_until_complete(handle_timer())
    return {"elapsed": time.perf_counter() - started, "outcome": outcome}


def cmd_drain_timed(timeout: float = 600) -> dict[str, Any]:
    """Run sync_photo until the queue is empty; when each user's sync finished (seconds from
    the start) and what it did."""
    import function_app
    from shared.handlers import get_settings
    from simulator.functions_host import QueueWorker

    async def go() -> dict[str, Any]:
        worker = QueueWorker(function_app.app, get_settings().storage.connection_string or "",
                             "sync_photo")
        finished: dict[str, float] = {}
        started = time.perf_counter()
        run = worker.function

        async def timed(msg: Any) -> None:
            await run(msg)
            finished[json.loads(msg.get_body())["userId"]] = time.perf_counter() - started

        worker.function = timed
        async with worker:
            deadline = started + timeout
            while time.perf_counter() < deadline:
                if not await worker.run_once():
                    break
        return {"elapsed": time.perf_counter() - started, "finished": finished,
                "failures": worker.failures}

    return _worker_loop().run_until_complete(go())


def cmd_loop_lag(expected: int, notify: list[str], timeout: float = 900) -> dict[str, Any]:
    """bench/loop.py's mixed load on one fresh loop: the worker instance's loop lag."""
    from bench.loop import mixed_load

    return asyncio.run(mixed_load(expected, notify, timeout=timeout)).as_dict()


def cmd_baseline(sample: int, roots: dict[str, str], photos_folder: str,
                 pause_ms: float = 0) -> dict[str, Any]:
    from .baseline import run_baseline

    return run_baseline(sample, roots, photos_folder, pause_ms)


COMMANDS = {"warmup": cmd_warmup, "reconcile": cmd_reconcile, "drain": cmd_drain,
            "drain_all": cmd_drain_all, "baseline": cmd_baseline, "set_clock": cmd_set_clock,
            "tick": cmd_tick, "drain_timed": cmd_drain_timed, "loop_lag": cmd_loop_lag,
            "verify": cmd_verify, "outcomes": cmd_outcomes}


def close_worker_loop() -> None:
    """Close the clients the freshness scenario's loop opened, then the loop, as a worker does."""
    if _loop is None:
        return
    from shared.handlers import close_process_clients

    _loop.run_until_complete(close_process_clients())
    _loop.run_until_complete(_loop.shutdown_asyncgens())
    _loop.close()


def main() -> None:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr, not the protocol
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            answer = {"ok": True, "result": COMMANDS[request["cmd"]](**request.get("args", {}))}
        except Exception:  # report it to the parent, which fails the run with the traceback
            answer = {"ok": False, "error": traceback.format_exc()}
        protocol.write(json.dumps(answer) + "\n")
    close_worker_loop()


if __name__ == "__main__":
    main()
