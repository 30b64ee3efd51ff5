"""Report (409 until done, JSON and markdown), per-sample rows, overlay PNGs."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update

from tests.service.conftest import assert_problem
from worker.render.overlay import canvas_size, display_size, panel_origin
from worker.store.models import Job, Report
from worker.store.rows import records_from_row, row_from_records

METRICS = ["iou_top20", "pearson", "iou_top10"]


def _row(index: int, path: str, label: int, included: bool, iou: float | None) -> dict:
    metrics, degenerate = {}, {}
    if included:
        for method in ("layercam", "gradcam++"):
            metrics[method] = {"iou_top20": iou, "pearson": 0.5, "iou_top10": 0.1 * index}
            degenerate[method] = [False, iou is None]
    return {
        "index": index,
        "path": path,
        "label": label,
        "pred_baseline": label,
        "pred_candidate": label if included else (label + 1) % 5,
        "probs_baseline": [0.2] * 5,
        "probs_candidate": [0.2] * 5,
        "target_baseline": label,
        "target_candidate": label,
        "included": included,
        "metrics": metrics,
        "degenerate": degenerate,
    }


@pytest.fixture
def job(world, db):
    """A job whose worker wrote 6 rows: included ones with iou 0.9, None, 0.3, 0.6, 0.1."""
    job_id = world.client.post("/drift-jobs", json=world.job_body(metrics=METRICS)).json()["id"]
    ious = [0.9, None, 0.3, None, 0.6, 0.1]
    folders = ["covid", "covid", "normal", "normal", "pneumonia", "pneumonia"]
    for i, iou in enumerate(ious):
        included = i != 3
        row = _row(i, f"{folders[i]}/img{i % 2}.png", i // 2, included, iou)
        db.add_all(records_from_row(job_id, row))
    db.commit()
    return job_id


def _succeed(db, job_id: str, document: dict) -> None:
    db.add(Report(job_id=job_id, document=document))
    db.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
    db.commit()


REPORT = {
    "models": {
        "baseline": {"arch": "tinycnn", "phase": "tl", "sha256": "a" * 64},
        "candidate": {"arch": "tinycnn", "phase": "ft", "sha256": "b" * 64},
    },
    "dataset": {"fingerprint": "c" * 64, "num_evaluated": 6},
    "config": {"sample_filter": "true_positive", "metrics": ["iou_top20", "pearson"]},
    "performance": {
        "baseline": {"n": 6, "accuracy": 1.0, "macro_auc": 0.99},
        "candidate": {"n": 6, "accuracy": 0.83, "macro_auc": None},
    },
    "subsets": {
        "evaluated": 6,
        "included": 5,
        "true_positive": 5,
        "baseline_correct": 6,
        "candidate_correct": 5,
        "disagreement": 1,
    },
    "summaries": {
        "layercam": {
            "iou_top20": {"overall": {"mean": 0.475, "ci95_low": 0.2, "ci95_high": 0.8}},
            "pearson": {"overall": {"mean": 0.5, "ci95_low": 0.5, "ci95_high": 0.5}},
        }
    },
    "verdict": {"verdict": "pass"},
}


def test_report_409_until_succeeded_then_json_and_markdown(world, job, db) -> None:
    problem = assert_problem(world.client.get(f"/drift-jobs/{job}/report"), 409)
    assert problem["job_status"] == "queued"
    _succeed(db, job, REPORT)
    response = world.client.get(f"/drift-jobs/{job}/report")
    assert response.status_code == 200 and response.json() == REPORT
    md = world.client.get(f"/drift-jobs/{job}/report", params={"format": "md"})
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    text = md.text
    assert "| layercam | 0.475 [0.200, 0.800] | 0.500 [0.500, 0.500] |" in text
    assert "| candidate | 6 | 0.830 | – |" in text
    assert "**PASS**" in text
    assert "Noise floor" not in text  # the job measured none
    assert_problem(
        world.client.get(f"/drift-jobs/{job}/report", params={"format": "pdf"}), 422, "query.format"
    )
    assert_problem(world.client.get("/drift-jobs/nope/report"), 404)


def test_markdown_report_has_the_noise_floor(world, job, db) -> None:
    """?format=md carries the floor section the HTML page has, from the stored report."""
    stats = {"n": 5, "n_nan": 0, "mean": 0.9, "median": 0.91, "std": 0.01}
    entry = {
        "direction": "lower",
        "threshold": 0.85,
        "beyond_floor": 0.42,
        "beyond_floor_per_class": {},
        "floor": stats,
    }
    replica = {**entry, "threshold": 0.5, "beyond_floor": 0.06}
    document = {
        **REPORT,
        "noise_floor": {"layercam": {"pearson": entry}},
        "replica_floor": {"layercam": {"pearson": replica}},
    }
    _succeed(db, job, document)
    md = world.client.get(f"/drift-jobs/{job}/report", params={"format": "md"})
    assert md.status_code == 200, md.text
    text = md.text
    assert "### Noise floor" in text
    perturbed, other = text.split("vs perturbed baseline:")[1].split("vs baseline replica")
    assert "| layercam | pearson | 0.910 | 0.850 | 42% |" in perturbed
    assert "| layercam | pearson | 0.910 | 0.500 | 6% |" in other


def test_report_of_a_failed_job_is_409(world, job, db) -> None:
    db.execute(update(Job).where(Job.id == job).values(status="failed", error="boom"))
    db.commit()
    problem = assert_problem(world.client.get(f"/drift-jobs/{job}/report"), 409)
    assert problem["job_status"] == "failed"


def test_rows_round_trip_through_sql(world, job, db) -> None:
    from worker.store.models import JobSample, SampleMetric

    sample = db.get(JobSample, (job, 0))
    metrics = db.query(SampleMetric).filter_by(job_id=job, index=0).all()
    row = row_from_records(
        sample, sorted(metrics, key=lambda m: m.method, reverse=True), names=METRICS
    )
    assert row == _row(0, "covid/img0.png", 0, True, 0.9)


def test_samples_sorted_nulls_last_and_paged(world, job) -> None:
    url = f"/drift-jobs/{job}/samples"
    page = world.client.get(url, params={"sort": "iou_top20", "order": "desc"}).json()
    assert page["total"] == 6 and page["method"] == "layercam"
    assert [s["index"] for s in page["items"]] == [0, 4, 2, 5, 1, 3]
    ascending = world.client.get(url, params={"sort": "iou_top20"}).json()
    assert [s["index"] for s in ascending["items"]] == [5, 2, 4, 0, 1, 3]
    first = page["items"][0]
    assert first["metrics"] == {"iou_top20": 0.9, "pearson": 0.5, "iou_top10": 0.0}
    assert first["label_name"] == "normal" and first["degenerate"] == {
        "baseline": False,
        "candidate": False,
    }
    assert first["overlay"] == f"/drift-jobs/{job}/samples/0/overlay.png?method=layercam"
    excluded = next(s for s in page["items"] if s["index"] == 3)
    assert excluded["metrics"] is None and excluded["overlay"] is None
    paged = world.client.get(
        url, params={"sort": "iou_top20", "order": "desc", "limit": 2, "offset": 2}
    ).json()
    assert [s["index"] for s in paged["items"]] == [2, 5]
    only = world.client.get(url, params={"included": "false"}).json()
    assert only["total"] == 1 and only["items"][0]["index"] == 3
    other = world.client.get(url, params={"method": "gradcam++"}).json()
    assert other["method"] == "gradcam++" and other["items"][0]["metrics"]["pearson"] == 0.5


def test_samples_sort_by_any_metric_of_the_job_in_sql(world, job) -> None:
    """iou_topQ metrics of the job sort like the built-in ones (no column of their own)."""
    url = f"/drift-jobs/{job}/samples"
    page = world.client.get(url, params={"sort": "iou_top10", "order": "desc"}).json()
    assert [s["index"] for s in page["items"]] == [5, 4, 2, 1, 0, 3]  # excluded 3: NULL, last
    ascending = world.client.get(url, params={"sort": "iou_top10", "limit": 2}).json()
    assert [s["index"] for s in ascending["items"]] == [0, 1]
    # a catalogued metric the job did not compute: every value NULL, so by index
    unmeasured = world.client.get(url, params={"sort": "spearman", "order": "desc"}).json()
    assert [s["index"] for s in unmeasured["items"]] == [0, 1, 2, 3, 4, 5]


def test_samples_sort_by_an_audit_stage_metric(world, db) -> None:
    """``consistency_*`` values live in the finaliser's rows (stage ``audit``), beside the
    shards' ones of the same series: sorting by one reads those rows, not the pair ones."""
    names = ["pearson", "consistency_change"]
    job_id = world.client.post("/drift-jobs", json=world.job_body(metrics=names)).json()["id"]
    change = [0.3, -0.2, None, 0.9, 0.0]
    for i, value in enumerate(change):
        row = _row(i, f"covid/img{i}.png", 0, True, 0.5)
        for method in row["metrics"]:
            row["metrics"][method] |= {"pearson": 1 - i / 10, "consistency_change": value}
        db.add_all(records_from_row(job_id, row))
    db.commit()
    url = f"/drift-jobs/{job_id}/samples"
    page = world.client.get(url, params={"sort": "consistency_change", "order": "desc"}).json()
    assert [s["index"] for s in page["items"]] == [3, 0, 4, 1, 2]  # NULL last
    by_pearson = world.client.get(url, params={"sort": "pearson"}).json()
    assert [s["index"] for s in by_pearson["items"]] == [4, 3, 2, 1, 0]
    assert page["items"][0]["metrics"]["consistency_change"] == 0.9


def test_samples_validation(world, job) -> None:
    url = f"/drift-jobs/{job}/samples"
    problem = assert_problem(world.client.get(url, params={"sort": "iou_top30"}), 422, "query.sort")
    assert "iou_top10" in problem["detail"], "the job's own metrics are offered"
    assert_problem(world.client.get(url, params={"sort": "path; drop"}), 422, "query.sort")
    assert_problem(world.client.get(url, params={"order": "up"}), 422, "query.order")
    assert_problem(world.client.get(url, params={"method": "gradcam"}), 422, "query.method")
    assert_problem(world.client.get(url, params={"limit": 5000}), 422, "query.limit")
    assert_problem(world.client.get("/drift-jobs/nope/samples"), 404)


def _write_maps(world, job: str, rows: list[int]) -> None:
    maps_dir = world.client.app.state.store.maps_dir(job)
    maps_dir.mkdir(parents=True)
    n = len(rows)
    peak = np.zeros((n, 6, 6), dtype=np.float16)
    peak[:, 1, 1] = 1.0
    other = np.zeros((n, 6, 6), dtype=np.float16)
    other[:, 4, 4] = 1.0
    arrays = {"rows": np.asarray(rows, dtype=np.int64)}
    for method in ("layercam", "gradcam++"):
        arrays[f"baseline__{method}"] = peak
        arrays[f"candidate__{method}"] = other
    np.savez_compressed(maps_dir / f"rows-{rows[0]:06d}-{rows[-1]:06d}.npz", **arrays)


def test_overlay_png(world, job) -> None:
    _write_maps(world, job, [0, 1, 2])
    response = world.client.get(f"/drift-jobs/{job}/samples/2/overlay.png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content)).convert("RGB")
    side = display_size(32, 32)  # small inputs are scaled up to stay legible
    assert side[0] > 32 and image.size == canvas_size(side)
    pixels = np.asarray(image).astype(int)
    panels = []
    for i in (0, 1):
        x, y = panel_origin(i, side)
        panels.append(pixels[y : y + side[0], x : x + side[1]])
    left, right = panels
    # the maps peak at feature cell (1, 1) and (4, 4) of 6x6: top-left and bottom-right
    near, far = round(side[0] * 1.5 / 6), round(side[0] * 4.5 / 6)

    def warmth(panel: np.ndarray, at: int) -> int:
        return int(panel[at, at, 0] - panel[at, at, 2])  # red minus blue

    assert warmth(left, near) > 60 and warmth(right, far) > 60
    assert warmth(left, far) < warmth(right, far) and warmth(right, near) < warmth(left, near)
    gradcampp = world.client.get(
        f"/drift-jobs/{job}/samples/2/overlay.png", params={"method": "gradcam++"}
    )
    assert gradcampp.status_code == 200


def test_overlay_404s(world, job) -> None:
    _write_maps(world, job, [0, 1, 2])
    assert_problem(world.client.get(f"/drift-jobs/{job}/samples/4/overlay.png"), 404)
    assert_problem(world.client.get(f"/drift-jobs/{job}/samples/99/overlay.png"), 404)
    assert_problem(
        world.client.get(f"/drift-jobs/{job}/samples/0/overlay.png", params={"method": "gradcam"}),
        422,
        "query.method",
    )
    assert_problem(world.client.get("/drift-jobs/nope/samples/0/overlay.png"), 404)


def test_report_html_page_with_rows_from_sql_and_overlays_from_the_store(world, job, db) -> None:
    """?format=html: one self-contained page; the most drifted included samples (iou 0.1,
    0.3, 0.6, 0.9 ...) get overlays where the store has their maps (rows 0-2 here)."""
    from worker.render.html_report import OPTIONAL, SECTIONS

    _write_maps(world, job, [0, 1, 2])
    assert_problem(world.client.get(f"/drift-jobs/{job}/report", params={"format": "html"}), 409)
    document = {
        **REPORT,
        "dataset": {**REPORT["dataset"], "class_names": ["covid", "normal", "<b>pneu</b>"]},
        "verdict": {"verdict": "fail", "rules": [{"method": "layercam", "passed": False}]},
    }
    _succeed(db, job, document)
    response = world.client.get(f"/drift-jobs/{job}/report", params={"format": "html"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for sid, _ in (s for s in SECTIONS if s[0] not in OPTIONAL):  # shown when measured
        assert f'<section id="{sid}"' in page, sid
    assert 'class="banner v-fail"' in page
    assert "<b>pneu</b>" not in page and "&lt;b&gt;pneu&lt;/b&gt;" in page
    assert "http://" not in page and "https://" not in page
    samples = page.split('<section id="samples"')[1].split("</section>")[0]
    # layercam, lowest iou first: 5 (0.1, no maps), 2 (0.3), 4 (0.6, no maps), 0 (0.9)
    assert samples.index("<b>#5</b>") < samples.index("<b>#2</b>") < samples.index("<b>#0</b>")
    payloads = re.findall(r'src="data:image/png;base64,([^"]+)"', samples)
    assert len(payloads) == 2 and samples.count("overlay unavailable") == 2
    for payload in payloads:
        assert Image.open(io.BytesIO(base64.b64decode(payload))).format == "PNG"


@pytest.mark.parametrize(("shape", "size"), [((6, 6), (32, 32)), ((7, 5), (50, 41))])
def test_map_rebuild_matches_the_engine_upsampling(shape, size) -> None:
    """PIL's bilinear upsampling equals torch's (align_corners=False), then min-max."""
    import torch
    import torch.nn.functional as F

    from worker.render.overlay import full_size

    raw = np.random.default_rng(0).random(shape).astype(np.float32)
    ours = full_size(raw, size)
    ref = F.interpolate(
        torch.from_numpy(raw)[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert not full_size(np.zeros(shape, np.float16), size).any()
