"""The exchange protocol every Jisr party speaks, without I/O.

Identifiers, fault codes, X-Road SOAP and REST codecs, the signed envelope of the node-to-node
transport and the global-configuration model. Nothing here imports aiohttp or asyncpg: functions
take bytes and objects and return objects.
"""
