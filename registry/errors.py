"""Errors of the central registry, all under :class:`config.errors.RegistryError`.

Each carries the HTTP status the admin and management APIs answer with; the handler at the
edge turns any of them into ``{"type": <class name>, "message": ...}`` without a table::

    RegistryError                     400  (config.errors)
    ├── DuplicateError                409  the thing already exists; nothing was changed
    ├── NotFoundError                 404  the thing named does not exist
    ├── ConflictError                 409  the state does not allow it (e.g. approve twice)
    ├── RequestRefused                400  a management request failed a check
    └── NotInitialised                500  ``jisr registry init`` has not been run

The admin API's refusals of an API key (401 ``AuthenticationRequired``, 403 ``Forbidden``) are
the node's as well and live with the shared admin-API code, :mod:`webapi.admin`.
"""

from __future__ import annotations

from config.errors import RegistryError


class DuplicateError(RegistryError):
    """The object already exists; the database is unchanged."""

    http_status = 409


class NotFoundError(RegistryError):
    """The object named in the request does not exist."""

    http_status = 404


class ConflictError(RegistryError):
    """The object exists but its state does not allow the operation."""

    http_status = 409


class RequestRefused(RegistryError):
    """A management request from a node failed a check and was not stored."""

    def __init__(self, message: str, *, fault_code: str = "Client.InvalidRequest") -> None:
        super().__init__(message, fault_code=fault_code)


class NotInitialised(RegistryError):
    """The registry database has no instance settings or no active signing key yet."""

    http_status = 500
    fault_code = "Server.InternalError"
