"""Inbound adapters: the router's gRPC services, and the codec between their messages and the domain."""
