"""PostgreSQL for the registry and the nodes: the embedded default and ordered SQL migrations.

This is an I/O shell below ``registry`` and ``security_server`` and above nothing but ``config``.
"""
