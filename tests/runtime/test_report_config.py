"""The report's ``config`` records what the results depend on: the batch size too."""

from __future__ import annotations

from worker.engine.audit import AuditConfig, config_dict
from worker.job_config import EXECUTION_ONLY, JobConfig


def test_the_batch_size_is_recorded_where_it_ran_and_nothing_else_of_the_execution() -> None:
    config = config_dict(AuditConfig(batch_size=3, device="cpu", workers=2))
    assert config["batch_size"] == 3
    assert "device" not in config and "workers" not in config
    assert set(config) - {"batch_size"} == set(JobConfig.model_fields)


def test_a_job_configuration_alone_names_no_batch_size() -> None:
    assert set(JobConfig().results_dict()) == set(JobConfig.model_fields) - set(EXECUTION_ONLY)
