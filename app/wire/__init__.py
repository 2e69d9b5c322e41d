"""The JSON wire contract of API v1: its rules (``rules``) and the decoding of prediction bodies (``decode``).

The pydantic types that state the contract to clients, with their error messages, are ``app.schemas``
and ``app.routing_schemas``; they and the decoder take every limit and range from ``rules``.
"""
