"""Call services through your own node's client side with the X-Road message protocol for REST.

Rules:

- A call is ``{METHOD} {node}/r1/{instance}/{class}/{member}/{subsystem}/{serviceCode}{path}``;
  each identifier part is percent-encoded on its own, the rest of the path goes to the
  provider unchanged. REST services have no version in X-Road: a :class:`ServiceId` with a
  version is refused rather than silently dropped.
- Every request carries ``X-Road-Client``; ``X-Road-Id`` is generated here (uuid4) unless
  given, so the caller knows it before the answer arrives; ``X-Road-UserId`` and
  ``X-Road-Issue`` are sent when given.
- A response with ``X-Road-Error`` is a fault of a node: it is raised as
  :class:`~gateway.faults.FaultError` with the code from the header (or the JSON ``type``),
  the JSON ``message`` and the ``detail`` id. Any other response, whatever its status, is the
  provider's own answer and is returned unchanged: provider errors pass through X-Road.
- No connection to the node is :class:`~adapters.errors.NodeUnreachableError`; a response
  larger than ``max_body_bytes`` or a metaservice answer in the wrong shape is
  :class:`~adapters.errors.UnexpectedResponseError`. Redirects are not followed.
- Metaservices (PR-MREST): ``listClients`` is a plain GET on the node; ``listMethods``,
  ``allowedMethods`` and ``getOpenAPI`` are ordinary calls addressed to the provider subsystem.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from adapters.errors import NodeUnreachableError, UnexpectedResponseError
from config.errors import IdentifierError, ValidationError
from gateway import rest
from gateway.faults import FaultError
from gateway.identifiers import ClientId, MemberId, ServiceId, SubsystemId, parse_client

DEFAULT_MAX_BODY_BYTES: Final = 10 * 1024 * 1024
DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=60, connect=10)


@dataclasses.dataclass(frozen=True, slots=True)
class XRoadResponseHeaders:
    """The ``X-Road-*`` headers a node adds to a REST response."""

    client: str | None
    service: str | None
    id: str | None
    request_id: str | None
    request_hash: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> XRoadResponseHeaders:
        return cls(
            client=headers.get("X-Road-Client"),
            service=headers.get("X-Road-Service"),
            id=headers.get("X-Road-Id"),
            request_id=headers.get("X-Road-Request-Id"),
            request_hash=headers.get("X-Road-Request-Hash"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RestResult:
    """A provider's answer as the node returned it."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    x_road: XRoadResponseHeaders

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; a body that is not JSON is an ``UnexpectedResponseError``."""
        try:
            return jsonlib.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnexpectedResponseError(
                f"the response ({self.status}, {self.content_type or 'no content type'}) is not "
                f"JSON: {exc}"
            ) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class ListedService:
    """One entry of a ``listMethods`` / ``allowedMethods`` answer."""

    id: ServiceId
    service_type: str | None
    endpoints: tuple[Endpoint, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ListedClient:
    """One entry of a ``listClients`` answer: a member or subsystem and its name."""

    id: ClientId
    name: str | None
    subsystem_name: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceDescription:
    """An OpenAPI description as the provider published it (JSON or YAML)."""

    text: str
    content_type: str

    def as_json(self) -> Any:
        try:
            return jsonlib.loads(self.text)
        except ValueError as exc:
            raise UnexpectedResponseError(
                f"the service description ({self.content_type}) is not JSON; read .text instead"
            ) from exc


def service_path(service: ServiceId) -> str:
    """``/r1/{serviceId}`` for ``service`` (without the provider's own path)."""
    if service.service_version is not None:
        raise ValidationError(
            f"service {service} has a version; X-Road REST services are addressed without one, "
            "drop the version from the service id"
        )
    if service.subsystem_code is None:
        raise ValidationError(
            f"service {service} belongs to a member; X-Road REST services belong to subsystems"
        )
    return rest.rest_path(service)


#: Characters left as they are in the provider's path: RFC 3986 pchar, "/" and "%" (so that
#: an already percent-encoded path is not encoded twice).
_PATH_SAFE: Final = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE: Final = _PATH_SAFE + "?"


def _provider_path(path: str) -> str:
    if not path:
        return ""
    if not path.startswith("/"):
        path = "/" + path
    path, mark, query = path.partition("?")
    return quote(path, safe=_PATH_SAFE) + mark + quote(query, safe=_QUERY_SAFE)


def _client_from_json(item: Any, where: str) -> ClientId:
    if not isinstance(item, Mapping):
        raise UnexpectedResponseError(f"{where}: expected an identifier object, got {item!r}")
    try:
        instance = str(item["xroad_instance"])
        member_class = str(item["member_class"])
        member_code = str(item["member_code"])
        subsystem = item.get("subsystem_code")
        if subsystem:
            return SubsystemId(instance, member_class, member_code, str(subsystem))
        return MemberId(instance, member_class, member_code)
    except (KeyError, IdentifierError) as exc:
        raise UnexpectedResponseError(f"{where}: malformed identifier {item!r}: {exc}") from exc


def _services_from_json(document: Any, where: str) -> list[ListedService]:
    items = document.get("service") if isinstance(document, Mapping) else None
    if not isinstance(items, list):
        raise UnexpectedResponseError(f"{where}: expected a JSON object with a 'service' list")
    services = []
    for item in items:
        provider = _client_from_json(item, where)
        try:
            service = ServiceId.for_client(
                provider, str(item["service_code"]), item.get("service_version") or None
            )
        except (KeyError, IdentifierError) as exc:
            raise UnexpectedResponseError(f"{where}: malformed service {item!r}: {exc}") from exc
        endpoints = tuple(
            Endpoint(str(e.get("method", "*")), str(e.get("path", "*")))
            for e in item.get("endpoint_list") or []
            if isinstance(e, Mapping)
        )
        services.append(ListedService(service, item.get("service_type"), endpoints))
    return services


class XRoadRestClient:
    """An information system's REST connection to its own node's client side.

    ``base_url`` is the node's client-side address (``http://node:8080`` or
    ``https://node:8443``); ``client_id`` the calling subsystem (``IQ/GOV/HJC/inheritance``).
    Pass your own ``session`` to control TLS (client certificates) and pooling; otherwise one
    is made and closed by :meth:`close` or ``async with``.
    """

    def __init__(
        self,
        base_url: str,
        client_id: ClientId | str,
        *,
        session: aiohttp.ClientSession | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = URL(base_url.rstrip("/"))
        self.client_id = parse_client(client_id) if isinstance(client_id, str) else client_id
        self._session = session
        self._owns_session = session is None
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout

    async def __aenter__(self) -> XRoadRestClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _session_for_call(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def call(
        self,
        method: str,
        service_id: ServiceId | str,
        path: str = "",
        *,
        json: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        user_id: str | None = None,
        issue: str | None = None,
        message_id: str | None = None,
        security_server: str | None = None,
    ) -> RestResult:
        """Call ``service_id`` with ``path`` (``/citizens/198503141027``) and return its answer.

        Raises :class:`FaultError` when a node reports an X-Road fault.
        """
        service = ServiceId.parse(service_id) if isinstance(service_id, str) else service_id
        url = URL(str(self.base_url) + service_path(service) + _provider_path(path), encoded=True)
        if params:
            url = url.update_query(params)
        request_headers = dict(headers or {})
        request_headers["X-Road-Client"] = rest.client_header_value(self.client_id)
        request_headers["X-Road-Id"] = message_id or str(uuid.uuid4())
        if user_id is not None:
            request_headers["X-Road-UserId"] = user_id
        if issue is not None:
            request_headers["X-Road-Issue"] = issue
        if security_server is not None:
            request_headers["X-Road-Security-Server"] = security_server
        return await self._send(method.upper(), url, request_headers, json=json, data=data)

    async def _send(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        *,
        json: Any = None,
        data: bytes | None = None,
    ) -> RestResult:
        session = self._session_for_call()
        try:
            async with session.request(
                method, url, headers=headers, json=json, data=data, allow_redirects=False
            ) as response:
                body = await self._read(response)
                result = RestResult(
                    status=response.status,
                    headers=response.headers,
                    body=body,
                    x_road=XRoadResponseHeaders.from_headers(response.headers),
                )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise NodeUnreachableError(
                f"cannot reach the node's client side at {self.base_url}: {exc!s} "
                "(check the address, the port and that the node is running)"
            ) from exc
        error = result.headers.get("X-Road-Error")
        if error is not None:
            raise _fault_of(result, error)
        return result

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        if response.content_length is not None and response.content_length > self.max_body_bytes:
            raise UnexpectedResponseError(
                f"the response is {response.content_length} bytes, over the limit of "
                f"{self.max_body_bytes}; raise max_body_bytes if this is expected"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_body_bytes:
                raise UnexpectedResponseError(
                    f"the response is over the limit of {self.max_body_bytes} bytes; raise "
                    "max_body_bytes if this is expected"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # --- metaservices (PR-MREST) ------------------------------------------------------------

    async def list_clients(self, instance: str | None = None) -> list[ListedClient]:
        """Members and subsystems of the instance (another instance with ``instance``)."""
        url = self.base_url / "listClients"
        if instance is not None:
            url = url.with_query({"xRoadInstance": instance})
        result = await self._send("GET", url, {"Accept": "application/json"})
        _require_ok(result, "listClients")
        document = result.json()
        items = document.get("member") if isinstance(document, Mapping) else None
        if not isinstance(items, list):
            raise UnexpectedResponseError(
                "listClients: expected a JSON object with a 'member' list"
            )
        clients = []
        for item in items:
            if not isinstance(item, Mapping):
                raise UnexpectedResponseError(f"listClients: malformed entry {item!r}")
            name = item.get("name")
            subsystem_name = item.get("subsystem_name")
            clients.append(
                ListedClient(
                    _client_from_json(item.get("id"), "listClients"),
                    str(name) if name is not None else None,
                    str(subsystem_name) if subsystem_name is not None else None,
                )
            )
        return clients

    async def _metaservice(
        self, subsystem: ClientId | str, code: str, params: Mapping[str, str] | None = None
    ) -> RestResult:
        provider = parse_client(subsystem) if isinstance(subsystem, str) else subsystem
        service = ServiceId.for_client(provider, code)
        result = await self.call(
            "GET", service, params=params, headers={"Accept": "application/json"}
        )
        _require_ok(result, code)
        return result

    async def list_methods(self, subsystem: ClientId | str) -> list[ListedService]:
        """REST services the provider ``subsystem`` offers."""
        result = await self._metaservice(subsystem, "listMethods")
        return _services_from_json(result.json(), "listMethods")

    async def allowed_methods(self, subsystem: ClientId | str) -> list[ListedService]:
        """REST services of ``subsystem`` this client may call."""
        result = await self._metaservice(subsystem, "allowedMethods")
        return _services_from_json(result.json(), "allowedMethods")

    async def get_openapi(self, subsystem: ClientId | str, service_code: str) -> ServiceDescription:
        """The OpenAPI description of ``service_code`` offered by ``subsystem``."""
        result = await self._metaservice(subsystem, "getOpenAPI", {"serviceCode": service_code})
        return ServiceDescription(result.text, result.content_type)


def _require_ok(result: RestResult, what: str) -> None:
    if not result.ok:
        raise UnexpectedResponseError(
            f"{what} answered HTTP {result.status} without an X-Road fault: {result.text[:200]}"
        )


def _fault_of(result: RestResult, header_code: str) -> FaultError:
    """The :class:`FaultError` a node reported with ``X-Road-Error`` and its JSON body."""
    body: Any = None
    try:
        body = jsonlib.loads(result.body) if result.body else None
    except (ValueError, UnicodeDecodeError):
        body = None
    # The header is what X-Road clients match on; the body's type is the fallback.
    code = header_code.strip()
    message = result.text.strip() or f"the node reported {code} without a message"
    detail: str | None = None
    if isinstance(body, Mapping):
        code = code or str(body.get("type") or "")
        message = str(body.get("message") or message)
        detail = str(body["detail"]) if body.get("detail") is not None else None
    fault = FaultError(
        code or "Server.ClientProxy.InternalError", message, http_status=result.status
    )
    if detail is not None:
        fault.detail = detail
    return fault
