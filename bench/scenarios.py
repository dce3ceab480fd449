"""The three scenarios, as requests to the bare service (or a proxy of it) or to a node.

Rules:

- ``rest_small``: ``GET`` answered by a small JSON document; ``rest_100k``: ``POST`` of a
  100 KiB JSON body, echoed; ``soap_small``: an X-Road SOAP 4.0 request and its response.
- The same service answers all paths, so each scenario's requests differ between paths only
  in what the path needs: through a node a REST call goes to ``/r1/{service id}`` with
  ``X-Road-Client``; a SOAP request is the same envelope everywhere, posted to the path's SOAP
  address. Every SOAP request carries a fresh ``id`` (nodes refuse a replayed message id).
- A good answer is recognised by its length (echo) or a marker in the body, never by timing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Final

from bench.loadgen import LoadSpec
from bench.service import SOAP_ANSWER, SOAP_NAMESPACE
from gateway.identifiers import ClientId, ServiceId, SubsystemId
from gateway.rest import HEADER_CLIENT, client_header_value, rest_path
from gateway.soap import build_request

SCENARIOS: Final = ("rest_small", "rest_100k", "soap_small")
ECHO_BODY_BYTES: Final = 100 * 1024
_ID_PLACEHOLDER: Final = b"bench-message-id"
SOAP_SERVICE_CODE: Final = "benchSoap"
SMALL_SERVICE_CODE: Final = "benchSmall"
ECHO_SERVICE_CODE: Final = "benchEcho"
#: Where each scenario's request goes on the bare service.
SERVICE_PATHS: Final = {"rest_small": "/small", "rest_100k": "/echo", "soap_small": "/soap"}


def echo_body(size: int = ECHO_BODY_BYTES) -> bytes:
    """A JSON document of exactly ``size`` bytes."""
    frame = json.dumps({"scenario": "rest_100k", "data": ""}).encode()
    return json.dumps({"scenario": "rest_100k", "data": "x" * (size - len(frame))}).encode()


def soap_request(client: ClientId, service: ServiceId) -> bytes:
    body = (
        f'<b:{service.service_code} xmlns:b="{SOAP_NAMESPACE}">'
        f"<b:question>ping</b:question></b:{service.service_code}>"
    )
    return build_request(client, service, id=_ID_PLACEHOLDER.decode(), body_element_xml=body)


@dataclasses.dataclass(frozen=True)
class Parties:
    """Who calls whom through the nodes."""

    consumer: SubsystemId
    provider: SubsystemId

    def service(self, code: str) -> ServiceId:
        p = self.provider
        return ServiceId(p.instance, p.member_class, p.member_code, p.subsystem_code, code)


#: The parties when no node is involved (the service does not check them).
DEFAULT_PARTIES: Final = Parties(
    SubsystemId.parse("IQ/GOV/BENCH/consumer"), SubsystemId.parse("IQ/GOV/BENCH/provider")
)


def service_spec(name: str, base_url: str, parties: Parties = DEFAULT_PARTIES) -> LoadSpec:
    """``name`` against the bare service or a reverse proxy of it at ``base_url``."""
    url = base_url.rstrip("/") + SERVICE_PATHS[name]
    if name == "rest_small":
        return LoadSpec(name, "GET", url, expect_marker=b'"status":"ok"')
    if name == "rest_100k":
        body = echo_body()
        return LoadSpec(
            name,
            "POST",
            url,
            headers={"Content-Type": "application/json"},
            body=body,
            expect_length=len(body),
        )
    if name == "soap_small":
        return _soap_spec(url, parties)
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


def _soap_spec(url: str, parties: Parties) -> LoadSpec:
    return LoadSpec(
        "soap_small",
        "POST",
        url,
        headers={"Content-Type": "text/xml; charset=utf-8"},
        body=soap_request(parties.consumer, parties.service(SOAP_SERVICE_CODE)),
        expect_marker=SOAP_ANSWER.encode(),
        unique_placeholder=_ID_PLACEHOLDER,
    )


def node_spec(name: str, client_side_url: str, parties: Parties) -> LoadSpec:
    """``name`` sent to the consumer's node client side at ``client_side_url``."""
    base = client_side_url.rstrip("/")
    client_header = {HEADER_CLIENT: client_header_value(parties.consumer)}
    if name == "rest_small":
        target = rest_path(parties.service(SMALL_SERVICE_CODE))
        return LoadSpec(
            name, "GET", base + target, headers=client_header, expect_marker=b'"status":"ok"'
        )
    if name == "rest_100k":
        body = echo_body()
        return LoadSpec(
            name,
            "POST",
            base + rest_path(parties.service(ECHO_SERVICE_CODE)),
            headers={**client_header, "Content-Type": "application/json"},
            body=body,
            expect_length=len(body),
        )
    if name == "soap_small":
        return _soap_spec(base + "/", parties)
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
