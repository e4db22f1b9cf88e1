"""The HTTP API's bodies as pydantic models, and its OpenAPI document built from them.

The routes validate requests and shape responses with these very models, so the
document cannot drift from what the API does.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._version import __version__

Addresses = list[str] | str


class AttachmentIn(BaseModel):
    """A file attached to the message."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(examples=["invoice.pdf"])
    content_type: str = Field("application/octet-stream", examples=["application/pdf"])
    content_base64: str = Field(description="The file's bytes, base64-encoded.")


class MessageIn(BaseModel):
    """A message to send, built by relay365 (for a ready-made message, POST message/rfc822)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, title="Message")

    from_: str | None = Field(None, alias="from", description="Sender (`Name <address>` or an address); "
                              "default: the key's first sender, else the default connection's.",
                              examples=["Contoso <info@contoso.com>"])
    to: Addresses = Field(default_factory=list, description="One address or a list.",
                          examples=[["alice@example.com"]])
    cc: Addresses = Field(default_factory=list)
    bcc: Addresses = Field(default_factory=list, description="Envelope only: no Bcc header is written.")
    reply_to: Addresses = Field(default_factory=list)
    subject: str = ""
    text: str | None = Field(None, description="Plain-text body.")
    html: str | None = Field(None, description="HTML body (with `text`: multipart/alternative).")
    attachments: list[AttachmentIn] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict, description="Extra header fields, e.g. "
                                    "`X-Campaign`; not From/To/Cc/Bcc/Subject/Reply-To/MIME fields.")


class Queued(BaseModel):
    """The message is committed to the outbox: it will not be lost."""

    id: str = Field(description="The queue id (as in `250 2.0.0 Ok: queued as <id>`).")
    status: Literal["queued"] = "queued"


class Diagnosis(BaseModel):
    """The catalogue entry that explains a failure."""

    id: str
    title: str
    cause: str
    fix: str
    link: str = ""


class AttemptOut(BaseModel):
    number: int
    started_at: datetime | None
    finished_at: datetime | None
    connection: str | None
    transport: str | None
    outcome: str | None
    code: str | None
    request_id: str | None
    detail: str | None
    diagnosis: Diagnosis | None


class MessageStatus(BaseModel):
    """A queued message and what became of it."""

    id: str
    state: str = Field(description="queued, sending, sent, deferred or failed.", examples=["queued"])
    connection: str
    sender: str
    recipients: list[str]
    subject: str
    size: int
    source: str
    client: str | None
    received_at: datetime | None
    next_attempt_at: datetime | None
    sent_at: datetime | None
    attempt_count: int
    last_code: str | None
    last_detail: str | None
    request_id: str | None
    diagnosis: Diagnosis | None = Field(description="Why the last attempt failed, with the fix.")
    attempts: list[AttemptOut]


class ProblemDetail(BaseModel):
    code: str = Field(examples=["sender_not_owned"])
    message: str
    fix: str


class Problem(BaseModel):
    """Every error: what went wrong and how to fix it."""

    error: ProblemDetail


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


_AUTH_TEXT = ("`Authorization: Bearer <key>` with a key of relay.api_keys.  Clients in "
              "relay.allowed_networks may omit the key when they address the API by IP literal or "
              "`localhost` (a browser page cannot: DNS rebinding uses a host name).")


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API."""
    models: list[type[BaseModel]] = [MessageIn, Queued, MessageStatus, Problem]
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                         mode="validation" if model is MessageIn else "serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    errors = {"400": _problem("The request or the message is not valid."),
              "401": _problem("No valid API key (and the client may not send without one)."),
              "403": _problem("This key or client may not send as this sender, or no connection owns it."),
              "413": _problem("The message is larger than relay.max_message_size."),
              "415": _problem("The body is neither application/json nor message/rfc822."),
              "503": _problem("The outbox is unavailable: nothing was queued, try again.")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "relay365 HTTP API", "version": __version__,
                 "description": "Queue mail for delivery through Microsoft 365.  " + _AUTH_TEXT},
        "paths": {
            "/api/v1/messages": {"post": {
                "operationId": "queueMessage",
                "summary": "Queue a message",
                "description": "202 only once the message is committed to the outbox.",
                "parameters": [
                    {"name": "to", "in": "query", "required": False,
                     "description": "message/rfc822 only: envelope recipients (repeat or comma-separate); "
                                    "default: the To, Cc and Bcc headers.",
                     "schema": {"type": "array", "items": {"type": "string"}}},
                    {"name": "from", "in": "query", "required": False,
                     "description": "message/rfc822 only: envelope sender; default: the From header.",
                     "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/MessageIn"}},
                    "message/rfc822": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"202": _ok("Queued.", "Queued"), **errors},
                "security": [{"bearer": []}, {}]}},
            "/api/v1/messages/{message_id}": {"get": {
                "operationId": "getMessage",
                "summary": "A queued message's state and delivery attempts",
                "parameters": [{"name": "message_id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": _ok("The message.", "MessageStatus"),
                              "401": errors["401"], "404": _problem("No such message (for this key)."),
                              "503": errors["503"]},
                "security": [{"bearer": []}, {}]}},
            "/api/v1/openapi.json": {"get": {
                "operationId": "getOpenApi", "summary": "This document",
                "responses": {"200": {"description": "The OpenAPI document.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": _AUTH_TEXT}}},
    }
