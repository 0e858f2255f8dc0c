"""photo-sync triggers and bindings. All logic lives in the `shared` package."""

from __future__ import annotations

import json

import azure.functions as func

from shared import handlers

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _json(status: int, body: dict[str, object]) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


@app.function_name("sync_photo")
@app.queue_trigger(arg_name="msg", queue_name="%PHOTO_SYNC_QUEUE%", connection="AzureWebJobsStorage")
async def sync_photo(msg: func.QueueMessage) -> None:
    """One message, one user: copy their Microsoft 365 photo into SharePoint."""
    await handlers.handle_sync_message(msg.get_body(), dequeue_count=msg.dequeue_count or 1)


@app.function_name("sync_now")
@app.route(route="sync", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def sync_now(req: func.HttpRequest) -> func.HttpResponse:
    """Manual trigger: queue some users, or everyone, for a sync."""
    status, body = await handlers.handle_sync_request(req.get_body())
    return _json(status, body)
