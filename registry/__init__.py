"""The central registry: members, nodes, trust services, management requests, and the signed
global configuration that publishes them (see docs/registry.md).

Layering: ``server`` composes ``admin_api``, ``management`` and the configuration routes over
``store`` (PostgreSQL) and ``publisher``; ``gateway`` and ``certs`` do the sans-IO work.
"""
