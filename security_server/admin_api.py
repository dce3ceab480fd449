"""The node's admin API: REST/JSON under ``/api/v1/`` on the admin port (4000).

Rules:

- Every route except ``GET /api/v1/openapi.json`` needs ``Authorization: Bearer <api key>``
  (keys are made with ``jisr node api-key create``). A missing or unknown key is 401. Role
  ``auditor`` may read (GET) only, anything else is 403; role ``operator`` may do everything
  except read the message log.
- The message log (``/message-log/...``) is read-only and for role ``auditor`` only: it holds
  the exchanged bodies, which are the citizens' data, and reading them is the auditor's duty,
  not the operator's (an operator key is refused with 403; creating an auditor key leaves an
  audit row). Nothing in this API changes the log.
- Handlers are thin: parse the JSON body, call :class:`security_server.catalogue_store.
  CatalogueStore`, answer JSON. The store writes the audit row (actor ``api:<key name>``) in
  the same transaction as the change and refreshes the snapshot the request handlers read.
- Errors are ``{"type": <error class>, "message": <what was wrong and what to do>}`` with the
  error's HTTP status; unexpected exceptions are logged and answered 500 without details.
- Client identifiers travel in bodies and query strings as full strings
  (``IQ/GOV/NDC/population``), never in paths.
- ``openapi.json`` beside this module documents every route; a test keeps the two in sync.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol

from aiohttp import web
from cryptography import x509

from config.errors import JisrError, StorageError, ValidationError
from gateway.identifiers import ServiceId, parse_client
from gateway.log_record import LogRecord, format_time
from gateway.transport import encode_proof
from security_server.access_rights import GROUP_PREFIX
from security_server.catalogue_store import CatalogueStore, service_json
from security_server.runtime import Clock, ConfSource, utc_now
from webapi.admin import (
    CALLER,
    Caller,
    Forbidden,
    actor_of,
    api_key_middleware,
    certificate_field,
    json_errors_middleware,
    read_json_object,
)

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = 6 * 1024 * 1024  # a WSDL or OpenAPI document may be sent inline

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RecordNotFound(ValidationError):
    """No message-log record with the sequence number asked for (or it was deleted)."""

    http_status = 404


class MessageLogUnavailable(StorageError):
    """The node serving this API runs without a message log."""

    http_status = 503


class LogReader(Protocol):
    """The message log as the admin API reads it (``PostgresMessageLog`` satisfies it)."""

    async def search(
        self,
        *,
        message_id: str | None = None,
        client: str | None = None,
        service: str | None = None,
        user_id: str | None = None,
        issue: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[LogRecord]: ...

    async def read_records(self, *, after_seq: int = 0, limit: int = 1000) -> list[LogRecord]: ...

    async def archived_through(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class AdminContext:
    """What the handlers use: the catalogue, the node's status report, and its message log."""

    catalogue: CatalogueStore
    status: Callable[[], dict[str, Any]]
    conf: ConfSource | None = None
    clock: Clock = utc_now
    message_log: LogReader | None = None


CONTEXT = web.AppKey("node_admin_context", AdminContext)


def _is_protected(path: str) -> bool:
    return path != f"{API_PREFIX}/openapi.json"


async def _authenticate(request: web.Request, token: str) -> Caller | None:
    found = await request.app[CONTEXT].catalogue.authenticate(token)
    return None if found is None else Caller(*found)


errors_middleware = json_errors_middleware("node")
auth_middleware = api_key_middleware(
    _authenticate,
    protected=_is_protected,
    how_to_get_a_key="create one with `jisr node api-key create --role operator`",
)


def _store(request: web.Request) -> CatalogueStore:
    return request.app[CONTEXT].catalogue


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json_object(request, MAX_BODY_BYTES)


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"field {name!r} is required and must be a non-empty string")
    return value


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"field {name!r} must be a string")
    return value or None


def _opt_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValidationError(f"field {name!r} must be an integer")
    return value


def _opt_bool(data: dict[str, Any], name: str) -> bool | None:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise ValidationError(f"field {name!r} must be true or false")
    return value


def _query(request: web.Request, name: str) -> str | None:
    return request.query.get(name) or None


def _int_path(request: web.Request, name: str) -> int:
    text = request.match_info[name]
    if not text.isdigit() or len(text) > 9:
        raise ValidationError(f"{name} {text!r} is not a number")
    return int(text)


def _certificates(data: dict[str, Any]) -> list[x509.Certificate] | None:
    value = data.get("tls_certificates")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError("tls_certificates must be a list of PEM or base64 DER strings")
    return [certificate_field(text, "a TLS certificate") for text in value]


def _ok(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


# -- status ----------------------------------------------------------------------------------


async def get_status(request: web.Request) -> web.Response:
    return _ok(request.app[CONTEXT].status())


# -- clients ---------------------------------------------------------------------------------


async def list_clients(request: web.Request) -> web.Response:
    return _ok(_store(request).list_clients())


async def add_client(request: web.Request) -> web.Response:
    data = await _body(request)
    client = await _store(request).add_client(
        actor_of(request),
        _str(data, "client_id"),
        connection_type=_opt_str(data, "connection_type") or "http",
        tls_certs=_certificates(data) or (),
        body_logging=_opt_bool(data, "body_logging") is not False,
    )
    return _ok({"client_id": str(client.client_id), "body_logging": client.body_logging}, 201)


async def update_client(request: web.Request) -> web.Response:
    data = await _body(request)
    client = await _store(request).set_connection_type(
        actor_of(request),
        _str(data, "client_id"),
        _str(data, "connection_type"),
        _certificates(data),
    )
    return _ok({"client_id": str(client.client_id), "connection_type": client.connection_type})


async def set_body_logging(request: web.Request) -> web.Response:
    data = await _body(request)
    enabled = _opt_bool(data, "body_logging")
    if enabled is None:
        raise ValidationError(
            "field 'body_logging' is required: true keeps the bodies of the client's messages in "
            "the message log, false only their SHA-256 digests"
        )
    client = await _store(request).set_body_logging(
        actor_of(request), _str(data, "client_id"), enabled
    )
    return _ok({"client_id": str(client.client_id), "body_logging": client.body_logging})


async def remove_client(request: web.Request) -> web.Response:
    client_id = _query(request, "client_id")
    if client_id is None:
        raise ValidationError("give the client to remove as ?client_id=INSTANCE/CLASS/CODE/SUB")
    await _store(request).remove_client(actor_of(request), client_id)
    return web.Response(status=204)


# -- service descriptions --------------------------------------------------------------------


async def list_descriptions(request: web.Request) -> web.Response:
    return _ok(await _store(request).list_descriptions(_query(request, "provider")))


async def add_description(request: web.Request) -> web.Response:
    data = await _body(request)
    store, actor = _store(request), actor_of(request)
    provider = _str(data, "provider")
    kind = _str(data, "kind")
    url = _opt_str(data, "url")
    text = _opt_str(data, "document")
    document = text.encode("utf-8") if text is not None else None
    address = _opt_str(data, "address")
    if kind == "wsdl":
        description_id = await store.add_wsdl(
            actor, provider, url=url, document=document, address=address
        )
    elif kind == "openapi":
        description_id = await store.add_openapi(
            actor,
            provider,
            _str(data, "service_code"),
            url=url,
            document=document,
            address=address,
        )
    elif kind == "rest":
        if url is None:
            raise ValidationError("a REST service description needs its base URL in 'url'")
        description_id = await store.add_rest(actor, provider, _str(data, "service_code"), url)
    else:
        raise ValidationError(f"kind {kind!r} is unknown; use wsdl, openapi or rest")
    return _ok({"id": description_id}, 201)


async def remove_description(request: web.Request) -> web.Response:
    await _store(request).remove_description(actor_of(request), _int_path(request, "id"))
    return web.Response(status=204)


async def enable_description(request: web.Request) -> web.Response:
    await _store(request).set_enabled(actor_of(request), _int_path(request, "id"), True)
    return web.Response(status=204)


async def disable_description(request: web.Request) -> web.Response:
    data = await _body(request)
    notice = _opt_str(data, "notice") or ""
    await _store(request).set_enabled(actor_of(request), _int_path(request, "id"), False, notice)
    return web.Response(status=204)


# -- services --------------------------------------------------------------------------------


async def list_services(request: web.Request) -> web.Response:
    return _ok(_store(request).list_services(_query(request, "provider")))


async def update_service(request: web.Request) -> web.Response:
    data = await _body(request)
    service = await _store(request).update_service(
        actor_of(request),
        _str(data, "provider"),
        _str(data, "service_code"),
        address=_opt_str(data, "address"),
        timeout_s=_opt_int(data, "timeout_s"),
        tls_verify=_opt_bool(data, "tls_verify"),
    )
    return _ok(service_json(service))


async def _set_service_enabled(request: web.Request, enabled: bool) -> web.Response:
    data = await _body(request)
    store = _store(request)
    description_id = await store.description_of(_str(data, "provider"), _str(data, "service_code"))
    notice = "" if enabled else (_opt_str(data, "notice") or "")
    await store.set_enabled(actor_of(request), description_id, enabled, notice)
    return web.Response(status=204)


async def enable_service(request: web.Request) -> web.Response:
    return await _set_service_enabled(request, True)


async def disable_service(request: web.Request) -> web.Response:
    return await _set_service_enabled(request, False)


# -- access rights ---------------------------------------------------------------------------


async def list_rights(request: web.Request) -> web.Response:
    return _ok(
        await _store(request).list_rights(
            _query(request, "provider"), _query(request, "service_code")
        )
    )


async def grant_right(request: web.Request) -> web.Response:
    data = await _body(request)
    subject = _str(data, "subject")
    ctx = request.app[CONTEXT]
    if subject.startswith(GROUP_PREFIX) and ctx.conf is not None:
        code = subject[len(GROUP_PREFIX) :]
        try:
            conf = ctx.conf.current(ctx.clock())
        except JisrError:
            conf = None
        if conf is not None and not conf.has_group(code):
            raise ValidationError(
                f"global group {code!r} does not exist in the global configuration; ask the "
                "registry operator to create it, or check the spelling"
            )
    right_id = await ctx.catalogue.grant(
        actor_of(request),
        _str(data, "provider"),
        _str(data, "service_code"),
        subject,
        method=_opt_str(data, "method"),
        path=_opt_str(data, "path"),
    )
    return _ok({"id": right_id}, 201)


async def revoke_right(request: web.Request) -> web.Response:
    await _store(request).revoke_by_id(actor_of(request), _int_path(request, "id"))
    return web.Response(status=204)


# -- API keys and audit ----------------------------------------------------------------------


async def list_api_keys(request: web.Request) -> web.Response:
    return _ok(await _store(request).list_api_keys())


async def create_api_key(request: web.Request) -> web.Response:
    data = await _body(request)
    name, role = _str(data, "name"), _str(data, "role")
    key = await _store(request).create_api_key(actor_of(request), name, role)
    return _ok({"name": name, "role": role, "key": key}, 201)


async def revoke_api_key(request: web.Request) -> web.Response:
    await _store(request).revoke_api_key(actor_of(request), request.match_info["name"])
    return web.Response(status=204)


async def list_audit(request: web.Request) -> web.Response:
    text = request.query.get("limit", "100")
    if not text.isdigit():
        raise ValidationError("limit must be a number")
    return _ok(await _store(request).audit(int(text)))


# -- message log (auditors only, read-only) --------------------------------------------------

#: Most records one search returns (the log's own limit).
MAX_LOG_RESULTS = 1000


def _log_reader(request: web.Request) -> LogReader:
    caller = request[CALLER]
    if caller.role != "auditor":
        raise Forbidden(
            f"API key {caller.name!r} has role {caller.role}; the message log holds the exchanged "
            "data and is read with an auditor key (`jisr node api-key create --role auditor`)"
        )
    reader = request.app[CONTEXT].message_log
    if reader is None:
        raise MessageLogUnavailable("this node runs without a message log")
    return reader


def _query_time(request: web.Request, name: str) -> dt.datetime | None:
    text = _query(request, name)
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"{name} {text!r} is not an ISO 8601 time such as 2026-11-01T12:00:00Z"
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def record_summary(record: LogRecord, archived_through: int) -> dict[str, Any]:
    """One record as a search lists it: ids, times, digests, timestamp and archive state."""
    entry = record.entry
    stamp = record.timestamp
    return {
        "seq": record.seq,
        "logged_at": format_time(record.logged_at),
        "direction": entry.direction,
        "message_id": entry.message_id,
        "client": str(entry.client),
        "service": str(entry.service),
        "user_id": entry.user_id,
        "issue": entry.issue,
        "protocol": entry.protocol,
        "created_at": format_time(entry.created_at),
        "request_hash": entry.request_hash,
        "body_logged": entry.body is not None,
        "body_sha256": entry.body_digest,
        "record_hash": record.record_hash.hex(),
        "timestamp": None
        if stamp is None
        else {
            "batch_id": stamp.batch.batch_id,
            "gen_time": format_time(stamp.batch.gen_time),
            "tsa_url": stamp.batch.tsa_url,
        },
        "archived": record.seq <= archived_through,
    }


def record_parts(record: LogRecord, archived_through: int) -> dict[str, Any]:
    """One record with every part as stored (base64), enough to check it offline."""
    entry = record.entry
    document = record_summary(record, archived_through)
    document["record"] = json.loads(record.canonical_bytes())
    document["prev_hash"] = record.prev_hash.hex()
    document["parts"] = {
        "record": _b64(record.canonical_bytes()),
        "signed_part": _b64(entry.signed_part),
        "body": None if entry.body is None else _b64(entry.body),
        "signature": _b64(entry.signature),
        "proof": _b64(entry.proof),
        "certificates": [_b64(c) for c in entry.certificates],
        "ocsp": _b64(entry.ocsp),
    }
    stamp = record.timestamp
    if stamp is not None:
        document["timestamp"].update(
            {
                "root": stamp.batch.root.hex(),
                "size": stamp.batch.size,
                "token": _b64(stamp.batch.token),
                "proof": _b64(encode_proof(stamp.proof)),
            }
        )
    return document


async def search_message_log(request: web.Request) -> web.Response:
    reader = _log_reader(request)
    text = request.query.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= MAX_LOG_RESULTS:
        raise ValidationError(f"limit must be a number from 1 to {MAX_LOG_RESULTS}")
    order = request.query.get("order", "oldest")
    if order not in ("oldest", "newest"):
        raise ValidationError(f"order {order!r} is unknown; use oldest or newest")
    client = _query(request, "client")
    service = _query(request, "service")
    records = await reader.search(
        message_id=_query(request, "message_id"),
        client=None if client is None else str(parse_client(client)),
        service=None if service is None else str(ServiceId.parse(service)),
        user_id=_query(request, "user_id"),
        issue=_query(request, "issue"),
        since=_query_time(request, "since"),
        until=_query_time(request, "until"),
        limit=int(text),
        newest_first=order == "newest",
    )
    through = await reader.archived_through()
    return _ok(
        {
            "records": [record_summary(r, through) for r in records],
            "archived_through": through,
        }
    )


async def show_message_log_record(request: web.Request) -> web.Response:
    reader = _log_reader(request)
    text = request.match_info["seq"]
    if not text.isdigit() or len(text) > 18 or int(text) < 1:
        raise ValidationError(f"record {text!r} is not a sequence number (1, 2, 3, ...)")
    seq = int(text)
    found = await reader.read_records(after_seq=seq - 1, limit=1)
    if not found or found[0].seq != seq:
        raise RecordNotFound(
            f"the message log holds no record {seq}; it was never written, or it was archived "
            "and deleted after the retention period (search the archives)"
        )
    return _ok(record_parts(found[0], await reader.archived_through()))


# -- OpenAPI ---------------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    text = resources.files("security_server").joinpath("admin_openapi.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


async def get_openapi(request: web.Request) -> web.Response:
    return _ok(openapi_document())


#: (method, path under /api/v1, handler): the whole admin API.
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/openapi.json", get_openapi),
    ("GET", "/status", get_status),
    ("GET", "/clients", list_clients),
    ("POST", "/clients", add_client),
    ("PATCH", "/clients", update_client),
    ("DELETE", "/clients", remove_client),
    ("PUT", "/clients/body-logging", set_body_logging),
    ("GET", "/service-descriptions", list_descriptions),
    ("POST", "/service-descriptions", add_description),
    ("DELETE", "/service-descriptions/{id}", remove_description),
    ("POST", "/service-descriptions/{id}/enable", enable_description),
    ("POST", "/service-descriptions/{id}/disable", disable_description),
    ("GET", "/services", list_services),
    ("PATCH", "/services", update_service),
    ("POST", "/services/enable", enable_service),
    ("POST", "/services/disable", disable_service),
    ("GET", "/access-rights", list_rights),
    ("POST", "/access-rights", grant_right),
    ("DELETE", "/access-rights/{id}", revoke_right),
    ("GET", "/api-keys", list_api_keys),
    ("POST", "/api-keys", create_api_key),
    ("DELETE", "/api-keys/{name}", revoke_api_key),
    ("GET", "/audit-log", list_audit),
    ("GET", "/message-log/records", search_message_log),
    ("GET", "/message-log/records/{seq}", show_message_log_record),
]


def admin_app(context: AdminContext) -> web.Application:
    """The admin application; the node serves it on its admin port."""
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=MAX_BODY_BYTES
    )
    app[CONTEXT] = context
    for method, path, handler in ROUTES:
        app.router.add_route(method, API_PREFIX + path, handler)
    return app
