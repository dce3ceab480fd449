"""Speaking transport v1 to a running node's server side by hand, as another node would.

Rules:
- A test plays a consumer node: it presents a node's authentication certificate over mutual
  TLS (the real one from a node's data directory, or one the demo CA issues for this test),
  pins the provider node's registered certificate, and posts envelopes it framed and signed
  itself with :mod:`gateway.transport`, so it can tamper with any byte.
- OCSP evidence comes from the demo responder, asked with a nonce so the answer is fresh and
  never a cached one from before a revocation.
- Faults come back in two forms (docs/node-exchange.md, "Signed faults"): bare JSON with
  ``X-Road-Error`` for refusals before the signer is known, and a signed response holding the
  fault for refusals after that. :func:`fault_of` reads either.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import ssl
import uuid
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from multidict import CIMultiDict

from certs.keystore import SoftwareKeyStore
from certs.ocsp import build_request
from certs.signer import SoftwareSigner
from gateway.faults import CLIENT_PROXY
from gateway.identifiers import ClientId, MemberId, ServiceId
from gateway.soap_fault import parse_soap_fault
from gateway.transport import (
    CONTENT_TYPE,
    EXCHANGE_PATH,
    RequestPart,
    ResponsePart,
    body_digest,
    decode_message,
    encode_message,
    sign_one,
)
from jisr.demo.exchanges import GET_CITIZEN, LIVING_CITIZEN
from jisr.demo.members import INHERITANCE
from jisr.demo.network import DEMO_PASSPHRASE, utc_now
from security_server.node_keys import NodeKeys
from security_server.runtime import TlsFiles
from security_server.tls import pinned_client_context
from tests.e2e.calls import Reply
from tests.e2e.network import E2eNetwork, RunningNodeInfo
from trust_services.ocsp_client import fetch_ocsp


def node_tls(node: RunningNodeInfo) -> TlsFiles:
    """The node's authentication certificate and encrypted key, from its data directory."""
    return NodeKeys(node.node_dir).tls_files(DEMO_PASSPHRASE)


def tls_context(cert_file: Path, key_file: Path, provider: RunningNodeInfo) -> ssl.SSLContext:
    """Mutual TLS presenting ``cert_file`` and accepting only ``provider``'s registered cert."""
    registered = NodeKeys(provider.node_dir).require_auth().certificate
    return pinned_client_context(
        cert_file, key_file, [registered], password=DEMO_PASSPHRASE.encode()
    )


def as_node(node: RunningNodeInfo, provider: RunningNodeInfo) -> ssl.SSLContext:
    """Mutual TLS as ``node`` (its own registered authentication certificate)."""
    tls = node_tls(node)
    return tls_context(tls.cert_file, tls.key_file, provider)


def member_signer(node: RunningNodeInfo, member: MemberId) -> SoftwareSigner:
    """The signing key and certificate ``node`` holds for ``member``."""
    return NodeKeys(node.node_dir).member_signer(member, DEMO_PASSPHRASE)


@dataclasses.dataclass(frozen=True)
class IssuedForTest:
    """A key the demo CA certified for one test, as a signer and as TLS files."""

    signer: SoftwareSigner
    cert_file: Path
    key_file: Path

    @property
    def certificate(self) -> x509.Certificate:
        return self.signer.certificate


def issue_for_test(
    network: E2eNetwork,
    directory: Path,
    profile: str,
    *,
    now: dt.datetime,
    days: int | None = None,
    member_id: str | None = None,
    server_id: str | None = None,
) -> IssuedForTest:
    """Have the demo CA issue a certificate of ``profile`` for a new key, valid from ``now``."""
    label = f"{profile}-{uuid.uuid4().hex[:12]}"
    keystore = SoftwareKeyStore(directory)
    issued = network.trust.ca.issue_for_new_key(
        "sign" if profile == "sign" else "auth",
        member_id or server_id or label,
        keystore=keystore,
        label=label,
        key_passphrase=DEMO_PASSPHRASE,
        now=now,
        days=days,
        member_id=member_id,
        server_id=server_id,
    )
    cert_file = directory / f"{label}.pem"
    cert_file.write_bytes(
        b"".join(c.public_bytes(Encoding.PEM) for c in (issued.certificate, *issued.chain))
    )
    signer = keystore.signer(label, DEMO_PASSPHRASE, issued.certificate, issued.chain)
    return IssuedForTest(signer, cert_file, directory / f"{label}.key.pem")


async def fresh_ocsp(network: E2eNetwork, cert: x509.Certificate) -> bytes:
    """The demo responder's current answer about ``cert`` (good, revoked or unknown)."""
    issuer = network.trust.ca.issuer_certificate
    return await fetch_ocsp(
        network.session,
        network.trust.ocsp_url,
        cert,
        issuer,
        request_der=build_request(cert, issuer, nonce=True),
    )


def citizen_request(
    *,
    client: ClientId = INHERITANCE,
    message_id: str | None = None,
    body: bytes = b"",
    created_at: dt.datetime | None = None,
) -> RequestPart:
    """HJC's court asking NDC's population register for a living citizen, over REST."""
    return RequestPart(
        protocol="REST",
        message_id=message_id or f"rogue-{uuid.uuid4()}",
        client=client,
        service=GET_CITIZEN,
        method="GET",
        path=f"/citizens/{LIVING_CITIZEN}",
        query=None,
        headers=(("Accept", "application/json"),),
        body_sha256=body_digest(body),
        created_at=created_at or utc_now(),
    )


def soap_request(
    soap: bytes, *, service: ServiceId = GET_CITIZEN, message_id: str | None = None
) -> RequestPart:
    """A SOAP request from HJC's court whose body is ``soap``, sent as ``text/xml``."""
    return RequestPart(
        protocol="SOAP",
        message_id=message_id or f"rogue-{uuid.uuid4()}",
        client=INHERITANCE,
        service=service,
        method="POST",
        path="",
        query=None,
        headers=(("Content-Type", "text/xml; charset=utf-8"),),
        body_sha256=body_digest(soap),
        created_at=utc_now(),
    )


def signature_over(part: RequestPart, signer: SoftwareSigner) -> bytes:
    """A genuine signature of ``signer``, over ``part`` (to be sent with another message)."""
    return sign_one(part, signer, now=utc_now()).signature


def seal(
    part: RequestPart,
    signer: SoftwareSigner,
    ocsp: bytes,
    *,
    body: bytes = b"",
    signature: bytes | None = None,
) -> bytes:
    """Frame ``part`` signed by ``signer`` (or carrying ``signature`` instead of the real one)."""
    sealed = sign_one(part, signer, now=utc_now())
    chosen = sealed.signature if signature is None else signature
    return encode_message(part, body, sealed.proof, chosen, ocsp)[1]


async def post_envelope(
    provider: RunningNodeInfo,
    data: bytes,
    ctx: ssl.SSLContext,
    *,
    content_type: str = CONTENT_TYPE,
    method: str = "POST",
    path: str = EXCHANGE_PATH,
) -> Reply:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            provider.server_url + path,
            data=io.BytesIO(data),
            headers={"Content-Type": content_type},
            ssl=ctx,
        ) as response,
    ):
        return Reply(response.status, CIMultiDict(response.headers), await response.read())


def answer_of(reply: Reply) -> tuple[ResponsePart, bytes]:
    """The signed response inside a 200 answer."""
    assert reply.status == 200, reply
    message = decode_message(
        reply.headers.get("Content-Type"), reply.body, prefix=CLIENT_PROXY, kind="response"
    )
    assert isinstance(message.signed_part, ResponsePart)
    return message.signed_part, message.body


def fault_of(reply: Reply) -> tuple[str, str]:
    """(code, message) of a bare JSON fault or of a fault carried in a signed response.

    A signed fault answering a SOAP request holds a SOAP Fault; for REST it holds JSON.
    """
    if reply.status != 200:
        fault = json.loads(reply.body)
        assert reply.error == fault["type"], reply
        return str(fault["type"]), str(fault["message"])
    response, body = answer_of(reply)
    assert response.status in (400, 500), response
    if response.protocol == "SOAP":
        soap = parse_soap_fault(body)
        assert soap is not None, body
        code, message = soap.fault_code, soap.message
    else:
        fault = json.loads(body)
        code, message = str(fault["type"]), str(fault["message"])
    assert ("X-Road-Error", code) in response.headers, response.headers
    return code, message
