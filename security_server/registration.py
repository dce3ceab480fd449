"""Management requests a node sends the registry: register the node, register a client.

Rules:

- A request is the canonical JSON the registry verifies (see ``registry.management``)::

      {"type": "register_server", "server": "IQ/GOV/HJC/ss1", "address": "host:5500",
       "auth_cert": "<b64 DER>", "created_at": "2026-11-22T10:00:00Z", "nonce": "<random>"}
      {"type": "register_client", "server": ..., "client": "IQ/GOV/HJC/inheritance", ...}

  posted to ``{registry}/management/requests`` as ``{"request": b64, "signatures": {...},
  "ocsp": {...}}``. The registry's base URL is the anchor source's, without
  ``/globalconf/current``.
- ``owner`` signs with the signing key of the member that owns the node; ``register_server``
  is also signed with the authentication key (proof of possession). Each signer certificate
  travels with a fresh OCSP response fetched, just before sending, from the responder the
  global configuration lists for the certificate's CA; the configuration is downloaded first,
  so a node that cannot reach the registry fails before it signs anything. The CA's listed
  responders are asked with a :class:`trust_services.ocsp_client.ResponderPreference`: called
  inside a running node, pass the node's (``NodeRuntime.ocsp_preference``), so registration
  asks first the responder the node last got an answer from; ``jisr node register`` and
  ``add-client`` run alone and use one of their own for the request (the owner's certificate
  then benefits from what the authentication certificate's fetch learnt).
- A refusal is reported with the registry's own message; nothing is retried automatically
  (a request with the same content would need a new nonce anyway).
- These functions are what ``jisr node register`` / ``add-client`` and the demo call.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import secrets
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.serialization import Encoding

from certs.cms import sign_detached
from certs.signer import Signer
from config.errors import JisrError, RegistryError
from gateway.anchor import Anchor
from gateway.canonical import canonical_json, format_time
from gateway.globalconf import GlobalConf
from gateway.identifiers import ClientId, SecurityServerId
from security_server.conf_client import ConfClient
from security_server.node_dir import NodeDir
from security_server.node_keys import NodeKeys
from security_server.own_ocsp import fetch_own_ocsp
from trust_services.ocsp_client import ResponderPreference

MAX_RESPONSE_BYTES = 64 * 1024
TIMEOUT_S = 30.0


class RegistrationError(RegistryError):
    """The registry refused a management request, or could not be reached."""


@dataclasses.dataclass(frozen=True, slots=True)
class RequestState:
    """What the registry answered: the request's id and state (``submitted``, ``approved``)."""

    id: int
    type: str
    server: str
    client: str | None
    state: str
    reason: str | None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RequestState:
        return cls(
            id=int(obj["id"]),
            type=str(obj["type"]),
            server=str(obj["server"]),
            client=obj.get("client"),
            state=str(obj["state"]),
            reason=obj.get("reason"),
        )


def registry_base_url(anchor: Anchor) -> str:
    """The registry's base URL, derived from the anchor's first configuration source."""
    url = anchor.sources[0].url
    marker = "/globalconf/"
    if marker not in url:
        raise RegistrationError(
            f"the anchor source {url} does not end in /globalconf/current; cannot tell where "
            "the registry accepts management requests"
        )
    return url[: url.rindex(marker)]


def management_request(
    kind: str,
    server: SecurityServerId,
    *,
    now: dt.datetime,
    client: ClientId | None = None,
    address: str | None = None,
    auth_cert_der: bytes | None = None,
    nonce: str | None = None,
) -> bytes:
    """The canonical request bytes the signatures cover."""
    obj: dict[str, str] = {
        "type": kind,
        "server": str(server),
        "created_at": format_time(now),
        "nonce": nonce or secrets.token_urlsafe(24),
    }
    if client is not None:
        obj["client"] = str(client)
    if address is not None:
        obj["address"] = address
    if auth_cert_der is not None:
        obj["auth_cert"] = base64.b64encode(auth_cert_der).decode("ascii")
    return canonical_json(obj)


def request_body(
    raw: bytes,
    *,
    now: dt.datetime,
    owner: Signer,
    owner_ocsp: bytes,
    auth: Signer | None = None,
    auth_ocsp: bytes | None = None,
) -> bytes:
    """The POST body: detached signatures over ``raw`` and the stapled OCSP responses."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    signatures = {"owner": b64(sign_detached(raw, owner, signing_time=now))}
    ocsp = {"owner": b64(owner_ocsp)}
    if auth is not None:
        if auth_ocsp is None:
            raise ValueError("an auth signature needs its OCSP response")
        signatures["auth"] = b64(sign_detached(raw, auth, signing_time=now))
        ocsp["auth"] = b64(auth_ocsp)
    return json.dumps({"request": b64(raw), "signatures": signatures, "ocsp": ocsp}).encode()


async def submit(session: aiohttp.ClientSession, registry_url: str, body: bytes) -> RequestState:
    """POST a signed request; the registry's refusal becomes a RegistrationError."""
    url = registry_url.rstrip("/") + "/management/requests"
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        ) as resp:
            text = await resp.content.read(MAX_RESPONSE_BYTES)
            try:
                answer = json.loads(text)
            except ValueError:
                answer = None
            if resp.status >= 400 or not isinstance(answer, dict):
                message = (
                    answer.get("message") if isinstance(answer, dict) else None
                ) or f"HTTP {resp.status}"
                raise RegistrationError(f"the registry at {url} refused the request: {message}")
            return RequestState.from_json(answer)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RegistrationError(
            f"cannot reach the registry at {url}: {exc.__class__.__name__} {exc}".rstrip()
        ) from exc


@dataclasses.dataclass
class _Context:
    node: NodeDir
    server_id: SecurityServerId
    keys: NodeKeys
    conf: GlobalConf
    registry_url: str
    public_address: str


async def _context(node: NodeDir, session: aiohttp.ClientSession) -> _Context:
    settings = node.load_settings()
    anchor = node.load_anchor()
    client = ConfClient(node.globalconf_dir, anchor, session=session)
    client.load_cached()
    try:
        conf = await client.download()
    except JisrError as exc:
        raise RegistrationError(
            f"cannot download the global configuration before signing: {exc.message}"
        ) from exc
    return _Context(
        node=node,
        server_id=SecurityServerId.parse(settings.node.server_id),
        keys=NodeKeys(node),
        conf=conf,
        registry_url=registry_base_url(anchor),
        public_address=settings.node.public_address,
    )


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.UTC)


async def register_server(
    node: NodeDir,
    passphrase: str,
    *,
    session: aiohttp.ClientSession,
    now: dt.datetime | None = None,
    preference: ResponderPreference | None = None,
) -> RequestState:
    """Send ``register_server`` for this node (its address and authentication certificate).

    ``preference``: the running node's ``NodeRuntime.ocsp_preference`` when called inside the
    node process; a command that runs alone (``jisr node register``) leaves it out and gets
    one of its own for this request.
    """
    ctx = await _context(node, session)
    if not ctx.public_address:
        raise RegistrationError(
            "public_address is not set in node.toml; set it to the host:port other nodes use "
            "to reach this node's server side (port 5500 by default)"
        )
    at = _now(now)
    auth_installed = ctx.keys.require_auth()
    auth = ctx.keys.signer(auth_installed, passphrase)
    owner = ctx.keys.member_signer(ctx.server_id.owner, passphrase)
    preference = preference if preference is not None else ResponderPreference()
    auth_ocsp = await fetch_own_ocsp(
        session, ctx.conf, auth.certificate, now=at, preference=preference
    )
    owner_ocsp = await fetch_own_ocsp(
        session, ctx.conf, owner.certificate, now=at, preference=preference
    )
    raw = management_request(
        "register_server",
        ctx.server_id,
        now=at,
        address=ctx.public_address,
        auth_cert_der=auth.certificate.public_bytes(Encoding.DER),
    )
    body = request_body(
        raw,
        now=at,
        owner=owner,
        owner_ocsp=owner_ocsp.response_der,
        auth=auth,
        auth_ocsp=auth_ocsp.response_der,
    )
    return await submit(session, ctx.registry_url, body)


async def client_request(
    node: NodeDir,
    passphrase: str,
    client: ClientId,
    *,
    kind: str = "register_client",
    session: aiohttp.ClientSession,
    now: dt.datetime | None = None,
    preference: ResponderPreference | None = None,
) -> RequestState:
    """Send ``register_client`` (or ``delete_client``) for ``client``, signed by the owner.

    ``preference`` as for :func:`register_server` (``jisr node add-client`` runs alone and
    leaves it out).
    """
    if kind not in ("register_client", "delete_client"):
        raise ValueError(f"not a client request type: {kind}")
    ctx = await _context(node, session)
    if client.instance != ctx.server_id.instance:
        raise RegistrationError(
            f"client {client} belongs to instance {client.instance}, but this node is in "
            f"instance {ctx.server_id.instance}"
        )
    at = _now(now)
    owner = ctx.keys.member_signer(ctx.server_id.owner, passphrase)
    owner_ocsp = await fetch_own_ocsp(
        session, ctx.conf, owner.certificate, now=at, preference=preference
    )
    raw = management_request(kind, ctx.server_id, now=at, client=client)
    body = request_body(raw, now=at, owner=owner, owner_ocsp=owner_ocsp.response_der)
    return await submit(session, ctx.registry_url, body)
