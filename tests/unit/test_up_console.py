"""`forge up`'s quiet console as logic: the first-start steps recognised in a service's log
lines (the lines the services really log), what the console prints for each event in a pipe, and
the third-party log levels with Presidio's language noise dropped. (tests/integration/
test_supervisor.py runs the log files and the steps on real processes; the e2e test the whole
mesh's console.)"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.cli.supervisor import ChildSpec, Supervisor
from services.cli.up_console import UpConsole
from services.common import logs


@dataclass
class Heard:
    events: list[tuple[object, ...]] = field(default_factory=list)

    def say(self, message: str) -> None:
        self.events.append(("say", message))

    def serving(self, service: str, after_s: float) -> None:
        self.events.append(("serving", service))

    def step_begun(self, service: str, what: str) -> None:
        self.events.append(("begun", service, what))

    def step_ended(self, service: str, what: str, took_s: float, finished: bool) -> None:
        self.events.append(("ended", service, what, finished))


def supervisor_hearing(heard: Heard, service: str = "llm") -> Supervisor:
    return Supervisor([ChildSpec(service, "127.0.0.1", 1, 2)], {}, reporter=heard, echo_logs=False)


def formatted(record: logging.LogRecord) -> str:
    return logging.Formatter(logs.FORMAT).format(record)


def test_the_llm_services_own_line_begins_the_model_conversion_and_its_end_line_ends_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from services.common.config import load_profile
    from services.llm import app as llm_app

    monkeypatch.setattr(llm_app, "prepare_model", lambda path: path)
    with caplog.at_level(logging.INFO, logger="services.llm.app"):
        llm_app.LlmApp(load_profile("cpu", environ={}), tmp_path).model_path()
    begins = [formatted(r) for r in caplog.records if "preparing it now" in r.getMessage()]
    assert len(begins) == 1

    heard = Heard()
    supervisor = supervisor_hearing(heard)
    child = supervisor.children[0]
    supervisor._log_line(child, begins[0])
    supervisor._log_line(child, "2025-01-01 00:00:00,000 INFO services.llm.prepare: loading x.gguf")
    supervisor._log_line(child, "2025-01-01 00:00:09,000 INFO services.llm.prepare: model prepared")
    supervisor._log_line(child, "2025-01-01 00:00:10,000 INFO services.llm.app: llm serving")
    what = "converting the model (first start only)"
    assert heard.events == [("begun", "llm", what), ("ended", "llm", what, True)]


def test_a_step_without_its_end_line_ends_when_the_service_serves_or_exits() -> None:
    heard = Heard()
    supervisor = supervisor_hearing(heard, "guardrails")
    child = supervisor.children[0]
    supervisor._log_line(
        child, "INFO services.guardrails.factory: no trained heads in /h/guardrails: training now"
    )
    supervisor._end_step(child, finished=False)  # what serving or exiting does
    supervisor._end_step(child, finished=False)  # nothing left to end
    what = "training the guardrail heads (first start only)"
    assert heard.events == [("begun", "guardrails", what), ("ended", "guardrails", what, False)]


def test_in_a_pipe_the_console_prints_one_plain_line_per_event() -> None:
    out = io.StringIO()
    console = UpConsole(out, live=False)
    console.step_begun("llm", "converting the model (first start only)")
    console.step_ended("llm", "converting the model (first start only)", 31.4, finished=True)
    console.serving("embed", 12.34)
    console.close()
    assert out.getvalue().splitlines() == [
        "  llm         converting the model (first start only) ...",
        "  llm         converting the model (first start only): done in 31 s",
        "  embed       SERVING  in 12.3 s",
    ]


def test_on_a_terminal_a_step_is_a_spinner_that_leaves_one_line_when_done() -> None:
    out = io.StringIO()
    console = UpConsole(out, live=True)
    console.step_begun("guardrails", "training the guardrail heads (first start only)")
    assert console._progress is not None
    console.step_ended("guardrails", "training the guardrail heads (first start only)", 8.0, finished=False)
    assert console._progress is None  # the last step ended: no live display left running
    assert "training the guardrail heads (first start only): ended after 8 s" in out.getvalue()


def test_third_party_loggers_are_quiet_unless_asked() -> None:
    assert logs.third_party_level("INFO", {}) == "WARNING"
    assert logs.third_party_level("debug", {}) == "DEBUG"
    assert logs.third_party_level("INFO", {logs.THIRD_PARTY_ENV: "info"}) == "INFO"


def test_presidios_unsupported_language_warnings_are_dropped_and_its_others_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (logs.THIRD_PARTY_ENV, "VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.delenv(name, raising=False)
    levels = {name: logging.getLogger(name).level for name in logs.THIRD_PARTY_LOGGERS}
    presidio = logging.getLogger("presidio-analyzer")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    try:
        logs.configure_logging("INFO")
        presidio.addHandler(handler)
        presidio.warning(
            "Recognizer not added to registry because language is not supported by registry - "
            "EsNifRecognizer supported languages: es, registry supported languages: en"
        )
        presidio.info("an info line")
        presidio.warning("a real problem")
        assert logging.getLogger("vllm").level == logging.WARNING
        assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
    finally:
        presidio.removeHandler(handler)
        for name, level in levels.items():  # this process's loggers as they were
            logging.getLogger(name).setLevel(level)
    assert stream.getvalue() == "a real problem\n"
