"""Who may call what: API keys for the router's callers (keys.py), mutual TLS between services
(tls.py), and their settings. Domain code only: the gRPC adapters live in services/common/auth.py."""
