"""Errors of the integrator kit, in Jisr's one exception tree.

::

    JisrError
    ├── ConfigError
    │   └── SampleDataError          the packaged sample data is inconsistent
    └── AdapterError                 the node could not be used from the integrator's side
        ├── NodeUnreachableError     no connection to the node's client side
        └── UnexpectedResponseError  the node answered something the protocol does not allow

X-Road faults the node reports (``X-Road-Error``, SOAP Fault) are raised as
:class:`gateway.faults.FaultError` with the node's code, never as one of these.
"""

from __future__ import annotations

from config.errors import ConfigError, JisrError


class SampleDataError(ConfigError):
    """The sample records shipped with the demo services contradict each other."""


class AdapterError(JisrError):
    """The integrator's side could not complete an exchange with its node."""

    fault_code = "Server.ClientProxy.NetworkError"
    http_status = 502


class NodeUnreachableError(AdapterError):
    """The node's client side did not accept a connection or did not answer in time."""


class UnexpectedResponseError(AdapterError):
    """The node's answer breaks the X-Road message protocol (wrong headers, not XML/JSON)."""

    fault_code = "Server.ClientProxy.InvalidResponse"
