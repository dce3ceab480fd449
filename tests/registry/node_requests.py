"""What a node sends the registry, built in tests: signed requests with stapled OCSP."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import secrets
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.cms import sign_detached
from certs.ocsp import OcspResponder, build_request
from certs.signer import SoftwareSigner
from certs.status import CertStatus
from tests.pki_factory import FixturePki, Issued


@dataclasses.dataclass
class NodeCa:
    """A FixturePki with a delegated OCSP responder whose answers the test controls."""

    pki: FixturePki
    responder_cert: Issued
    revoked: dict[int, CertStatus] = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, cn: str = "Jisr Test Root CA") -> NodeCa:
        pki = FixturePki.create(cn=cn)
        return cls(pki, pki.ocsp_responder())

    def ocsp(self, cert: x509.Certificate, at: dt.datetime) -> bytes:
        responder = OcspResponder(
            self.pki.root.cert,
            SoftwareSigner(self.responder_cert.key, self.responder_cert.cert),
            lambda serial: self.revoked.get(serial, CertStatus("good")),
        )
        return responder.respond(build_request(cert, self.pki.root.cert, nonce=False), now=at)

    def revoke(self, cert: x509.Certificate, at: dt.datetime) -> None:
        self.revoked[cert.serial_number] = CertStatus("revoked", at, "key_compromise")


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_bytes(
    kind: str,
    server: str,
    *,
    at: dt.datetime,
    client: str | None = None,
    address: str | None = None,
    auth: Issued | None = None,
    nonce: str | None = None,
) -> bytes:
    obj: dict[str, Any] = {
        "type": kind,
        "server": server,
        "created_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nonce": nonce or secrets.token_urlsafe(24),
    }
    if client is not None:
        obj["client"] = client
    if address is not None:
        obj["address"] = address
    if auth is not None:
        obj["auth_cert"] = der_b64(auth.cert)
    return canonical(obj)


def enc(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(
    raw: bytes,
    *,
    at: dt.datetime,
    owner: Issued,
    owner_ca: NodeCa,
    auth: Issued | None = None,
    auth_ca: NodeCa | None = None,
    ocsp_at: dt.datetime | None = None,
) -> bytes:
    """The POST body: signatures by ``owner`` (and ``auth``) with their OCSP responses."""
    ocsp_time = ocsp_at or at
    signatures = {
        "owner": sign_detached(raw, SoftwareSigner(owner.key, owner.cert), signing_time=at)
    }
    ocsp = {"owner": owner_ca.ocsp(owner.cert, ocsp_time)}
    if auth is not None:
        ca = auth_ca or owner_ca
        signatures["auth"] = sign_detached(
            raw, SoftwareSigner(auth.key, auth.cert), signing_time=at
        )
        ocsp["auth"] = ca.ocsp(auth.cert, ocsp_time)
    return json.dumps(
        {
            "request": enc(raw),
            "signatures": {k: enc(v) for k, v in signatures.items()},
            "ocsp": {k: enc(v) for k, v in ocsp.items()},
        }
    ).encode()
