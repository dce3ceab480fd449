"""The security server node.

Where a request goes::

    information system ──► client_proxy (8080/8443: REST, SOAP, metaservices)
                            │  checks the client, finds the provider node in the global
                            │  configuration, signs (gateway.transport), logs
                            ▼
                           transport_client ══ mTLS 5500 ══► server_proxy (provider node)
                                                              │ verifies signature, certificate,
                                                              │ OCSP, access_rights, logs
                                                              ▼
                                                             service (provider IS), then the
                                                             signed response travels back.
"""
