"""Wires the guardrails service into the server kit: settings -> policy -> parts -> rails -> servicer.

The policy is read and validated in the constructor (a bad policy stops the service before it
binds); load() loads Presidio, the encoder and the trained heads (training them if the cache is
empty), and health reports SERVING only after that."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

from forge.v1 import guardrails_pb2, guardrails_pb2_grpc
from grpc import aio

from services.common.channels import PLAINTEXT, Dialer
from services.common.config import Isolation, SkuProfile
from services.guardrails.engine import Guard
from services.guardrails.factory import Parts, build_rails, close_rails, load_parts
from services.guardrails.policy import Stage, default_policy_path, load_policy
from services.guardrails.servicer import GuardrailsServicer
from services.guardrails.settings import GuardrailsSettings

GUARDRAILS_SERVICE = guardrails_pb2.DESCRIPTOR.services_by_name["GuardrailsService"].full_name


class GuardrailsApp:
    name = "guardrails"

    def __init__(
        self,
        profile: SkuProfile,
        home: Path,
        settings: GuardrailsSettings | None = None,
        dialer: Dialer = PLAINTEXT,
    ) -> None:
        self.profile = profile
        self.dialer = dialer  # the judge rail's way to the LLM service
        self.home = home
        self.settings = settings or GuardrailsSettings()
        self.policy = load_policy(self.settings.policy_path)
        self.servicer = GuardrailsServicer()
        self.parts: Parts | None = None

    @property
    def grpc_service_names(self) -> Sequence[str]:
        return [GUARDRAILS_SERVICE]

    def register(self, server: aio.Server) -> None:
        guardrails_pb2_grpc.add_GuardrailsServiceServicer_to_server(self.servicer, server)

    async def load(self) -> None:
        self.parts = await asyncio.to_thread(
            load_parts,
            self.policy,
            self.home,
            self.settings.device,
            self.profile.slices.of(self.name),
            self.settings.train_if_missing,
            self.profile.isolation != Isolation.NONE,
        )
        rails = await asyncio.to_thread(build_rails, self.policy, self.parts, self.dialer)
        guard = Guard(self.policy, rails)
        # Warm every rail once (lazy model initialisation would otherwise eat the first caller's
        # rail timeouts), before health reports SERVING.
        for stage in Stage:
            await guard.check("Warm-up: contact me at warm.up@example.org tomorrow.", stage)
        self.servicer.guard = guard

    async def close(self) -> None:
        guard, self.servicer.guard = self.servicer.guard, None
        if guard is not None:
            close_rails(guard.rails)  # e.g. the judge's channel to the LLM service
            guard.close()  # the rails' threads

    def compute_device(self) -> str:
        if self.parts is not None and self.parts.encoder is not None:
            return self.parts.encoder.device
        return "cpu"

    def settings_summary(self) -> Mapping[str, str]:
        return {
            "policy_version": self.policy.version,
            "policy_path": str(self.settings.policy_path or default_policy_path()),
            "max_chars": str(self.policy.max_chars),
            "rails": ", ".join(f"{n}({self.policy.kind_of(n)})" for n in self.policy.used_rails()),
            "rail_threads_and_queue": ", ".join(
                f"{n}={self.policy.rails[n].workers}+{self.policy.rails[n].max_queue}"
                for n in self.policy.used_rails()
            ),
            "spacy_ner": str(bool(self.parts and self.parts.has_ner)),
            "device": self.compute_device(),
        }
