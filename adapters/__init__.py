"""Integrator kit: talk to a Jisr (or any X-Road) node, or wrap a system as a provider.

Rules:

- This package imports only ``gateway`` and ``config`` from Jisr (plus aiohttp, zeep, lxml):
  an integrator installs no node to use it.
- Consumers call their *own* node's client side: :mod:`adapters.rest_client` (X-Road message
  protocol for REST) and :mod:`adapters.soap_client` (SOAP 4.0 through zeep).
- Providers answer the node's server side: :mod:`adapters.provider` parses the X-Road SOAP
  request safely and builds the response that echoes its headers.
- :mod:`adapters.sample_services` holds the demo's national services (NDC population, MOHESR
  certificates, MOH forensic medicine) with Iraqi sample data; they use the provider toolkit.
"""
