"""photo-sync triggers and bindings. Each function hands over to `shared.handlers` in a line or two."""

from __future__ import annotations

import json
import logging

import azure.functions as func

from shared import admin, handlers, telemetry

# Log records reach Application Insights through OpenTelemetry (docs/operations.md), where
# host.json's logLevel no longer filters them: keep per-request library logs out.
telemetry.quiet_noisy_loggers()
# No UPNs in log records (docs/security.md) from the first one; PHOTO_SYNC_LOG_UPNS=true, read with
# the other settings, turns this off.
telemetry.protect_upns_in_logs()
handlers.prepare_worker()  # slow one-time work at indexing, not on the invocations' event loop
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _json(status: int, body: dict[str, object]) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


def _text(answer: handlers.Answer) -> func.HttpResponse:
    status, mimetype, body = answer
    return func.HttpResponse(body, status_code=status, mimetype=mimetype)


@app.function_name("sync_photo")
@app.queue_trigger(arg_name="msg", queue_name="%PHOTO_SYNC_QUEUE%", connection="AzureWebJobsStorage")
async def sync_photo(msg: func.QueueMessage) -> None:
    """One message, one user: copy their Microsoft 365 photo into SharePoint."""
    await handlers.handle_sync_message(msg.get_body(), dequeue_count=msg.dequeue_count or 1,
                                       message_id=msg.id or "")


@app.function_name("sync_now")
@app.route(route="sync", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def sync_now(req: func.HttpRequest) -> func.HttpResponse:
    """Manual trigger: queue some users, or a reconciliation of everyone."""
    return _json(*await handlers.handle_sync_request(req.get_body()))


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Counts per outcome, last reconciliation, subscription expiry, queue depths."""
    return _json(*await handlers.handle_health())


# Not `admin/{command}`: the Functions host reserves every route that starts with "admin" for its
# own admin API and refuses to load such a function ("The specified route conflicts with one or
# more built in routes": Azure/azure-functions-host issue #1781, ScriptHost route validation).
@app.function_name("ops")
@app.route(route="ops/{command}", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
async def ops(req: func.HttpRequest) -> func.HttpResponse:
    """Admin commands (preflight, subscription ensure, ...) as the app's identity; master key only."""
    return _json(*await admin.handle_admin_request(req.route_params.get("command", ""),
                                                   req.get_body(), handlers.get_settings()))


@app.function_name("graph_webhook")
@app.route(route="notifications", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def graph_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Graph change notifications (anonymous: Graph sends no key; clientState authenticates)."""
    return _text(await handlers.handle_notification(dict(req.params), req.get_body()))


@app.function_name("graph_lifecycle")
@app.route(route="lifecycle", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def graph_lifecycle(req: func.HttpRequest) -> func.HttpResponse:
    """Graph lifecycle notifications: reauthorize, recreate, reconcile after missed changes."""
    return _text(await handlers.handle_lifecycle(dict(req.params), req.get_body()))


@app.function_name("control")
@app.queue_trigger(arg_name="msg", queue_name="%PHOTO_SYNC_QUEUE%-control",
                   connection="AzureWebJobsStorage")
async def control(msg: func.QueueMessage) -> None:
    """Long jobs off the request path: reconciliations and lifecycle events."""
    outcome = await handlers.handle_control_message(msg.get_body())
    logging.getLogger("photo_sync").info("control message handled",
                                         extra={"result": json.dumps(outcome)})


@app.function_name("reconcile")
@app.timer_trigger(arg_name="timer", schedule=handlers.TIMER_SCHEDULE, run_on_startup=False)
async def reconcile(timer: func.TimerRequest) -> None:
    """Every minute: a reconciliation pass when RECONCILE_INTERVAL is up (it also renews the Graph
    subscription), else a check of the hot users when RECONCILE_HOT_INTERVAL is up."""
    outcome = await handlers.handle_timer()
    logging.getLogger("photo_sync").info("timer run finished",
                                         extra={"result": json.dumps(outcome),
                                                "past_due": telemetry.flag(timer.past_due)})


@app.function_name("verify")
@app.timer_trigger(arg_name="timer", schedule="0 30 5 * * *", run_on_startup=False)
async def verify(timer: func.TimerRequest) -> None:
    """Daily at 05:30 UTC: verify what a sample of people see (VERIFY_SAMPLE; 0 turns it off)."""
    await handlers.handle_verify_timer()
