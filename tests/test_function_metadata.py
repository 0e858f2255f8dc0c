"""The bindings the Functions host will read: a wrong name or setting here fails only in Azure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import function_app
from simulator.functions_host import app_functions

ROOT = Path(__file__).resolve().parent.parent


def bindings() -> dict[str, list[dict[str, Any]]]:
    found = {}
    for function in app_functions(function_app.app):
        found[function.get_function_name()] = [json.loads(json.dumps(b.get_dict_repr(), default=str))
                                               for b in function.get_bindings()]
    return found


def trigger(name: str) -> dict[str, Any]:
    return bindings()[name][0]


def test_every_function_is_declared() -> None:
    assert set(bindings()) == {"sync_photo", "sync_now", "health", "graph_webhook",
                               "graph_lifecycle", "control", "reconcile", "ops", "verify"}


def test_queue_triggers_read_the_queue_named_by_settings() -> None:
    assert trigger("sync_photo")["type"] == "queueTrigger"
    assert trigger("sync_photo")["queueName"] == "%PHOTO_SYNC_QUEUE%"
    assert trigger("sync_photo")["connection"] == "AzureWebJobsStorage"
    assert trigger("control")["queueName"] == "%PHOTO_SYNC_QUEUE%-control"


def test_manual_trigger_and_health_need_a_function_key_and_webhooks_do_not() -> None:
    assert trigger("sync_now")["route"] == "sync"
    assert trigger("health")["route"] == "health"
    for name in ("sync_now", "health"):
        assert "function" in str(trigger(name)["authLevel"]).lower()
    for name, route in (("graph_webhook", "notifications"), ("graph_lifecycle", "lifecycle")):
        assert trigger(name)["route"] == route
        assert "anonymous" in str(trigger(name)["authLevel"]).lower()
        assert [m.upper().split(".")[-1] for m in trigger(name)["methods"]] == ["POST"]


def test_admin_commands_need_the_master_key_on_a_route_the_host_accepts() -> None:
    ops = trigger("ops")
    assert ops["type"] == "httpTrigger" and ops["route"] == "ops/{command}"
    assert "admin" in str(ops["authLevel"]).lower()
    assert [m.upper().split(".")[-1] for m in ops["methods"]] == ["POST"]
    # the host refuses to load any HTTP function whose route starts with "admin"
    assert not any(str(b[0].get("route", "")).lower().startswith("admin")
                   for b in bindings().values())


def test_timer_ticks_every_minute_and_never_runs_on_startup() -> None:
    """The pass interval is RECONCILE_INTERVAL, read by the handler: the timer only ticks."""
    timer = trigger("reconcile")
    assert timer["type"] == "timerTrigger"
    assert timer["schedule"] == "0 * * * * *"
    assert not timer.get("runOnStartup")


def test_the_verify_timer_runs_daily_and_never_on_startup() -> None:
    timer = trigger("verify")
    assert timer["type"] == "timerTrigger"
    seconds, minutes, hours, *every_day = timer["schedule"].split()
    assert every_day == ["*", "*", "*"] and hours.isdigit() and minutes.isdigit()
    assert not timer.get("runOnStartup")


def test_host_json_queue_settings() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    queues = host["extensions"]["queues"]
    assert queues["messageEncoding"] == "base64"  # what SyncQueue writes
    assert 1 <= queues["batchSize"] <= 32
    assert queues["maxDequeueCount"] == 5
    assert host["extensionBundle"]["version"] == "[4.*, 5.0.0)"


def test_sample_settings_name_every_binding_setting() -> None:
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    for name in ("PHOTO_SYNC_QUEUE", "RECONCILE_INTERVAL", "AzureWebJobsStorage"):
        assert values.get(name), name
