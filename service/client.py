"""A client of the camdrift REST API, for ``camdrift gate`` and ``camdrift demo``.

Checkpoints are uploaded only when the server lacks their sha256, a dataset folder only when
the server holds no upload with the same content digest (``GET /datasets?content_sha256=``);
a job is submitted, polled until it finishes (cancelled on timeout) and its report fetched.
Every failure is a :class:`ClientError` whose one-line message says what to do.

Torch-free; httpx is imported when a client is made.
"""

from __future__ import annotations

import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from training.checkpoint_format import sha256_file
from training.datasets import content_digest
from training.import_request import ImportRequest
from worker.catalog import ACTIVE_STATUSES
from worker.results.gate import Policy, audit_options

ACTIVE = tuple(str(status) for status in ACTIVE_STATUSES)  # "queued", "running"
Say = Callable[[str], None]
OnProgress = Callable[[int, int | None], None]


class ClientError(Exception):
    """The server cannot be used for this request: a one-line message that says what to do."""


def _quiet(_: str) -> None:
    pass


class Client:
    """httpx calls that turn every failure into a :class:`ClientError`; ``say`` receives one
    line per step (uploads skipped or made, the job submitted, where the report is)."""

    def __init__(self, server: str, token: str | None = None, say: Say = _quiet) -> None:
        import httpx

        self.server = server.rstrip("/")
        self.say = say
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=self.server, headers=headers, timeout=httpx.Timeout(60.0, connect=10.0)
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ----------------------------------------------------------------------- requests

    def _send(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise ClientError(
                f"cannot reach camdrift at {self.server}: {_reason(exc)} — start it with "
                "`camdrift serve` or `docker compose up`, or use --local"
            ) from None
        except httpx.TimeoutException:
            raise ClientError(
                f"camdrift at {self.server} did not answer {method} {path} in time — "
                "check that the server is healthy (GET /readyz) and retry"
            ) from None
        except httpx.HTTPError as exc:
            raise ClientError(
                f"talking to camdrift at {self.server} failed ({method} {path}): {_reason(exc)}"
            ) from None
        if response.status_code >= 400:
            raise ClientError(self._problem(method, path, response))
        return response

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON body of ``method path``."""
        response = self._send(method, path, **kw)
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"{self.server} answered {method} {path} with something that is not JSON — "
                "is this a camdrift server? check --server / CAMDRIFT_URL"
            ) from None

    def text(self, path: str, **kw: Any) -> str:
        """The text body of ``GET path`` (a rendered report)."""
        return self._send("GET", path, **kw).text

    def _problem(self, method: str, path: str, response: Any) -> str:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        detail = str(body.get("detail") or body.get("title") or response.text[:200]).strip()
        unsaid = [  # field errors the detail does not mention already
            f"{e.get('field')}: {e.get('message')}"
            for e in body.get("errors") or []
            if isinstance(e, dict) and str(e.get("field")) not in detail
        ]
        if unsaid:
            detail = f"{detail} ({'; '.join(unsaid)})"
        where = f"{method} {path}"
        if status in (401, 403):
            return (
                f"camdrift at {self.server} refused {where} ({status}): {detail} — "
                "pass a valid --token or set CAMDRIFT_TOKEN"
            )
        if status >= 500:
            return (
                f"camdrift at {self.server} failed on {where} ({status}): {detail} — "
                "check the server's logs and retry"
            )
        return f"camdrift rejected {where} ({status}): {detail}"

    # ----------------------------------------------------------------------- uploads

    def find(self, kind: str, key: str, digest: str, what: str) -> str | None:
        """The id of the server's ``kind`` record whose ``key`` is ``digest`` (said), or None:
        the caller uploads."""
        page = self.call("GET", f"/{kind}s", params={key: digest, "limit": 1})
        for item in page.get("items") or []:
            if item.get(key) == digest:
                self.say(
                    f"{what} is on the server already ({kind} {item['id']}, {key} "
                    f"{digest[:12]}), not uploaded"
                )
                return str(item["id"])
        return None

    def upload(
        self, kind: str, path: Path, media_type: str, fields: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """POST one file (and form ``fields``) to ``/{kind}s`` (a long timeout: large
        checkpoints and datasets)."""
        import httpx

        with open(path, "rb") as fh:
            return self.call(
                "POST",
                f"/{kind}s",
                files={"file": (path.name, fh, media_type)},
                data=fields or None,
                timeout=httpx.Timeout(600.0, connect=10.0),
            )

    def checkpoint_id(
        self, path: Path, role: str, weights: ImportRequest | None = None, timeout: float = 600.0
    ) -> str:
        """The server's id for this file: found by sha256, uploaded only when missing. With
        ``weights`` the file was trained elsewhere: it is uploaded with those fields and the
        server's import of it is awaited (the server answers a repeated upload at once)."""
        try:
            sha = sha256_file(path)
        except OSError as exc:
            raise ClientError(f"cannot read checkpoint {path} (--{role}): {exc.strerror}") from None
        if weights is not None:
            return self._imported(path, role, weights, timeout)
        found = self.find("checkpoint", "sha256", sha, f"{role}: {path.name}")
        if found is not None:
            return found
        record = self.upload("checkpoint", path, "application/octet-stream")
        self.say(f"{role}: uploaded {path.name} (checkpoint {record['id']}, sha256 {sha[:12]})")
        return str(record["id"])

    def _imported(self, path: Path, role: str, weights: ImportRequest, timeout: float) -> str:
        started = self.upload("checkpoint", path, "application/octet-stream", weights.to_form())
        location = started["links"]["self"]
        deadline = time.monotonic() + timeout
        row, pause = started, 0.2
        while row["status"] in ACTIVE:
            if time.monotonic() > deadline:
                raise ClientError(
                    f"the server did not import {path.name} (--{role}) within {timeout:g} s — "
                    f"is a worker running? see {self.server}{location}"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 2.0)
            row = self.call("GET", location)
        if row["status"] != "succeeded":
            raise ClientError(
                f"the server could not import {path.name} (--{role}): "
                f"{row.get('error') or 'no error message'}"
            )
        self.say(
            f"{role}: imported {path.name} as {weights.arch} (checkpoint {row['checkpoint_id']})"
        )
        return str(row["checkpoint_id"])

    def dataset_id(self, data: Path | None, dataset_id: str | None = None) -> str:
        """``dataset_id`` checked on the server, or the folder ``data``: found by its content
        digest, zipped and uploaded only when missing."""
        if dataset_id is not None:
            return str(self.call("GET", f"/datasets/{dataset_id}")["id"])
        assert data is not None
        found = self.find("dataset", "content_sha256", content_digest(data), f"dataset: {data}")
        if found is not None:
            return found
        with tempfile.TemporaryDirectory(prefix="camdrift-gate-") as tmp:
            archive = Path(tmp) / f"{data.resolve().name or 'dataset'}.zip"
            count = zip_folder(data, archive)
            if count == 0:
                raise ClientError(f"the dataset folder {data} has no files (--data)")
            record = self.upload("dataset", archive, "application/zip")
        self.say(
            f"dataset: uploaded {data} ({record.get('num_samples')} images, dataset {record['id']})"
        )
        return str(record["id"])

    # ----------------------------------------------------------------------- jobs

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a drift job; the job as the server stored it."""
        job = self.call("POST", "/drift-jobs", json=body)
        self.say(f"job {job['id']} submitted: {self.server}/drift-jobs/{job['id']}")
        return job

    def wait(
        self, job: dict[str, Any], timeout: float, on_progress: OnProgress | None = None
    ) -> dict[str, Any]:
        """Poll the job until it is finished; cancel it and raise on timeout."""
        location = f"/drift-jobs/{job['id']}"
        deadline = time.monotonic() + timeout
        pause = 0.2
        while True:
            progress = job.get("progress") or {}
            if on_progress is not None:
                on_progress(progress.get("done") or 0, progress.get("total"))
            if job["status"] not in ACTIVE:
                return job
            if time.monotonic() > deadline:
                with suppress(ClientError):
                    self.call("POST", f"{location}/cancel")
                raise ClientError(
                    f"job {job['id']} did not finish within {timeout:g} s and was cancelled — "
                    "raise --timeout, or lower --max-samples"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 2.0)
            job = self.call("GET", location)

    def report(self, job: dict[str, Any]) -> dict[str, Any]:
        """The report of a finished job, with the job's verdict when the report lacks one;
        a job that failed or was cancelled is a :class:`ClientError`."""
        location = f"/drift-jobs/{job['id']}"
        if job["status"] == "failed":
            raise ClientError(
                f"job {job['id']} failed: {job.get('error') or 'no error message'} — "
                f"see {self.server}{location}"
            )
        if job["status"] != "succeeded":
            raise ClientError(
                f"job {job['id']} was {job['status']} before it finished — rerun the gate"
            )
        doc = self.call("GET", f"{location}/report")
        if not isinstance(doc.get("verdict"), dict) and isinstance(job.get("verdict"), dict):
            doc["verdict"] = job["verdict"]
        self.say(f"report: {self.server}{location}/report")
        return doc

    def start_audit(
        self,
        baseline: Path,
        candidate: Path,
        data: Path | None,
        dataset_id: str | None,
        policy: Policy,
        options: dict[str, Any],
        trajectory: Sequence[Path] = (),
        weights: ImportRequest | None = None,
    ) -> dict[str, Any]:
        """Upload what the server lacks and submit the gated job; the job (:meth:`wait` for
        it, then fetch its :meth:`report`).

        ``options`` are job-body fields, completed with what the policy reads
        (:func:`~worker.results.gate.audit_options`: the noise floor for ``beyond_floor``, the
        metrics its rules name; ``camdrift gate --local`` derives the same); None values are
        left to the server, split ``all`` is sent as null (every sample). ``weights``: the
        files were trained elsewhere, the server imports them (baseline tl, candidate ft)."""
        tl = replace(weights, phase="tl") if weights is not None else None
        ft = replace(weights, phase="ft") if weights is not None else None
        body: dict[str, Any] = {
            "baseline_id": self.checkpoint_id(baseline, "baseline", tl),
            "candidate_id": self.checkpoint_id(candidate, "candidate", ft),
            "dataset_id": self.dataset_id(data, dataset_id),
            "policy": policy.model_dump(by_alias=True, mode="json"),
        }
        if trajectory:
            body["trajectory_ids"] = [
                self.checkpoint_id(path, f"via[{i}]", ft) for i, path in enumerate(trajectory)
            ]
        for key, value in audit_options(policy, options).items():
            if value is not None:
                body[key] = None if (key == "split" and value == "all") else value
        return self.submit(body)


def _reason(exc: Exception) -> str:
    text = re.sub(r"\[Errno -?\d+\]\s*", "", str(exc)).strip() or type(exc).__name__
    return text[:1].lower() + text[1:]


def zip_folder(folder: Path, archive: Path | IO[bytes]) -> int:
    """Zip every file under ``folder`` (paths relative to it) into ``archive``; file count."""
    count = 0
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder).as_posix())
                count += 1
    return count
