"""Images are decoded once per audit, however many models look at them: baseline,
candidate, replica, trajectory steps, the randomised ceiling and the noise floor all share
the batch the loader decoded. The audit records its loader time apart from the models'."""

from __future__ import annotations

from collections import Counter

import training.image_dataset as image_dataset
from tests.builders import tiny_audit_inputs
from worker.engine.audit import Audit, AuditConfig


def test_each_image_is_decoded_once_for_every_model(tmp_path, monkeypatch) -> None:
    root = tiny_audit_inputs(tmp_path, per_class=3, size=32)
    reads: Counter[str] = Counter()
    real = image_dataset.read_image

    def counting(path, *args, **kwargs):
        reads[str(path)] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(image_dataset, "read_image", counting)
    cfg = AuditConfig(
        methods=["layercam", "gradcam++"],
        sample_filter="all",
        split=None,
        noise_floor=True,
        ceiling="head",
        batch_size=4,
    )
    tl, ft = root / "tl.safetensors", root / "ft.safetensors"
    audit = Audit(tl, ft, root / "data", cfg, replica=ft, trajectory=[tl, ft])
    rows = audit.compute()
    assert len(rows) == audit.total == 15
    assert rows[0]["trajectory"] and rows[0]["replica_floor"] and rows[0]["ceiling"]
    images = {p: n for p, n in reads.items() if "/masks/" not in p}
    assert len(images) == audit.total  # every audited image read ...
    assert set(reads.values()) == {1}  # ... exactly once, and so is each region mask
    assert audit.timing["load_s"] > 0 and audit.timing["compute_s"] > audit.timing["load_s"]
