"""What Jisr's admin APIs share: API keys with roles, JSON request bodies, JSON errors.

Rules: the registry's and the node's admin APIs stand at the same layer, so what they share
lives here, below both; this package imports ``config`` only, never ``registry`` or
``security_server``.
"""
