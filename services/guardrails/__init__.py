"""Guardrails service: input, retrieval and output rails with findings, redaction and a policy."""
