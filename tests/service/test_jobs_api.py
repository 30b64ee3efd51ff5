"""POST/GET /drift-jobs, cancel: validation naming fields, idempotency, broker failure."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from tests.service.conftest import (
    CLASSES,
    assert_problem,
    build_world,
    image_folder,
    make_zip,
    upload_checkpoint,
    upload_zip,
)
from worker.catalog import DEFAULT_METRICS
from worker.results.gate import Policy, policy_problems
from worker.store.models import Job


def test_create_job_defaults_location_and_submit(world, submitted) -> None:
    response = world.client.post("/drift-jobs", json=world.job_body())
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/drift-jobs/{job['id']}"
    assert submitted == [job["id"]]
    assert job["status"] == "queued"
    assert job["progress"] == {"done": 0, "total": None}
    config = job["config"]
    assert config["methods"] == ["layercam", "gradcam++"]
    assert config["metrics"] is None  # the audit resolves the defaults for its data
    assert config["sample_filter"] == "true_positive" and config["split"] == "auto"
    assert config["noise_floor"] is False and config["seed"] == 0
    assert config["max_samples"] is None and config["policy"] is None
    assert job["links"]["report"] == f"/drift-jobs/{job['id']}/report"
    assert world.client.get(f"/drift-jobs/{job['id']}").json() == job


def test_names_are_normalised(world) -> None:
    body = world.job_body(
        methods=["gradcam", "gradcam", "hirescam"], metrics=["iou_top10", "pearson", "iou_top10"]
    )
    config = world.client.post("/drift-jobs", json=body).json()["config"]
    assert config["methods"] == ["gradcam", "hirescam"]
    assert config["metrics"] == ["iou_top10", "pearson"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"methods": ["layercam", "saliency"]}, "body.methods[1]"),
        ({"methods": []}, "body.methods"),
        ({"methods": "layercam"}, "body.methods"),
        ({"metrics": ["pearson", "iou_top100"]}, "body.metrics[1]"),
        ({"metrics": ["iou_top0"]}, "body.metrics[0]"),
        ({"metrics": ["iou_top05"]}, "body.metrics[0]"),
        ({"sample_filter": "false_positive"}, "body.sample_filter"),
        ({"max_samples": 0}, "body.max_samples"),
        ({"seed": "1"}, "body.seed"),
        ({"seed": -1}, "body.seed"),
        ({"noise_floor": "yes"}, "body.noise_floor"),
        ({"split": "holdout"}, "body.split"),
        ({"colour": "red"}, "body.colour"),
        ({"baseline_id": ...}, "body.baseline_id"),
        ({"baseline_id": 12}, "body.baseline_id"),
        ({"trajectory_ids": "abc"}, "body.trajectory_ids"),
        ({"trajectory_ids": ["a", 3]}, "body.trajectory_ids[1]"),
        ({"trajectory_ids": ["a" * 32] * 65}, "body.trajectory_ids"),
        (
            {
                "policy": {
                    "rule": [
                        {
                            "method": "*",
                            "metric": "iou_top20",
                            "stat": "mean",
                            "op": "~",
                            "value": 0.5,
                        }
                    ]
                }
            },
            "body.policy.rule[0].op",
        ),
    ],
)
def test_invalid_bodies_name_the_field(world, overrides, field, submitted) -> None:
    response = world.client.post("/drift-jobs", json=world.job_body(**overrides))
    assert_problem(response, 422, field)
    assert submitted == []


def test_unknown_ids_are_each_named(world) -> None:
    body = world.job_body(
        baseline_id="x", candidate_id="y", dataset_id="z", baseline_replica_id="w"
    )
    problem = assert_problem(world.client.post("/drift-jobs", json=body), 422)
    fields = {e["field"] for e in problem["errors"]}
    assert fields == {
        "body.baseline_id",
        "body.candidate_id",
        "body.dataset_id",
        "body.baseline_replica_id",
    }


def test_class_sets_must_match(world) -> None:
    other = upload_checkpoint(world.client, world.files.other_classes).json()["id"]
    problem = assert_problem(
        world.client.post("/drift-jobs", json=world.job_body(candidate_id=other)),
        422,
        "body.candidate_id",
    )
    assert "class sets do not match" in problem["detail"]
    response = world.client.post("/drift-jobs", json=world.job_body(baseline_replica_id=other))
    assert_problem(response, 422, "body.baseline_replica_id")
    replica = upload_checkpoint(world.client, world.files.replica).json()["id"]
    ok = world.client.post("/drift-jobs", json=world.job_body(baseline_replica_id=replica))
    assert ok.status_code == 202


def test_trajectory_checkpoints_are_checked_one_by_one(world, submitted) -> None:
    other = upload_checkpoint(world.client, world.files.other_classes).json()["id"]
    replica = upload_checkpoint(world.client, world.files.replica).json()["id"]
    body = world.job_body(trajectory_ids=[replica, "f" * 32, other])
    problem = assert_problem(world.client.post("/drift-jobs", json=body), 422)
    errors = {e["field"]: e["message"] for e in problem["errors"]}
    assert set(errors) == {"body.trajectory_ids[1]", "body.trajectory_ids[2]"}
    assert "does not exist" in errors["body.trajectory_ids[1]"]
    assert "class sets do not match" in errors["body.trajectory_ids[2]"]
    assert submitted == []
    response = world.client.post("/drift-jobs", json=world.job_body(trajectory_ids=[replica]))
    assert response.status_code == 202, response.text
    assert response.json()["config"]["trajectory_ids"] == [replica]


def test_an_empty_trajectory_is_the_plain_job(world) -> None:
    """No ``trajectory_ids`` key in the stored config, so request hashes stay as they were."""
    key = {"Idempotency-Key": "plain"}
    first = world.client.post("/drift-jobs", json=world.job_body(), headers=key)
    again = world.client.post("/drift-jobs", json=world.job_body(trajectory_ids=[]), headers=key)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert "trajectory_ids" not in first.json()["config"]


def test_dataset_classes_must_be_among_the_checkpoints(world) -> None:
    foreign = upload_zip(world.client, make_zip(image_folder(["normal", "cat"]))).json()["id"]
    problem = assert_problem(
        world.client.post("/drift-jobs", json=world.job_body(dataset_id=foreign)),
        422,
        "body.dataset_id",
    )
    assert "cat" in problem["detail"]


def test_policy_rules_are_checked_against_the_job(world) -> None:
    rule = {
        "method": "gradcam",
        "metric": "iou_t50",
        "stat": "beyond_floor",
        "op": ">=",
        "value": 0,
    }
    body = world.job_body(metrics=["iou_top20"], policy={"min_samples": 10, "rule": [rule]})
    problem = assert_problem(world.client.post("/drift-jobs", json=body), 422)
    fields = {e["field"] for e in problem["errors"]}
    assert fields == {
        "body.policy.rule[0].method",
        "body.policy.rule[0].metric",
        "body.policy.rule[0].stat",
    }
    good = {"method": "*", "metric": "iou_top20", "stat": "ci95_low", "op": ">=", "value": 0.5}
    body = world.job_body(metrics=["iou_top20"], policy={"rule": [good]})
    response = world.client.post("/drift-jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["config"]["policy"] == {"min_samples": 50, "rule": [good]}


def test_policy_classes_are_checked_against_the_checkpoints(world, submitted) -> None:
    """A class the checkpoints lack is a 422 at submission, with the same words the command
    line prints (one torch-free check serves both), never a job that ends inconclusive."""
    rules = [
        {"method": "*", "metric": "pearson", "stat": "mean", "op": ">=", "value": 0, **extra}
        for extra in ({"class": "covid"}, {"class": "efusion"}, {"class": "*"}, {"class": "cat"})
    ]
    body = world.job_body(policy={"min_samples": 10, "min_class_samples": 5, "rule": rules})
    problem = assert_problem(world.client.post("/drift-jobs", json=body), 422)
    errors = {e["field"]: e["message"] for e in problem["errors"]}
    assert set(errors) == {"body.policy.rule[1].class", "body.policy.rule[3].class"}
    expected = policy_problems(
        Policy.model_validate(body["policy"]),
        class_names=CLASSES,
        methods=["layercam", "gradcam++"],
        metrics=list(DEFAULT_METRICS),
        noise_floor=False,
    )
    assert {f"body.policy.{p.field}": p.message for p in expected} == errors
    assert errors["body.policy.rule[1].class"] == (
        "class 'efusion' is not a class of the checkpoints (did you mean 'effusion'?); choose "
        f"'overall', '*' or one of {', '.join(CLASSES)}"
    )
    assert submitted == []
    body["policy"]["rule"] = rules[:3:2]
    response = world.client.post("/drift-jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["config"]["policy"]["min_class_samples"] == 5


def test_idempotency_key_replay_and_conflict(world, submitted) -> None:
    headers = {"Idempotency-Key": "build-42"}
    first = world.client.post("/drift-jobs", json=world.job_body(seed=3), headers=headers)
    assert first.status_code == 202
    # same body, spelled differently (defaults explicit, other key order): the same job
    same = world.job_body(seed=3, methods=["layercam", "gradcam++"], sample_filter="true_positive")
    replay = world.client.post("/drift-jobs", json=dict(reversed(same.items())), headers=headers)
    assert replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["location"] == first.headers["location"]
    assert submitted == [first.json()["id"]]
    conflict = world.client.post("/drift-jobs", json=world.job_body(seed=4), headers=headers)
    problem = assert_problem(conflict, 422, "header.Idempotency-Key")
    assert problem["job_id"] == first.json()["id"]
    assert world.client.get("/drift-jobs").json()["total"] == 1


def test_submit_failure_fails_the_job_and_answers_503(world, monkeypatch) -> None:
    def broker_down(settings, job_id):
        raise ConnectionError("redis is down")

    monkeypatch.setattr("service.dispatch.submit_job", broker_down)
    headers = {"Idempotency-Key": "retry-me"}
    response = world.client.post("/drift-jobs", json=world.job_body(), headers=headers)
    problem = assert_problem(response, 503)
    assert response.headers["retry-after"] == "30"
    job = world.client.get(f"/drift-jobs/{problem['job_id']}").json()
    assert job["status"] == "failed" and job["error"] == "broker unavailable"
    assert job["finished_at"] is not None
    # the key was freed: a retry after the outage makes a new job
    monkeypatch.setattr("service.dispatch.submit_job", lambda settings, job_id: None)
    retry = world.client.post("/drift-jobs", json=world.job_body(), headers=headers)
    assert retry.status_code == 202 and retry.json()["id"] != problem["job_id"]


def test_list_filters_by_status_and_pages(world, db) -> None:
    ids = [
        world.client.post("/drift-jobs", json=world.job_body(seed=i)).json()["id"] for i in range(3)
    ]
    db.execute(update(Job).where(Job.id == ids[0]).values(status="running"))
    db.commit()
    page = world.client.get("/drift-jobs", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    assert page["items"][0]["id"] == ids[2]  # newest first
    running = world.client.get("/drift-jobs", params={"status": "running"}).json()
    assert [j["id"] for j in running["items"]] == [ids[0]]
    assert_problem(
        world.client.get("/drift-jobs", params={"status": "sleeping"}), 422, "query.status"
    )
    assert_problem(world.client.get("/drift-jobs/unknown"), 404)


def test_cancel(world, db) -> None:
    queued, running, done = (
        world.client.post("/drift-jobs", json=world.job_body(seed=i)).json()["id"] for i in range(3)
    )
    response = world.client.post(f"/drift-jobs/{queued}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled" and response.json()["cancel_requested"]
    assert response.json()["finished_at"] is not None
    assert world.client.post(f"/drift-jobs/{queued}/cancel").status_code == 202  # idempotent

    db.execute(update(Job).where(Job.id == running).values(status="running"))
    db.execute(update(Job).where(Job.id == done).values(status="succeeded"))
    db.commit()
    response = world.client.post(f"/drift-jobs/{running}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"]
    assert_problem(world.client.post(f"/drift-jobs/{done}/cancel"), 409)
    assert_problem(world.client.post("/drift-jobs/unknown/cancel"), 404)


def test_jobs_need_a_world(client, checkpoint_files) -> None:
    """Sanity for the fixture itself: a fresh client has no jobs, the world makes three ids."""
    assert client.get("/drift-jobs").json()["total"] == 0
    world = build_world(client, checkpoint_files)
    assert len({world.baseline, world.candidate, world.dataset}) == 3
