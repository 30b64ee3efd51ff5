"""The REST job body and the one job configuration cannot drift apart.

``JobIn`` declares its fields for the OpenAPI document (descriptions, bounds), so it does not
inherit ``JobConfig``; this test is what keeps them one concept: every configuration option is
either a body field with the same default or one the server chooses, and a minimal body
becomes exactly the default configuration.
"""

from __future__ import annotations

import pytest

from service.schemas import SERVER_CHOSEN, JobIn
from worker.job_config import EXECUTION_ONLY, JobConfig

IDS = {"baseline_id": "b", "candidate_id": "c", "dataset_id": "d"}
CONFIG_FIELDS = [f for f in JobConfig.model_fields if f not in SERVER_CHOSEN]


def test_server_chosen_options_are_configuration_not_execution():
    assert set(SERVER_CHOSEN) <= set(JobConfig.model_fields)
    assert not set(SERVER_CHOSEN) & set(EXECUTION_ONLY)
    assert not set(SERVER_CHOSEN) & set(JobIn.model_fields)


@pytest.mark.parametrize("name", CONFIG_FIELDS)
def test_every_option_is_a_body_field_with_the_same_default(name):
    assert name in JobIn.model_fields, f"JobConfig.{name} is missing from the REST body"
    body = JobIn(**IDS).normalised()
    assert body[name] == JobConfig().model_dump(mode="json")[name]


def test_a_minimal_body_is_the_default_configuration():
    stored = JobConfig.from_stored(JobIn(**IDS).normalised())
    assert stored == JobConfig()


def test_body_options_reach_the_stored_configuration():
    body = JobIn(
        **IDS,
        methods=["gradcam", "layercam"],
        metrics=["pearson"],
        sample_filter="all",
        max_samples=7,
        split=None,
        seed=3,
        noise_floor=True,
    )
    stored = JobConfig.from_stored(body.normalised())
    assert stored.methods == ["gradcam", "layercam"]
    assert stored.metrics == ["pearson"]
    assert (stored.sample_filter, stored.max_samples, stored.split) == ("all", 7, None)
    assert (stored.seed, stored.noise_floor) == (3, True)
