"""The log records operators and alert rules read (docs/operations.md, "The records"), captured from real runs: a sync
through the queue trigger, a failing message, a reconciliation, the timer. Checked three ways: the
fields the contract names, the request counts against what the simulator served, and the
customDimensions the Azure Monitor exporter makes of them. docs/operations.md's KQL queries are
parsed and may read only fields these records carry."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest
from azure.monitor.opentelemetry.exporter.export.logs._exporter import _convert_log_to_envelope
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

import function_app
from shared import handlers, reasons, telemetry
from shared.sharepoint import SharePointError
from shared.outcomes import Outcome
from simulator.core import TenantSimulator
from simulator.images import PhotoSpec
from tests.test_sync import deliver, user_with

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("app_env")

CONTRACT = {  # docs/operations.md: message -> event and the customDimensions alert rules read
    "sync finished": ("sync", {"outcome", "reason_code", "user_id", "duration_ms",
                               "graph_requests", "sharepoint_requests"}),
    "sync message failed": ("sync_error", {"error_type", "message_id", "dequeue_count",
                                           "final_attempt"}),
    "reconcile finished": ("reconcile", {"complete", "scanned", "queued", "duration_ms"}),
    "photo-sync health": ("health", {"poison_messages", "subscription_present",
                                     "subscription_hours_left", "notification_url_set",
                                     "hours_since_reconcile_completed", "oldest_waiting_hours",
                                     "verify_stale", "verify_broken_link"}),
    "photo-sync verify": ("verify", {"verify_sampled", "verify_stale", "verify_broken_link",
                                     "verify_bad_runs_in_a_row", "requests_per_user"}),
}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def dimensions(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


def served(sim: TenantSimulator, *hosts: str) -> int:
    """HTTP requests the simulator answered on these hosts (a $batch's items are not requests)."""
    return sum(n for host in hosts for kind, n in sim.requests[host].items()
               if kind not in ("faulted", "batch.items", "errors"))


@pytest.fixture
def every_record(sim: TenantSimulator, caplog: pytest.LogCaptureFixture
                 ) -> dict[str, list[logging.LogRecord]]:
    """One real run of each: syncs (updated, failed), a failing message at its first and last
    attempt, a reconciliation and a timer run."""
    caplog.set_level(logging.INFO, logger="photo_sync")
    deliver(user_with(sim, "jpeg").id)
    broken = user_with(sim, "png-alpha")
    sim.set_photo(broken.id, PhotoSpec(kind="corrupt"))
    deliver(broken.id)
    sim.inject_fault(host="mysite", status=500, count=100)
    for attempt in (1, 5):
        with pytest.raises(SharePointError):
            deliver(user_with(sim, "cmyk-jpeg").id, force=True, dequeue_count=attempt)
    sim.clear_faults()
    asyncio.run(handlers.handle_timer())  # the first tick: a pass is due
    asyncio.run(handlers.run_reconcile())
    asyncio.run(handlers.handle_verify_timer())
    return {message: records(caplog, message) for message in CONTRACT}


def test_each_record_carries_the_contract_fields(every_record: dict) -> None:
    for message, (event, fields) in CONTRACT.items():
        assert every_record[message], f"no {message!r} record"
        for record in every_record[message]:
            found = dimensions(record)
            assert found["event"] == event and fields <= set(found), (message, found)
            assert all(isinstance(v, str | int | float) for v in found.values()), found
    outcomes = {dimensions(r)["outcome"] for r in every_record["sync finished"]}
    assert {"updated", "failed"} <= outcomes
    for record in every_record["sync finished"]:
        assert dimensions(record)["reason_code"] in reasons.REGISTRY


def test_final_attempt_is_true_only_when_the_message_goes_to_poison_next(
        every_record: dict) -> None:
    failed = every_record["sync message failed"]
    by_count = {dimensions(r)["dequeue_count"]: dimensions(r) for r in failed}
    assert telemetry.max_dequeue_count() == json.loads(
        (ROOT / "host.json").read_text())["extensions"]["queues"]["maxDequeueCount"] == 5
    assert by_count[1]["final_attempt"] == "false" and by_count[5]["final_attempt"] == "true"
    assert by_count[5]["error_type"] == "SharePointError"
    assert {r.levelno for r in failed} == {logging.WARNING, logging.ERROR}


def test_health_record_describes_a_tenant_without_subscription(every_record: dict) -> None:
    (health,) = every_record["photo-sync health"]
    found = dimensions(health)
    assert found["subscription_present"] == "false" and found["notification_url_set"] == "false"
    assert found["subscription_hours_left"] == -1.0
    assert 0 <= found["hours_since_reconcile_completed"] < 0.1  # this timer run completed one
    assert found["poison_messages"] == 0 and found["failed_users"] == 1
    reconciles = [dimensions(r) for r in every_record["reconcile finished"]]
    assert all(r["complete"] == "true" and r["scanned"] > 0 for r in reconciles)


def test_request_counts_are_what_graph_and_sharepoint_served(
        sim: TenantSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="photo_sync")
    user = user_with(sim, "jpeg")
    sim.inject_fault(host="graph", status=429, retry_after=1, count=1)
    sim.inject_fault(host="mysite", status=503, retry_after=1, count=1)
    sim.reset_counters()
    deliver(user.id)
    (record,) = records(caplog, "sync finished")
    found = dimensions(record)
    assert found["outcome"] == Outcome.UPDATED
    assert found["graph_requests"] == served(sim, "graph")  # the throttled attempt included
    assert found["sharepoint_requests"] == served(sim, "mysite", "admin")
    assert found["throttled_responses"] == 2 and found["duration_ms"] >= 1000  # Retry-After: 1

    caplog.clear()
    sim.reset_counters()
    deliver(user.id)  # unchanged: one Graph lookup and one etag, nothing in SharePoint
    found = dimensions(records(caplog, "sync finished")[0])
    assert (found["graph_requests"], found["sharepoint_requests"]) == (served(sim, "graph"), 0)
    assert found["reason_code"] == "etag_unchanged"


def test_the_azure_monitor_exporter_turns_every_field_into_a_custom_dimension(
        every_record: dict) -> None:
    """What App Insights stores: the records through the logging handler configure_azure_monitor
    installs on the root logger (azure-monitor-opentelemetry `_configure._setup_logging`) and the
    exporter's own conversion to an envelope."""
    provider = LoggerProvider()
    memory = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    handler = LoggingHandler(logger_provider=provider)
    captured = [r for found in every_record.values() for r in found]
    for record in captured:
        handler.emit(record)
    envelopes = [_convert_log_to_envelope(log) for log in memory.get_finished_logs()]
    assert len(envelopes) == len(captured)
    for record, envelope in zip(captured, envelopes, strict=True):
        data = envelope.data.base_data
        assert data.message == record.getMessage()
        assert data.properties == {**data.properties,
                                   **{k: str(v) for k, v in dimensions(record).items()}}


# docs/operations.md: the queries read only what the records carry

def kql_queries() -> list[str]:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    return re.findall(r"```kusto\n(.*?)```", text, re.S)


def fields_read(query: str) -> set[str]:
    return set(re.findall(r"customDimensions\.(\w+)", query)) | \
        set(re.findall(r"customDimensions\[[\"'](\w+)[\"']\]", query))


def events_read(query: str) -> set[str]:
    found = set(re.findall(r'customDimensions\.event == "(\w+)"', query))
    for group in re.findall(r"customDimensions\.event in \(([^)]*)\)", query):
        found |= set(re.findall(r'"(\w+)"', group))
    return found


def test_docs_hold_the_four_queries_the_issue_asks_for() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for heading in ("Failures by reason", "Users waiting for a profile link",
                    "Throughput per hour", "Throttling seen"):
        assert f"### {heading}" in text
    assert len([q for q in kql_queries() if q.lstrip().startswith("traces")]) >= 4


def test_every_field_a_query_reads_is_logged_for_its_event(every_record: dict) -> None:
    logged: dict[str, set[str]] = {}
    for found in every_record.values():
        for record in found:
            fields = dimensions(record)
            logged.setdefault(str(fields["event"]), set()).update(fields)
    for query in kql_queries():
        if not query.lstrip().startswith("traces"):
            continue
        events = events_read(query) or set(logged)  # no event named: any record's fields
        available = set().union(*(logged[e] for e in events))
        missing = fields_read(query) - available
        assert not missing, f"{sorted(missing)} not logged for {sorted(events)}:\n{query}"
        for outcome in re.findall(r'customDimensions\.outcome [!=]= "(\w+)"', query):
            assert outcome in {o.value for o in Outcome}
        for group in re.findall(r"customDimensions\.outcome in \(([^)]*)\)", query):
            assert set(re.findall(r'"(\w+)"', group)) <= {o.value for o in Outcome}
        for code in re.findall(r'reason_code == "(\w+)"', query):
            assert code in reasons.REGISTRY


def test_host_json_and_requirements_enable_the_export() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["telemetryMode"] == "OpenTelemetry"
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert re.search(r"^azure-monitor-opentelemetry==[\d.]+$", requirements, re.M)
    # the worker calls configure_azure_monitor(); a second call would export everything twice
    assert "configure_azure_monitor" not in (ROOT / "function_app.py").read_text()


def test_a_timer_that_fails_still_logs_its_health(sim: TenantSimulator,
                                                  caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="photo_sync")

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Graph is down")

    monkeypatch.setattr(handlers, "run_reconcile", broken)
    with pytest.raises(RuntimeError):
        asyncio.run(function_app.reconcile(type("Timer", (), {"past_due": False})()))
    assert len(records(caplog, "photo-sync health")) == 1
