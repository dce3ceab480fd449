"""The auditor's offline verifier of message-log archives (``jisr audit``).

It imports only ``gateway``, ``certs`` and ``config``: an auditor installs Jisr's package to use
it, never a node, a database or a network connection.
"""
