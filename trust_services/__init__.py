"""HTTP shells for the trust services: OCSP and timestamping servers and their clients.

Rules: the protocol work (parsing, signing, verifying) lives in ``certs``, which is sans-IO;
modules here only move bytes between those cores and sockets. Servers bind where they are told
(port 0 picks a free port) and always stop cleanly.
"""
