"""PKI: keys and key stores, the CA, certificate profiles and path validation, CMS signatures,
OCSP (RFC 6960) and timestamping (RFC 3161).

Sans-IO: nothing here opens a socket or imports aiohttp or asyncpg. Callers ask for recipes
("sign this for member X", "verify this evidence at time T"), never choose paddings or curves.
"""
