"""The registry's admin API: REST/JSON under ``/api/v1/``, for operators and auditors.

Rules:

- Every route except ``GET /api/v1/openapi.json`` needs ``Authorization: Bearer <api key>``.
  A missing or unknown key is 401; role ``auditor`` may only read (GET), so any other method
  is 403 for it; role ``operator`` may do everything.
- Handlers are thin: parse the JSON body, call :class:`registry.store.RegistryStore` (or
  :class:`registry.management.ManagementService`), return JSON. The audit row is written by
  the store in the same transaction as the change, with the API key's name as the actor.
- Errors are JSON ``{"type": <error class>, "message": <what was wrong and what to do>}``
  with the error's HTTP status; unexpected exceptions are logged and answered with 500
  without details.
- Identifiers in paths are the parts inside this instance (``members/GOV/NDC``); client
  identifiers in bodies and queries are full strings (``IQ/GOV/NDC/population``).
- ``openapi.json`` beside this module describes every route; a test keeps them in sync.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from config.errors import ValidationError
from gateway.identifiers import MemberId, SecurityServerId, SubsystemId, parse_client
from registry.conf_keys import announce_new_key
from registry.management import ManagementService
from registry.store import RegistryStore
from webapi.admin import (
    Caller,
    actor_of,
    api_key_middleware,
    certificate_field,
    json_errors_middleware,
    read_json_object,
)

log = structlog.get_logger(__name__)

API_PREFIX = "/api/v1"
#: Largest admin request body (a CA with intermediates fits easily).
MAX_BODY_BYTES = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class RegistryContext:
    """What the handlers need, stored once on the application."""

    store: RegistryStore
    management: ManagementService
    data_dir: Path
    passphrase: bytes
    clock: Callable[[], dt.datetime]


CONTEXT = web.AppKey("registry_context", RegistryContext)


def _is_protected(path: str) -> bool:
    return path.startswith(API_PREFIX + "/") and path != f"{API_PREFIX}/openapi.json"


async def _authenticate(request: web.Request, token: str) -> Caller | None:
    key = await request.app[CONTEXT].store.authenticate(token)
    return None if key is None else Caller(key.name, key.role)


errors_middleware = json_errors_middleware("registry")
auth_middleware = api_key_middleware(_authenticate, protected=_is_protected)


def _ctx(request: web.Request) -> RegistryContext:
    return request.app[CONTEXT]


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json_object(request, MAX_BODY_BYTES)


def _str(data: dict[str, Any], name: str, *, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise ValidationError(f"field {name!r} is required and must be a string")
    return value


def _der(value: object, what: str) -> bytes:
    """A certificate given as base64 DER or PEM text."""
    return certificate_field(value, what).public_bytes(Encoding.DER)


def _member(request: web.Request, instance: str) -> MemberId:
    return MemberId(instance, request.match_info["member_class"], request.match_info["member_code"])


def _server(request: web.Request, instance: str) -> SecurityServerId:
    return SecurityServerId(
        instance,
        request.match_info["member_class"],
        request.match_info["member_code"],
        request.match_info["server_code"],
    )


async def _instance(request: web.Request) -> str:
    return (await _ctx(request).store.settings()).instance_id


def _ok(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


# -- instance, classes, members ----------------------------------------------------------------


async def get_instance(request: web.Request) -> web.Response:
    return _ok((await _ctx(request).store.settings()).to_json())


async def patch_instance(request: web.Request) -> web.Response:
    settings = await _ctx(request).store.update_settings(actor_of(request), await _body(request))
    return _ok(settings.to_json())


async def list_member_classes(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.list_member_classes())


async def add_member_class(request: web.Request) -> web.Response:
    data = await _body(request)
    code = _str(data, "code")
    await _ctx(request).store.add_member_class(
        actor_of(request), code, _str(data, "description", default="")
    )
    return _ok({"code": code}, 201)


async def delete_member_class(request: web.Request) -> web.Response:
    await _ctx(request).store.delete_member_class(actor_of(request), request.match_info["code"])
    return _ok({})


async def list_members(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.list_members())


async def add_member(request: web.Request) -> web.Response:
    data = await _body(request)
    member = MemberId.parse(_str(data, "id"))
    await _ctx(request).store.add_member(actor_of(request), member, _str(data, "name"))
    return _ok(await _ctx(request).store.get_member(member), 201)


async def get_member(request: web.Request) -> web.Response:
    member = _member(request, await _instance(request))
    return _ok(await _ctx(request).store.get_member(member))


async def patch_member(request: web.Request) -> web.Response:
    member = _member(request, await _instance(request))
    data = await _body(request)
    await _ctx(request).store.rename_member(actor_of(request), member, _str(data, "name"))
    return _ok(await _ctx(request).store.get_member(member))


async def delete_member(request: web.Request) -> web.Response:
    member = _member(request, await _instance(request))
    await _ctx(request).store.delete_member(actor_of(request), member)
    return _ok({})


async def add_subsystem(request: web.Request) -> web.Response:
    member = _member(request, await _instance(request))
    data = await _body(request)
    subsystem = SubsystemId(
        member.instance, member.member_class, member.member_code, _str(data, "code")
    )
    await _ctx(request).store.add_subsystem(actor_of(request), subsystem)
    return _ok({"id": str(subsystem)}, 201)


async def delete_subsystem(request: web.Request) -> web.Response:
    member = _member(request, await _instance(request))
    subsystem = SubsystemId(
        member.instance,
        member.member_class,
        member.member_code,
        request.match_info["subsystem_code"],
    )
    await _ctx(request).store.delete_subsystem(actor_of(request), subsystem)
    return _ok({})


# -- security servers ------------------------------------------------------------------------------


async def list_servers(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.list_servers())


async def add_server(request: web.Request) -> web.Response:
    data = await _body(request)
    server = SecurityServerId.parse(_str(data, "id"))
    certs = data.get("auth_certs", [])
    if not isinstance(certs, list):
        raise ValidationError("auth_certs must be a list of certificates")
    await _ctx(request).store.add_server(
        actor_of(request),
        server,
        _str(data, "address"),
        [_der(c, f"auth_certs[{i}]") for i, c in enumerate(certs)],
    )
    return _ok(await _ctx(request).store.get_server(server), 201)


async def get_server(request: web.Request) -> web.Response:
    server = _server(request, await _instance(request))
    return _ok(await _ctx(request).store.get_server(server))


async def patch_server(request: web.Request) -> web.Response:
    server = _server(request, await _instance(request))
    data = await _body(request)
    await _ctx(request).store.set_server_address(actor_of(request), server, _str(data, "address"))
    return _ok(await _ctx(request).store.get_server(server))


async def delete_server(request: web.Request) -> web.Response:
    server = _server(request, await _instance(request))
    await _ctx(request).store.delete_server(actor_of(request), server)
    return _ok({})


async def add_server_client(request: web.Request) -> web.Response:
    server = _server(request, await _instance(request))
    client = parse_client(_str(await _body(request), "client"))
    await _ctx(request).store.add_server_client(actor_of(request), server, client)
    return _ok(await _ctx(request).store.get_server(server), 201)


async def remove_server_client(request: web.Request) -> web.Response:
    server = _server(request, await _instance(request))
    client = parse_client(_query(request, "client"))
    await _ctx(request).store.remove_server_client(actor_of(request), server, client)
    return _ok(await _ctx(request).store.get_server(server))


def _query(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise ValidationError(f"query parameter {name!r} is required")
    return value


# -- trust services --------------------------------------------------------------------------------


async def list_cas(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.list_cas())


async def add_ca(request: web.Request) -> web.Response:
    data = await _body(request)
    intermediates = data.get("intermediates", [])
    ocsp = data.get("ocsp", [])
    if not isinstance(intermediates, list) or not isinstance(ocsp, list):
        raise ValidationError("intermediates and ocsp must be lists")
    responders: list[tuple[str, bytes | None]] = []
    for i, entry in enumerate(ocsp):
        if not isinstance(entry, dict):
            raise ValidationError(f"ocsp[{i}] must be an object with url and certificate")
        url = _str(entry, "url")
        _check_http_url(url, f"ocsp[{i}].url")
        cert = entry.get("certificate")
        responders.append((url, _der(cert, f"ocsp[{i}].certificate") if cert else None))
    name = _str(data, "name")
    await _ctx(request).store.add_ca(
        actor_of(request),
        name,
        _der(data.get("certificate"), "certificate"),
        intermediates=[_der(c, f"intermediates[{i}]") for i, c in enumerate(intermediates)],
        ocsp=responders,
        profile=_str(data, "profile", default="jisr/1"),
    )
    return _ok({"name": name}, 201)


async def delete_ca(request: web.Request) -> web.Response:
    await _ctx(request).store.delete_ca(actor_of(request), request.match_info["name"])
    return _ok({})


def _check_http_url(url: str, what: str) -> None:
    if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
        raise ValidationError(f"{what} {url!r} is not an http:// or https:// URL")


async def list_tsas(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.list_tsas())


async def add_tsa(request: web.Request) -> web.Response:
    data = await _body(request)
    name, url = _str(data, "name"), _str(data, "url")
    _check_http_url(url, "url")
    await _ctx(request).store.add_tsa(
        actor_of(request), name, url, _der(data.get("certificate"), "certificate")
    )
    return _ok({"name": name}, 201)


async def delete_tsa(request: web.Request) -> web.Response:
    await _ctx(request).store.delete_tsa(actor_of(request), request.match_info["name"])
    return _ok({})


# -- global groups ---------------------------------------------------------------------------------


async def list_groups(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.list_groups())


async def add_group(request: web.Request) -> web.Response:
    data = await _body(request)
    code = _str(data, "code")
    await _ctx(request).store.add_group(
        actor_of(request), code, _str(data, "description", default="")
    )
    return _ok({"code": code}, 201)


async def delete_group(request: web.Request) -> web.Response:
    await _ctx(request).store.delete_group(actor_of(request), request.match_info["code"])
    return _ok({})


async def add_group_member(request: web.Request) -> web.Response:
    client = parse_client(_str(await _body(request), "client"))
    await _ctx(request).store.add_group_member(
        actor_of(request), request.match_info["code"], client
    )
    return _ok({"code": request.match_info["code"], "client": str(client)}, 201)


async def remove_group_member(request: web.Request) -> web.Response:
    client = parse_client(_query(request, "client"))
    await _ctx(request).store.remove_group_member(
        actor_of(request), request.match_info["code"], client
    )
    return _ok({})


# -- management requests -------------------------------------------------------------------------


def _request_id(request: web.Request) -> int:
    text = request.match_info["request_id"]
    if not text.isdigit():
        raise ValidationError(f"management request id {text!r} is not a number")
    return int(text)


async def list_requests(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.list_requests(request.query.get("state")))


async def get_request(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.get_request(_request_id(request)))


async def approve_request(request: web.Request) -> web.Response:
    reason = _str(await _body(request), "reason", default="")
    return _ok(
        await _ctx(request).management.decide(
            actor_of(request), _request_id(request), "approve", reason
        )
    )


async def decline_request(request: web.Request) -> web.Response:
    reason = _str(await _body(request), "reason", default="")
    return _ok(
        await _ctx(request).management.decide(
            actor_of(request), _request_id(request), "decline", reason
        )
    )


# -- configuration signing keys and versions ------------------------------------------------------


async def list_conf_keys(request: web.Request) -> web.Response:
    return _ok([k.to_json() for k in await _ctx(request).store.list_conf_keys()])


async def add_conf_key(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    key_id = await announce_new_key(
        ctx.store, ctx.data_dir, ctx.passphrase, actor=actor_of(request), now=ctx.clock()
    )
    return _ok({"key_id": key_id, "state": "announced"}, 201)


async def activate_conf_key(request: web.Request) -> web.Response:
    await _ctx(request).store.activate_conf_key(actor_of(request), request.match_info["key_id"])
    return _ok({"key_id": request.match_info["key_id"], "state": "active"})


async def retire_conf_key(request: web.Request) -> web.Response:
    await _ctx(request).store.retire_conf_key(actor_of(request), request.match_info["key_id"])
    return _ok({"key_id": request.match_info["key_id"], "state": "retired"})


async def list_versions(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.list_versions(_int_query(request, "limit", 50)))


def _int_query(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise ValidationError(f"query parameter {name!r} must be a non-negative integer")
    return int(text)


# -- audit log and API keys ----------------------------------------------------------------------


async def list_audit(request: web.Request) -> web.Response:
    return _ok(
        await _ctx(request).store.list_audit(
            after_id=_int_query(request, "after", 0),
            limit=_int_query(request, "limit", 100),
            action=request.query.get("action"),
        )
    )


async def list_api_keys(request: web.Request) -> web.Response:
    return _ok(await _ctx(request).store.list_api_keys())


async def create_api_key(request: web.Request) -> web.Response:
    data = await _body(request)
    name, role = _str(data, "name"), _str(data, "role")
    key = await _ctx(request).store.create_api_key(actor_of(request), name, role)
    return _ok({"name": name, "role": role, "key": key}, 201)


async def revoke_api_key(request: web.Request) -> web.Response:
    await _ctx(request).store.revoke_api_key(actor_of(request), request.match_info["name"])
    return _ok({})


# -- OpenAPI ---------------------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    text = resources.files("registry").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


async def get_openapi(request: web.Request) -> web.Response:
    return _ok(openapi_document())


_MEMBER = "/members/{member_class}/{member_code}"
_SERVER = "/security-servers/{member_class}/{member_code}/{server_code}"

#: (method, path under /api/v1, handler): the whole admin API.
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/openapi.json", get_openapi),
    ("GET", "/instance", get_instance),
    ("PATCH", "/instance", patch_instance),
    ("GET", "/member-classes", list_member_classes),
    ("POST", "/member-classes", add_member_class),
    ("DELETE", "/member-classes/{code}", delete_member_class),
    ("GET", "/members", list_members),
    ("POST", "/members", add_member),
    ("GET", _MEMBER, get_member),
    ("PATCH", _MEMBER, patch_member),
    ("DELETE", _MEMBER, delete_member),
    ("POST", _MEMBER + "/subsystems", add_subsystem),
    ("DELETE", _MEMBER + "/subsystems/{subsystem_code}", delete_subsystem),
    ("GET", "/security-servers", list_servers),
    ("POST", "/security-servers", add_server),
    ("GET", _SERVER, get_server),
    ("PATCH", _SERVER, patch_server),
    ("DELETE", _SERVER, delete_server),
    ("POST", _SERVER + "/clients", add_server_client),
    ("DELETE", _SERVER + "/clients", remove_server_client),
    ("GET", "/approved-cas", list_cas),
    ("POST", "/approved-cas", add_ca),
    ("DELETE", "/approved-cas/{name}", delete_ca),
    ("GET", "/approved-tsas", list_tsas),
    ("POST", "/approved-tsas", add_tsa),
    ("DELETE", "/approved-tsas/{name}", delete_tsa),
    ("GET", "/global-groups", list_groups),
    ("POST", "/global-groups", add_group),
    ("DELETE", "/global-groups/{code}", delete_group),
    ("POST", "/global-groups/{code}/members", add_group_member),
    ("DELETE", "/global-groups/{code}/members", remove_group_member),
    ("GET", "/management-requests", list_requests),
    ("GET", "/management-requests/{request_id}", get_request),
    ("POST", "/management-requests/{request_id}/approve", approve_request),
    ("POST", "/management-requests/{request_id}/decline", decline_request),
    ("GET", "/conf-keys", list_conf_keys),
    ("POST", "/conf-keys", add_conf_key),
    ("POST", "/conf-keys/{key_id}/activate", activate_conf_key),
    ("POST", "/conf-keys/{key_id}/retire", retire_conf_key),
    ("GET", "/globalconf-versions", list_versions),
    ("GET", "/audit-log", list_audit),
    ("GET", "/api-keys", list_api_keys),
    ("POST", "/api-keys", create_api_key),
    ("DELETE", "/api-keys/{name}", revoke_api_key),
]


def add_admin_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, API_PREFIX + path, handler)
