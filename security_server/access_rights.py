"""Access rights: who may call which service, and for REST which endpoint.

Rules:
- Refuse by default. A request is allowed only if some right for its service matches.
- A right names a subject: a client (member or subsystem) or a global group of the global
  configuration (``group:CODE``). Group membership is read from the configuration in force.
- A right for a whole service matches every call of it. A REST endpoint right names an HTTP
  method (or ``*``) and a path pattern: ``*`` matches one path segment, ``**`` any number of
  segments (including none); everything else matches literally. The pattern is matched
  against the service-relative path (``/citizens/1990...``), without the query.

This module is sans-IO: rights come in as a list, built once per change, and
:meth:`AccessRights.allows` is called per message.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import lru_cache

from config.errors import ValidationError
from gateway.identifiers import ClientId, ServiceId, SubsystemId, parse_client

GROUP_PREFIX = "group:"
_METHODS = {"*", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


@dataclasses.dataclass(frozen=True, slots=True)
class AccessRight:
    """One grant: ``subject`` may call ``service_code`` (optionally one REST endpoint)."""

    service_code: str
    subject: str
    method: str | None = None
    path_pattern: str | None = None

    def __post_init__(self) -> None:
        if self.subject.startswith(GROUP_PREFIX):
            if not self.subject[len(GROUP_PREFIX) :]:
                raise ValidationError("a group subject needs a group code: group:CODE")
        else:
            parse_client(self.subject)
        if (self.method is None) != (self.path_pattern is None):
            raise ValidationError("an endpoint right needs both a method and a path pattern")
        if self.method is not None and self.method.upper() not in _METHODS:
            raise ValidationError(
                f"unknown HTTP method {self.method!r}; use one of {', '.join(sorted(_METHODS))}"
            )
        if self.path_pattern is not None and not self.path_pattern.startswith("/"):
            raise ValidationError(f"path pattern {self.path_pattern!r} must start with '/'")


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    out = []
    for segment in pattern.strip("/").split("/") if pattern.strip("/") else []:
        if segment == "**":
            out.append("(?:/[^/]+)*")
        elif segment == "*":
            out.append("/[^/]+")
        else:
            out.append("/" + re.escape(segment))
    return re.compile("".join(out) + "/?")


def path_matches(pattern: str, path: str) -> bool:
    """True if the service-relative ``path`` matches ``pattern`` (see the module rules)."""
    return _compile(pattern).fullmatch(path or "/") is not None


class AccessRights:
    """The rights of one node's services, indexed by (provider subsystem, service code)."""

    def __init__(self, rights: Iterable[tuple[ClientId, AccessRight]]) -> None:
        self._by_service: dict[tuple[str, str], list[AccessRight]] = defaultdict(list)
        for provider, right in rights:
            self._by_service[(str(provider), right.service_code)].append(right)

    def allows(
        self,
        client: ClientId,
        service: ServiceId,
        *,
        is_in_group: Callable[[ClientId, str], bool],
        method: str | None = None,
        path: str | None = None,
    ) -> bool:
        """Whether ``client`` may call ``service`` (and, for REST, ``method`` on ``path``)."""
        rights = self._by_service.get((str(service.provider), service.service_code), ())
        client_text = str(client)
        for right in rights:
            if right.subject.startswith(GROUP_PREFIX):
                if not is_in_group(client, right.subject[len(GROUP_PREFIX) :]):
                    continue
            elif right.subject != client_text:
                continue
            if right.method is None or right.path_pattern is None:
                return True
            if method is None or path is None:
                continue
            if right.method != "*" and right.method.upper() != method.upper():
                continue
            if path_matches(right.path_pattern, path):
                return True
        return False

    def allowed_services(
        self,
        client: ClientId,
        provider: SubsystemId | ClientId,
        *,
        is_in_group: Callable[[ClientId, str], bool],
    ) -> list[str]:
        """Service codes of ``provider`` that ``client`` may call at all (allowedMethods)."""
        found = []
        for (prov, code), rights in sorted(self._by_service.items()):
            if prov != str(provider):
                continue
            for right in rights:
                if right.subject == str(client) or (
                    right.subject.startswith(GROUP_PREFIX)
                    and is_in_group(client, right.subject[len(GROUP_PREFIX) :])
                ):
                    found.append(code)
                    break
        return found
