"""The revocation status of one certificate, as the CA knows it and OCSP reports it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal

State = Literal["good", "revoked", "unknown"]


@dataclasses.dataclass(frozen=True, slots=True)
class CertStatus:
    state: State
    revoked_at: dt.datetime | None = None
    #: RFC 5280 CRLReason name, e.g. ``key_compromise``; None when unspecified.
    reason: str | None = None
