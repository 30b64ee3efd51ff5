"""The HTML report: one self-contained page, escaped, with plots and overlays; it renders in
headless Chromium (skipped on a laptop without it, a failure under CI)."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from service.cli import app
from tests.builders import EVERY_SAMPLE, drift_args, tiny_audit_inputs
from tests.ci import skip_or_fail
from worker.render.html_report import (
    SECTIONS,
    headline,
    most_drifted,
    render_html,
    write_local_html,
)
from worker.render.overlay import OverlayUnavailable, render_overlay
from worker.results.report import build_report
from worker.results.report_schema import Stats, TrajectorySeries, read_model

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
OPTIONAL = ("floor", "ceiling", "trajectory")  # shown only when the audit measured them
SECTION_IDS = [sid for sid, _ in SECTIONS if sid not in OPTIONAL]
assert SECTION_IDS == [
    "verdict",
    "performance",
    "subsets",
    "distributions",
    "per-class",
    "samples",
    "settings",
]
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
EVIL = '<script>alert("x")</script>'


# --------------------------------------------------------------------------- helpers


def decode_images(page: str) -> list[Image.Image]:
    """Every <img> of the page, decoded; each must be an inline PNG."""
    assert page.count("<img") == len(DATA_URI.findall(page)), "an <img> is not a PNG data URI"
    images = []
    for payload in DATA_URI.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        assert image.format == "PNG"
        image.load()
        images.append(image)
    return images


def assert_self_contained(page: str) -> None:
    """No resource from elsewhere: no URL scheme, links only to anchors, no CSS imports."""
    assert "http://" not in page and "https://" not in page
    for ref in re.findall(r'\b(?:src|href|xlink:href|action)\s*=\s*["\']?([^"\'\s>]*)', page):
        assert ref.startswith(("#", "data:image/png;base64,")), ref
    assert re.findall(r"url\(([^)]*)\)", page) in ([], ["#heat"]), "external CSS url()"
    assert "@import" not in page and "<link" not in page and "<iframe" not in page


def synthetic(
    class_names: list[str], n: int = 24, seed: int = 0, *, floor: bool = False
) -> tuple[dict, list[dict]]:
    """A report built by the real report builder from made-up rows (no torch, no files);
    ``floor``: every included row also carries a noise floor (drift of a perturbed baseline,
    close to "unchanged")."""
    rng = np.random.default_rng(seed)
    k = len(class_names)
    rows = []
    for i in range(n):
        label = i % k
        pred_b = label if i % 7 else (label + 1) % k
        pred_c = label if i % 5 else (label + 2) % k
        included = label == pred_b == pred_c
        metrics, degenerate = {}, {}
        if included:
            for method, shift in (("layercam", 0.0), ("gradcam++", 0.1)):
                iou = float(np.clip(rng.normal(0.45 + shift, 0.15), 0, 1))
                metrics[method] = {
                    "iou_top20": iou,
                    "displacement": float(abs(rng.normal(0.08, 0.05))),
                    "pearson": float(np.clip(rng.normal(0.6, 0.2), -1, 1)),
                    "concentration_change": float(rng.normal(0.0, 0.05)),
                }
                degenerate[method] = [False, i == 8]
        noise = None
        if floor and included:
            noise = {
                method: {
                    "iou_top20": float(np.clip(rng.normal(0.7, 0.15), 0, 1)),
                    "displacement": float(abs(rng.normal(0.05, 0.04))),
                    "pearson": float(np.clip(rng.normal(0.95, 0.03), -1, 1)),
                    "concentration_change": float(rng.normal(0.0, 0.01)),
                }
                for method in metrics
            }
        probs = [0.1 / (k - 1)] * k
        rows.append(
            {
                "index": i,
                "path": f"{class_names[label]}/img{i}.png",
                "label": label,
                "pred_baseline": pred_b,
                "pred_candidate": pred_c,
                "probs_baseline": [0.9 if j == pred_b else p for j, p in enumerate(probs)],
                "probs_candidate": [0.9 if j == pred_c else p for j, p in enumerate(probs)],
                "target_baseline": label,
                "target_candidate": label,
                "included": included,
                "metrics": metrics,
                "degenerate": degenerate,
                **({"floor": noise} if noise else {}),
            }
        )
    methods = ["layercam", "gradcam++"]
    metrics = ["iou_top20", "displacement", "pearson", "concentration_change"]
    model = {"arch": "resnet50v2", "class_names": class_names, "input_size": [64, 64]}
    report = build_report(
        rows,
        models={
            "baseline": {**model, "source": "tl.safetensors", "sha256": "a" * 64, "phase": "tl"},
            "candidate": {**model, "source": "ft.safetensors", "sha256": "b" * 64, "phase": "ft"},
        },
        dataset={
            "source": "data",
            "fingerprint": "f" * 64,
            "num_samples": n,
            "num_evaluated": n,
            "class_names": class_names,
            "split": None,
            "analysis_size": [64, 64],
        },
        config={
            "methods": methods,
            "metrics": metrics,
            "sample_filter": "true_positive",
            "seed": 0,
            "n_boot": 200,
        },
        samples_location="r.samples.jsonl",
    )
    return report, rows


def fail_verdict(report: dict, rule_name: str = "evidence stays") -> dict:
    """A verdict as the gate writes it: one failed check, one passed, one not evaluable."""
    mean = report["summaries"]["layercam"]["iou_top20"]["overall"]["mean"]
    return {
        "verdict": "fail",
        "reason": "1 of 3 checks failed",
        "min_samples": 5,
        "n_included": report["subsets"]["included"],
        "rules": [
            {
                "name": rule_name,
                "method": "layercam",
                "metric": "iou_top20",
                "stat": "mean",
                "class": "overall",
                "op": ">=",
                "value": 0.9,
                "observed": mean,
                "n": 10,
                "passed": False,
                "reason": f"observed {mean:.3f}, required >= 0.9",
            },
            {
                "name": "gradcam++ displacement q95 <= 0.5",
                "method": "gradcam++",
                "metric": "displacement",
                "stat": "q95",
                "class": "overall",
                "op": "<=",
                "value": 0.5,
                "observed": 0.2,
                "n": 10,
                "passed": True,
                "reason": "observed 0.200 <= 0.5",
            },
            {
                "name": "layercam pearson beyond_floor <= 0.1",
                "method": "layercam",
                "metric": "pearson",
                "stat": "beyond_floor",
                "class": "overall",
                "op": "<=",
                "value": 0.1,
                "observed": None,
                "n": 10,
                "passed": None,
                "reason": "the report has no noise floor",
            },
        ],
    }


def tiny_png(index: int, method: str) -> bytes:
    image = np.full((1, 20, 20), 0.5, dtype=np.float32)
    peak = np.zeros((4, 4), dtype=np.float32)
    peak[index % 4, 1] = 1.0
    return render_overlay(image, peak, peak.T, ("baseline · " + method, "candidate"))


# --------------------------------------------------------------------------- render_html


def test_page_has_every_section_a_verdict_and_escapes_report_strings() -> None:
    names = ["normal", EVIL, "covid"]
    report, rows = synthetic(names)
    report["verdict"] = fail_verdict(report, rule_name=EVIL)
    report["dataset"]["source"] = "/data/" + EVIL
    report["config"]["note"] = EVIL
    for row in rows:
        row["path"] = f"{EVIL}/{row['path']}"
    calls: list[tuple[int, str]] = []

    def overlay(index: int, method: str) -> bytes:
        calls.append((index, method))
        return tiny_png(index, method)

    page = render_html(report, rows, overlay, top_k=3)
    for sid in SECTION_IDS:
        assert page.count(f'<section id="{sid}"') == 1, sid
    # the only <script> is the page's own image check; every injected one is inert text
    assert page.count("<script>") == 1 and EVIL not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page  # escaped by Jinja2
    assert 'class="banner v-fail"' in page and ">FAIL<" in page
    rules = page.split('<table class="rules">')[1].split("</table>")[0]
    assert rules.count("<tr>") == 4  # header + 3 checks
    assert 'pill bad">fail' in rules and 'pill ok">pass' in rules and 'pill na">n/a' in rules
    assert "≥ 0.900" in rules and "the report has no noise floor" in rules
    assert len(calls) == 2 * 3 and {m for _, m in calls} == {"layercam", "gradcam++"}
    assert len(decode_images(page)) == 6
    assert_self_contained(page)
    # every method x metric has its plot, with the mean marked
    assert page.count('<svg class="dist"') == 4
    assert page.count('class="mean"') == 4 * 2


@pytest.mark.parametrize(
    ("verdict", "css", "badge"),
    [
        ({"verdict": "pass"}, "v-pass", "PASS"),
        ({"verdict": "inconclusive", "reason": "only 3 included samples"}, "v-inconclusive", ""),
        (None, "v-none", "NO POLICY"),
        ({"something": "else"}, "v-none", "NO POLICY"),
    ],
)
def test_verdict_banner_states(verdict, css, badge) -> None:
    report, rows = synthetic(["a", "b"])
    report["verdict"] = verdict
    page = render_html(report, rows, lambda i, m: None)
    banner = page.split('<section id="verdict"')[1].split("</section>")[0]
    assert f'class="banner {css}"' in banner and badge in banner
    if verdict and verdict.get("reason"):
        assert "Only 3 included samples" in banner


def test_most_drifted_ranks_lowest_iou_then_highest_displacement() -> None:
    def row(i: int, included: bool = True, **metrics: float | None) -> dict:
        return {"index": i, "included": included, "metrics": {"m": metrics}}

    rows = [
        row(0, iou_top20=0.5, displacement=0.9),
        row(1, iou_top20=0.1, displacement=0.0),
        row(2, iou_top20=None, displacement=1.0),
        row(3, False, iou_top20=0.0),
        row(4, iou_top20=0.1),
    ]
    metric, picked = most_drifted(rows, "m", 2)
    assert metric == "iou_top20" and [r["index"] for r in picked] == [1, 4]
    no_iou = [row(i, displacement=d) for i, d in enumerate([0.2, 0.7, 0.5])]
    metric, picked = most_drifted(no_iou, "m", 2)
    assert metric == "displacement" and [r["index"] for r in picked] == [1, 2]
    assert most_drifted(rows, "other", 3) == (None, [])


def _part(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}"')[1].split("</section>")[0]


def _headline(page: str) -> str:
    return page.split('<p class="headline" id="headline">')[1].split("</p>")[0]


def _beyond_share(rows: list[dict], method: str, metric: str) -> float:
    """The share of included samples beyond the floor's 95% tail, from the rows by numpy."""
    kept = [r for r in rows if r["included"]]
    floor = np.array([r["floor"][method][metric] for r in kept])
    drift = np.array([r["metrics"][method][metric] for r in kept])
    if metric in ("iou_top20", "pearson"):  # similarities: drift is the low side
        return float(np.mean(drift < np.quantile(floor, 0.05)))
    return float(np.mean(np.abs(drift) > np.quantile(np.abs(floor), 0.95)))


def _verdict(state: str, *checks: dict, reason: str = "") -> dict:
    return {
        "verdict": state,
        "reason": reason,
        "min_samples": 5,
        "n_included": 10,
        "rules": list(checks),
    }


def _check(metric: str, stat: str, observed: float | None, passed: bool | None, **kw) -> dict:
    return {
        "name": kw.pop("name", f"{metric} {stat}"),
        "method": kw.pop("method", "layercam"),
        "metric": metric,
        "stat": stat,
        "class": kw.pop("klass", "overall"),
        "op": kw.pop("op", ">="),
        "value": kw.pop("value", 0.3),
        "observed": observed,
        "n": 10,
        "passed": passed,
        "reason": kw.pop("reason", ""),
    }


def test_without_a_verdict_the_headline_reads_drift_against_the_floor() -> None:
    report, rows = synthetic(["a", "b", "c"], n=60, floor=True)
    report["performance"]["baseline"]["accuracy"] = 0.93
    report["performance"]["candidate"]["accuracy"] = 0.95
    share = _beyond_share(rows, "layercam", "iou_top20")
    assert 0.3 < share < 1.0  # the made-up candidate drifts well past its floor
    assert headline(report) == (
        "No policy was applied (no pass / fail). Accuracy held (0.930 → 0.950); "
        f"{share:.0%} of the included samples drift beyond the noise floor under LayerCAM "
        "IoU@20 (noise alone puts about 5% there)."
    )
    page = render_html(report, rows, lambda i, m: None)
    assert _headline(page) == headline(report)
    floor = _part(page, "floor")
    assert "no policy was applied: these shares decide nothing" in floor.lower()
    assert f"<strong>{share:.0%}</strong>" in floor  # the headline's share, in its table
    assert "moved" not in _headline(page)


def test_without_a_floor_the_headline_states_the_mean_and_what_unchanged_is() -> None:
    report, _ = synthetic(["a", "b", "c"])
    report["performance"]["candidate"]["accuracy"] = (
        report["performance"]["baseline"]["accuracy"] - 0.1
    )
    stats = report["summaries"]["layercam"]["iou_top20"]["overall"]
    stats.update(mean=0.45, ci95_low=0.41, ci95_high=0.49)
    text = headline(report)
    assert text.startswith("No policy was applied (no pass / fail). Accuracy dropped (")
    assert text.endswith(
        "LayerCAM IoU@20 mean 0.45, 95% CI 0.41–0.49 (1 = unchanged); "
        "no noise floor was measured to read it against."
    )
    assert "moved" not in text and "held" not in text.split(";")[1]
    stats.update(mean=None)
    assert headline(report).endswith("; no drift measured (no included samples).")


def test_a_pass_page_says_pass_and_nothing_contradicts_it() -> None:
    report, rows = synthetic(["a", "b", "c"], n=60, floor=True)
    report["verdict"] = _verdict(
        "pass",
        _check("iou_top20", "mean", 0.45, True, value=0.15),
        _check("pearson", "mean", 0.6, True),
        reason="all 2 checks passed",
    )
    page = render_html(report, rows, lambda i, m: None)
    top = _headline(page)
    assert top.startswith("PASS: all 2 checks passed.")
    assert "moved" not in top and "fail" not in top.lower()
    assert "evidence moved" not in page and "evidence shifted" not in page
    assert 'class="hv v-pass"' in page and 'class="banner v-pass"' in page
    # the floor's large shares are explained as not the verdict: this policy does not gate them
    floor = _part(page, "floor")
    share = _beyond_share(rows, "layercam", "iou_top20")
    assert share > 0.3 and f"<strong>{share:.0%}</strong>" in floor
    assert "this policy has no <code>beyond_floor</code> check" in floor.lower()
    assert "not gated" in floor and "pill bad" not in floor


def test_a_fail_page_lists_failing_checks_first_and_names_them_in_the_headline() -> None:
    report, rows = synthetic(["a", "b", "c"], n=60, floor=True)
    report["verdict"] = _verdict(
        "fail",
        _check("pearson", "mean", 0.61, True, name="correlation kept"),
        _check("iou_top20", "beyond_floor", None, None, reason="no floor for class c", klass="c"),
        _check("iou_top20", "mean", 0.123, False, value=0.15, klass="b", name="overlap kept"),
        _check("displacement", "q95", 0.4, False, op="<=", value=0.2, method="gradcam++"),
        reason="2 of 4 checks failed",
    )
    page = render_html(report, rows, lambda i, m: None)
    assert _headline(page).startswith(
        "FAIL: 2 of 4 checks failed — LayerCAM · IoU@20 · mean · class b: observed 0.123, "
        "required ≥ 0.150; Grad-CAM++ · displacement · q95: observed 0.400, required ≤ 0.200."
    )
    rules = page.split('<table class="rules">')[1].split("</table>")[0]
    results = re.findall(r'class="pill (ok|bad|na)"', rules)
    assert results == ["bad", "bad", "na", "ok"]  # failed, undecided, passed
    assert rules.index("overlap kept") < rules.index("correlation kept")
    # the floor row the policy gates shows that check's outcome
    floor = _part(page, "floor")
    assert "shown in the column “policy”" in floor
    gated = [row for row in floor.split("<tr>") if "IoU@20" in row or ">iou_top20<" in row]
    assert any("c ≥ 0.300" in row and 'pill na">n/a' in row for row in gated)


def test_an_inconclusive_headline_names_the_undecided_checks() -> None:
    report, _ = synthetic(["a", "b"])
    undecided = _check("pearson", "mean", None, None, reason="no included samples of class b")
    report["verdict"] = _verdict(
        "inconclusive",
        _check("iou_top20", "mean", 0.5, True),
        undecided,
        reason="1 of 2 checks could not be decided",
    )
    assert headline(report).startswith(
        "INCONCLUSIVE: 1 of 2 checks could not be decided — LayerCAM · Pearson r · mean: "
        "no included samples of class b."
    )
    report["verdict"].update(n_included=3, reason="only 3 included samples")
    assert headline(report).startswith("INCONCLUSIVE: only 3 included samples. Accuracy")


def test_missing_overlays_and_a_sparse_report_still_render() -> None:
    report, rows = synthetic(["a", "b"])

    def unavailable(index: int, method: str) -> bytes:
        raise OverlayUnavailable("no maps")

    page = render_html(report, rows, unavailable)
    assert "<img" not in page and "overlay unavailable" in page
    sparse = {"verdict": {"verdict": "pass"}, "summaries": {"layercam": {}}}
    page = render_html(copy.deepcopy(sparse), [], lambda i, m: None)
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in page


# --------------------------------------------------------------------------- local run


@pytest.fixture(scope="module")
def local_page(tmp_path_factory) -> tuple[Path, Path]:
    """``camdrift drift --html`` on phantoms with two random tiny CNNs: (report, page)."""
    root = tiny_audit_inputs(tmp_path_factory.mktemp("html"), per_class=4, size=64, seed=3)
    out, page = root / "report.json", root / "report.html"
    result = CliRunner().invoke(
        app,
        drift_args(
            root,
            "--out",
            str(out),
            *EVERY_SAMPLE,
            "--html",
            str(page),
        ),
    )
    assert result.exit_code == 0, result.output
    return out, page


def test_local_drift_writes_a_self_contained_page(local_page) -> None:
    out, page_path = local_page
    page = page_path.read_text()
    report = json.loads(out.read_text())
    for sid in SECTION_IDS:
        assert f'<section id="{sid}"' in page
    assert 'class="banner v-none"' in page  # the local run had no policy
    assert_self_contained(page)
    images = decode_images(page)
    assert len(images) == 2 * 6  # top 6 per method, all 20 samples included
    for image in images:
        assert image.width > 2 * 64 and image.height > 64  # two panels, scaled up to be read
        colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 200  # a heat layer over an image, not a flat fill
    assert f"{report['performance']['baseline']['accuracy']:.3f}" in page
    assert report["models"]["candidate"]["sha256"] in page
    assert report["dataset"]["fingerprint"] in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _headless(browser: str, page: Path, profile: Path, *args: str) -> str:
    command = [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_page_renders_in_headless_chromium(local_page, tmp_path) -> None:
    browser = _chromium()
    if browser is None:
        skip_or_fail("chromium is not installed")
    out, local = local_page
    report = json.loads(out.read_text())
    # the same run as the gate would leave it: a failing verdict with its rule table
    report["verdict"] = fail_verdict(report)
    gated = out.with_name("gated.json")
    gated.write_text(json.dumps(report))
    for suffix in (".samples.jsonl", ".maps"):
        target = out.with_name("gated" + suffix)
        if not target.exists():
            target.symlink_to(out.with_name("report" + suffix))
    page = tmp_path / "gated.html"
    write_local_html(gated, page)

    ARTIFACTS.mkdir(exist_ok=True)
    for source, name in ((local, "html-report"), (page, "html-report-gated")):
        dom = _headless(browser, source, tmp_path / f"profile-{name}", "--dump-dom")
        for sid in SECTION_IDS:
            assert f'<section id="{sid}"' in dom, sid
        assert 'data-images-ok="true"' in dom, "an image did not load"
        assert 'data-images="12"' in dom
        shot = ARTIFACTS / f"{name}.png"
        shot.unlink(missing_ok=True)
        _headless(
            browser,
            source,
            tmp_path / f"profile-shot-{name}",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
        )
        with Image.open(shot) as image:
            assert image.size == (1280, 2400)
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.std() > 20  # something was drawn, not a blank page
    assert "v-fail" in dom and ">FAIL<" in dom


def test_floor_section_appears_only_with_a_floor(local_page) -> None:
    report_path, _ = local_page
    report = json.loads(report_path.read_text())
    assert 'id="floor"' not in render_html(report, [], lambda index, method: None)
    stats = report["summaries"]["layercam"]["pearson"]["overall"]
    entry = {
        "direction": "lower",
        "threshold": 0.9,
        "beyond_floor": 0.42,
        "beyond_floor_per_class": {},
        "floor": stats,
    }
    report["noise_floor"] = {"layercam": {"pearson": entry}}
    page = render_html(report, [], lambda index, method: None)
    assert 'id="floor"' in page and "42%" in page and 'href="#floor"' in page


# --------------------------------------------------------------------------- templates


def test_page_inlines_the_package_stylesheet_and_templates() -> None:
    from importlib import resources

    package = resources.files("worker.render")
    css = package.joinpath("report.css").read_text(encoding="utf-8")
    for name in ("report.html.j2", "_trajectory.html.j2", "summary.md.j2"):
        assert package.joinpath("templates", name).is_file(), name
    report, rows = synthetic(["a", "b"])
    page = render_html(report, rows, lambda i, m: None)
    assert f"<style>{css}</style>" in page and page.count("<style>") == 1


def test_charts_escape_the_text_they_embed() -> None:
    from markupsafe import Markup

    from worker.render.charts import distribution_svg, trajectory_svg
    from worker.render.html_trajectory import trajectory_section

    stats = read_model(Stats, {"mean": 0.5, "ci95_low": 0.4, "ci95_high": 0.6, "n": 3})
    svg = distribution_svg("iou_top20", [(EVIL, [0.3, 0.5, 0.7], stats)], {EVIL: "#000"})
    entry = TrajectorySeries(from_first=[stats], consecutive=[stats], sharpest_step=1)
    traj = trajectory_svg("pearson", entry, ["tl", EVIL], "#000", EVIL)
    for markup in (svg, traj):
        assert isinstance(markup, Markup) and "<script" not in markup
        assert "&lt;script&gt;" in markup
    assert trajectory_section({"trajectory": None}) == ""
