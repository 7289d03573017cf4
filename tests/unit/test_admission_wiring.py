"""Which admission controller a router builds from its settings (no Redis is contacted here)."""

from __future__ import annotations

import pytest

from services.common.config import load_profile
from services.router.admission import AdmissionController
from services.router.app import admission_controller
from services.router.settings import RouterSettings
from services.router.shared_admission import SHARED_FALLBACK, SharedAdmissionController


def test_no_url_counts_in_process_with_the_profiles_limit() -> None:
    profile = load_profile("cpu", environ={})
    controller = admission_controller(profile, RouterSettings())
    assert type(controller) is AdmissionController
    assert controller.config.max_sessions == profile.admission.max_sessions
    assert controller.snapshot().mode == "in_process"


def test_the_routers_own_limit_overrides_the_profiles() -> None:
    controller = admission_controller(
        load_profile("cpu", environ={}), RouterSettings(admission_max_sessions=64)
    )
    assert controller.config.max_sessions == 64


def test_a_url_shares_the_limit_and_until_redis_answers_admits_only_a_share() -> None:
    settings = RouterSettings(
        admission_url="redis://127.0.0.1:1/0",
        admission_replicas=4,
        admission_max_sessions=10,
        replica_id="r-7",
    )
    controller = admission_controller(load_profile("cpu", environ={}), settings)
    assert isinstance(controller, SharedAdmissionController)
    snap = controller.snapshot()
    assert (snap.mode, snap.max_sessions, snap.replica_id, snap.replicas) == (SHARED_FALLBACK, 2, "r-7", 4)


@pytest.mark.parametrize("field", ["admission_replicas", "admission_lease_ttl_s"])
def test_nonsense_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RouterSettings.model_validate({field: 0})
