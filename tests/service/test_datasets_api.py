"""POST/GET /datasets: zip uploads (safe extraction) and server paths (allowed roots only)."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import (
    CLASSES,
    assert_problem,
    image_folder,
    make_zip,
    png_bytes,
    upload_zip,
    write_tree,
)
from training.datasets import content_digest


def _nothing_stored(client) -> None:
    store = client.app.state.store
    assert list((store.root / "datasets").iterdir()) == []
    assert list(store.tmp_dir.iterdir()) == []
    assert client.get("/datasets").json()["total"] == 0


def test_image_folder_zip(client) -> None:
    response = upload_zip(client, make_zip(image_folder(per_class=2)), "phantoms.zip")
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/datasets/{body['id']}"
    assert body["name"] == "phantoms" and body["source"] == "upload"
    assert body["num_samples"] == 6
    assert body["class_names"] == sorted(CLASSES[:3])
    assert body["class_counts"] == {"covid": 2, "normal": 2, "pneumonia": 2}
    assert len(body["fingerprint"]) == 64
    assert client.get(f"/datasets/{body['id']}").json() == body
    store = client.app.state.store
    assert (store.dataset_dir(body["id"]) / "normal" / "img0.png").is_file()
    assert list(store.tmp_dir.iterdir()) == []


def test_same_tree_same_fingerprint_wrapped_or_not(client) -> None:
    flat = upload_zip(client, make_zip(image_folder())).json()
    wrapped = upload_zip(client, make_zip(image_folder(prefix="export/"))).json()
    assert wrapped["num_samples"] == flat["num_samples"] == 6
    assert wrapped["fingerprint"] == flat["fingerprint"]
    assert wrapped["class_names"] == flat["class_names"]


def test_uploads_are_found_by_content_digest(client, tmp_path) -> None:
    """The digest equals the client's ``content_digest`` of the same folder (wrapped in a zip
    folder or not); one changed byte or an extra file is another dataset."""
    tree = image_folder()
    local = content_digest(write_tree(tmp_path / "local", tree))
    flat = upload_zip(client, make_zip(tree)).json()
    wrapped = upload_zip(client, make_zip(image_folder(prefix="export/"))).json()
    assert flat["content_sha256"] == wrapped["content_sha256"] == local
    found = client.get("/datasets", params={"content_sha256": local.upper()}).json()
    assert found["total"] == 2 and {d["id"] for d in found["items"]} == {flat["id"], wrapped["id"]}

    changed = dict(tree, **{"normal/img0.png": png_bytes(seed=99)})
    extra = dict(tree, **{"manifest-notes.txt": b"x"})
    for variant in (changed, extra):
        digest = upload_zip(client, make_zip(variant)).json()["content_sha256"]
        assert digest != local
        assert digest == content_digest(write_tree(tmp_path / digest[:8], variant))
    none = client.get("/datasets", params={"content_sha256": "0" * 64}).json()
    assert none["total"] == 0 and none["items"] == []
    assert_problem(
        client.get("/datasets", params={"content_sha256": "xyz"}), 422, "query.content_sha256"
    )


def test_manifest_zip_wrapped_in_a_folder(client) -> None:
    entries = {f"set/images/{i}.png": png_bytes(seed=i) for i in range(4)}
    rows = ["path,label"] + [f"images/{i}.png,{CLASSES[i % 2]}" for i in range(4)]
    entries["set/manifest.csv"] = ("\n".join(rows) + "\n").encode()
    response = upload_zip(client, make_zip(entries), "m.zip", name="manifest set")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "manifest set"
    assert body["class_counts"] == {"normal": 2, "pneumonia": 2}


def test_skipped_files_are_reported(client) -> None:
    entries = image_folder()
    entries["normal/notes.txt"] = b"hello"
    entries["__MACOSX/normal/._img0.png"] = b"junk"
    body = upload_zip(client, make_zip(entries)).json()
    assert body["num_samples"] == 6
    assert {"path": "normal/notes.txt", "reason": "not an image suffix"} in body["skipped"]


def _zip_with_raw_names(names: list[str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("normal/ok.png", png_bytes())
        for name in names:
            info = zipfile.ZipInfo("placeholder")
            info.filename = name  # bypass ZipInfo's own normalisation
            zf.writestr(info, b"pwned")
    return out.getvalue()


@pytest.mark.parametrize(
    "name", ["../evil.png", "normal/../../evil.png", "/etc/evil.png", "C:/evil.png", "..\\evil.png"]
)
def test_zip_slip_is_refused(client, name) -> None:
    body = assert_problem(upload_zip(client, _zip_with_raw_names([name])), 422, "file")
    assert "zip slip" in body["detail"]
    _nothing_stored(client)
    assert not (client.app.state.store.root.parent / "evil.png").exists()


def test_symlink_entry_is_refused(client) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("normal/ok.png", png_bytes())
        link = zipfile.ZipInfo("normal/link.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    body = assert_problem(upload_zip(client, out.getvalue()), 422, "file")
    assert "symbolic link" in body["detail"]
    _nothing_stored(client)


def test_too_many_entries(make_client) -> None:
    client = make_client(max_zip_entries=5)
    body = assert_problem(upload_zip(client, make_zip(image_folder())), 422, "file")
    assert "entries" in body["detail"]
    _nothing_stored(client)


def test_zip_bomb_by_declared_size(make_client) -> None:
    client = make_client(max_unzipped_bytes=100_000)
    entries = image_folder()
    entries["normal/zeros.png"] = b"\0" * 200_000  # compresses to almost nothing
    payload = make_zip(entries)
    assert len(payload) < 20_000
    body = assert_problem(upload_zip(client, payload), 422, "file")
    assert "uncompressed" in body["detail"]
    _nothing_stored(client)


def test_zip_that_lies_about_its_sizes(make_client) -> None:
    """Declared sizes patched small: extraction counts real bytes (and the CRC fails)."""
    client = make_client(max_unzipped_bytes=100_000)
    payload = bytearray(make_zip({"normal/a.png": b"\0" * 500_000, "normal/b.png": png_bytes()}))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = payload.find(signature)
        payload[start + offset : start + offset + 4] = struct.pack("<I", 10)
    assert_problem(upload_zip(client, bytes(payload)), 422, "file")
    _nothing_stored(client)


def test_not_a_zip(client) -> None:
    body = assert_problem(upload_zip(client, b"this is not a zip"), 422, "file")
    assert "not a zip" in body["detail"]
    _nothing_stored(client)


def test_non_image_file_is_named(client) -> None:
    entries = image_folder()
    entries["pneumonia/fake.png"] = b"I am text, not a PNG"
    body = assert_problem(upload_zip(client, make_zip(entries)), 422, "file")
    assert any("pneumonia/fake.png" in e["message"] for e in body["errors"])
    _nothing_stored(client)


def test_decompression_bomb_image_is_named(make_client) -> None:
    client = make_client(max_image_pixels=40 * 40)
    entries = image_folder()
    entries["covid/huge.png"] = png_bytes((64, 64))
    body = assert_problem(upload_zip(client, make_zip(entries)), 422, "file")
    message = next(e["message"] for e in body["errors"] if "covid/huge.png" in e["message"])
    assert "decompression bomb" in message
    _nothing_stored(client)


def test_empty_dataset_and_bad_manifest(client) -> None:
    body = assert_problem(upload_zip(client, make_zip({"readme.txt": b"x"})), 422, "file")
    assert "/tmp" not in body["detail"] and "storage" not in body["detail"]
    bad = make_zip({"manifest.csv": b"path,label\nmissing.png,normal\n"})
    body = assert_problem(upload_zip(client, bad), 422, "file")
    assert "missing.png" in body["detail"]
    _nothing_stored(client)


def test_oversize_zip_is_413(make_client) -> None:
    client = make_client(max_upload_bytes=2000)
    response = upload_zip(client, make_zip(image_folder()))
    assert response.status_code == 413
    _nothing_stored(client)


# --------------------------------------------------------------------------- server paths


@pytest.fixture
def roots(tmp_path):
    allowed = write_tree(tmp_path / "roots" / "allowed" / "set", image_folder())
    outside = write_tree(tmp_path / "outside" / "set", image_folder())
    return allowed.parent, allowed, outside


def test_server_path_inside_a_root(make_client, roots) -> None:
    root, allowed, _ = roots
    client = make_client(data_roots=[str(root)])
    response = client.post("/datasets", json={"path": str(allowed), "name": "local"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["source"] == "path" and body["name"] == "local" and body["num_samples"] == 6
    assert body["content_sha256"] is None  # files on a server path may change: no lookup key
    # the same data uploaded as a zip has the same fingerprint
    zipped = upload_zip(client, make_zip(image_folder())).json()
    assert zipped["fingerprint"] == body["fingerprint"]


def test_server_path_outside_the_roots(make_client, roots) -> None:
    root, _, outside = roots
    client = make_client(data_roots=[str(root)])
    assert_problem(client.post("/datasets", json={"path": str(outside)}), 403, "body.path")
    dotdot = f"{root}/../../outside/set"
    assert_problem(client.post("/datasets", json={"path": dotdot}), 403, "body.path")
    os.symlink(outside, root / "escape")
    assert_problem(client.post("/datasets", json={"path": str(root / "escape")}), 403, "body.path")
    assert_problem(client.post("/datasets", json={"path": "relative/set"}), 422, "body.path")
    assert_problem(client.post("/datasets", json={"path": str(root / "nope")}), 422, "body.path")
    assert client.get("/datasets").json()["total"] == 0


def test_symlinked_file_inside_dataset_that_escapes(make_client, roots) -> None:
    root, allowed, outside = roots
    client = make_client(data_roots=[str(root)])
    os.symlink(outside / "normal" / "img0.png", allowed / "normal" / "linked.png")
    body = assert_problem(client.post("/datasets", json={"path": str(allowed)}), 422, "body.path")
    assert "outside the dataset root" in body["detail"]


def test_server_paths_disabled_without_roots(client, roots) -> None:
    _, allowed, _ = roots
    assert_problem(client.post("/datasets", json={"path": str(allowed)}), 403, "body.path")


def test_json_body_errors(make_client, roots) -> None:
    root, allowed, _ = roots
    client = make_client(data_roots=[str(root)])
    response = client.post(
        "/datasets", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "body")
    response = client.post("/datasets", json={"path": str(allowed), "colour": "red"})
    assert_problem(response, 422, "body.colour")
    assert_problem(client.post("/datasets", json={"path": 7}), 422, "body.path")
    assert_problem(client.post("/datasets", json={}), 422, "body.path")
    assert_problem(
        client.post("/datasets", content=b"x", headers={"content-type": "text/plain"}), 415
    )


def test_unknown_dataset_is_404_and_list_pages(client) -> None:
    assert_problem(client.get("/datasets/nope"), 404)
    for _ in range(3):
        upload_zip(client, make_zip(image_folder()))
    page = client.get("/datasets", params={"limit": 2, "offset": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 1


# --------------------------------------------------------------------------- zip bombs


MIB = 1 << 20


@pytest.fixture
def inflated(monkeypatch) -> list[int]:
    """Bytes each read pulled out of a zip member's decompressor (what extraction wrote)."""
    reads: list[int] = []
    original = zipfile.ZipExtFile.read

    def counting(self, n=-1):
        block = original(self, n)
        reads.append(len(block))
        return block

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)
    return reads


def _bomb(size: int, members: int = 1) -> bytes:
    """A zip of ``members`` entries of ``size`` zero bytes each, beside a real image folder."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in image_folder().items():
            zf.writestr(name, data)
        for i in range(members):
            with zf.open(f"normal/zeros{i}.png", "w", force_zip64=True) as fh:
                for _ in range(size // MIB):
                    fh.write(bytes(MIB))
    return out.getvalue()


def test_a_zip_bomb_is_refused_by_its_ratio_before_a_byte_is_written(client, inflated) -> None:
    """The audit's 2 MB zip inflating to 2 GiB, scaled down: 64 MiB from ~70 KB passed the 8 GiB
    cap, was written out, and was refused only later; the ratio bound refuses it at once."""
    payload = _bomb(64 * MIB)
    assert len(payload) < 200_000
    body = assert_problem(upload_zip(client, payload), 422, "file")
    assert "ratio" in body["detail"] and "normal/zeros0.png" in body["detail"]
    assert sum(inflated) == 0
    _nothing_stored(client)


def test_many_members_over_the_ratio_are_refused_at_the_first(make_client, inflated) -> None:
    client = make_client(max_zip_ratio=50)
    payload = _bomb(2 * MIB, members=8)
    body = assert_problem(upload_zip(client, payload), 422, "file")
    assert "normal/zeros0.png" in body["detail"] and "ratio" in body["detail"]
    assert sum(inflated) == 0
    _nothing_stored(client)


def _declare(payload: bytearray, name: str, size: int) -> None:
    """Patch ``name``'s uncompressed size in its local header and its central record."""
    local = payload.find(name.encode()) - 30
    central = payload.rfind(name.encode()) - 46
    assert payload[local : local + 4] == b"PK\x03\x04"
    assert payload[central : central + 4] == b"PK\x01\x02"
    payload[local + 22 : local + 26] = struct.pack("<I", size)
    payload[central + 24 : central + 28] = struct.pack("<I", size)


def test_a_bomb_that_lies_about_its_size_stops_at_the_bound(make_client, inflated) -> None:
    """Declared sizes patched small: the real bytes are counted while streaming and extraction
    stops at the first byte over the bound, leaving nothing behind."""
    client = make_client(max_unzipped_bytes=64 * MIB)
    payload = bytearray(make_zip({"normal/a.png": png_bytes(), "normal/b.png": bytes(32 * MIB)}))
    _declare(payload, "normal/b.png", 10)
    assert_problem(upload_zip(client, bytes(payload)), 422, "file")
    bound = 100 * len(payload)
    assert sum(inflated) <= max(bound, 10) + MIB
    _nothing_stored(client)


def test_an_extraction_that_would_fill_the_disk_is_refused(make_client, inflated) -> None:
    """Up to 24 uploads extract at once: the store keeps ``min_free_disk_bytes`` free."""
    client = make_client(min_free_disk_bytes=10**18)
    body = assert_problem(upload_zip(client, make_zip(image_folder())), 507)
    assert "free" in body["detail"]
    assert sum(inflated) == 0
    _nothing_stored(client)


def test_ratio_setting_from_the_environment(monkeypatch) -> None:
    from worker.store.settings import Settings

    monkeypatch.setenv("CAMDRIFT_MAX_ZIP_RATIO", "20")
    monkeypatch.setenv("CAMDRIFT_MIN_FREE_DISK_BYTES", "0")
    settings = Settings()
    assert settings.max_zip_ratio == 20 and settings.min_free_disk_bytes == 0
    assert Settings.model_fields["max_zip_ratio"].default == 100


def test_extraction_removes_what_it_wrote_when_it_stops(tmp_path) -> None:
    """Called directly (no staging folder to hide a leftover): a member over the bound aborts
    the extraction and the members already written are removed."""
    from service.uploads import Rejected, ZipLimits, extract_zip

    archive = tmp_path / "lies.zip"
    payload = bytearray(make_zip({"normal/a.png": png_bytes(), "normal/b.png": bytes(4 * MIB)}))
    _declare(payload, "normal/b.png", 10)
    archive.write_bytes(bytes(payload))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(Rejected, match=r"normal/b\.png"):
        extract_zip(archive, dest, ZipLimits(100, 1 * MIB, None, 0))
    assert list(dest.iterdir()) == []


# --------------------------------------------------------------------------- corrupt pixels


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in chunks:
        out += struct.pack(">I", len(body)) + kind + body
        out += struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return out


def _png_with_pixels(pixels: bytes) -> bytes:
    """A 32 x 32 PNG whose IDAT is ``pixels``, every chunk CRC correct: a valid header."""
    chunks = [(k, pixels if k == b"IDAT" else b) for k, b in _png_chunks(png_bytes())]
    return _png_from(chunks)


def _jpeg(size: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


CORRUPT_IMAGES = {
    "garbage pixels": ("covid/bad.png", _png_with_pixels(bytes(range(256)) * 4)),
    "pixels cut short": ("covid/bad.png", _png_with_pixels(zlib.compress(b"\0" * 100))),
    "a truncated JPEG": ("covid/bad.jpg", _jpeg()[:-900]),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_IMAGES))
def test_an_image_whose_pixels_do_not_decode_is_named(client, case) -> None:
    """A valid header with corrupt pixels passed the header check and failed the job later:
    every image is decoded in full at upload."""
    name, data = CORRUPT_IMAGES[case]
    with Image.open(io.BytesIO(data)) as img:  # what the header check sees: fine
        assert img.size in ((32, 32), (64, 64))
    entries = image_folder()
    entries[name] = data
    body = assert_problem(upload_zip(client, make_zip(entries)), 422, "file")
    [error] = body["errors"]
    assert error["message"].startswith(f"{name}: ") and "corrupt" in error["message"]
    assert "/tmp" not in body["detail"] and "storage" not in body["detail"]
    _nothing_stored(client)


def test_good_jpegs_and_odd_png_modes_are_accepted(client) -> None:
    entries = image_folder()
    entries["covid/photo.jpg"] = _jpeg(seed=3)
    for mode, name in (("I;16", "deep.png"), ("P", "palette.png"), ("LA", "alpha.png")):
        out = io.BytesIO()
        Image.new(mode, (20, 24)).save(out, format="PNG")
        entries[f"normal/{name}"] = out.getvalue()
    response = upload_zip(client, make_zip(entries))
    assert response.status_code == 201, response.text
    assert response.json()["num_samples"] == 10


def test_server_path_images_are_decoded_too(make_client, roots) -> None:
    root, allowed, _ = roots
    (allowed / "normal" / "bad.png").write_bytes(CORRUPT_IMAGES["garbage pixels"][1])
    client = make_client(data_roots=[str(root)])
    body = assert_problem(client.post("/datasets", json={"path": str(allowed)}), 422, "body.path")
    assert any(e["message"].startswith("normal/bad.png: ") for e in body["errors"])


class _RawNameInfo(zipfile.ZipInfo):
    """A zip entry written as ``zip -r`` on Linux writes it: the name's UTF-8 bytes without
    the UTF-8 flag (Python would set the flag for a non-ASCII name)."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw.decode("cp437"))  # what a reader without the flag sees
        self.raw = raw

    def _encodeFilenameFlags(self):
        return self.raw, self.flag_bits


@pytest.mark.parametrize("name", ["normal/Zürich ärztlich.png", "covid/患者-01.png"])
def test_utf8_names_without_the_zip_flag_keep_their_name_and_digest(client, tmp_path, name) -> None:
    tree = dict(image_folder(), **{name: png_bytes(seed=5)})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, data in tree.items():
            info = _RawNameInfo(entry.encode("utf-8"))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as zf:  # what Python alone makes of it
        assert name not in zf.namelist()
        assert not any(i.flag_bits & 0x800 for i in zf.infolist())
    response = upload_zip(client, out.getvalue())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["content_sha256"] == content_digest(write_tree(tmp_path / "local", tree))
    assert (client.app.state.store.dataset_dir(body["id"]) / name).is_file()


def test_cp437_names_stay_cp437(client) -> None:
    """A name that is not valid UTF-8 is what old DOS tools wrote: read as cp437."""
    tree = image_folder()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for entry, data in tree.items():
            zf.writestr(entry, data)
        zf.writestr(_RawNameInfo(b"normal/caf\x82.png"), png_bytes(seed=6))
    response = upload_zip(client, out.getvalue())
    assert response.status_code == 201, response.text
    stored = client.app.state.store.dataset_dir(response.json()["id"])
    assert (stored / "normal" / "café.png").is_file()


def test_a_tiff_upload_is_an_image(client) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format="TIFF")
    tree = dict(image_folder(), **{"normal/scan.tif": buffer.getvalue()})
    response = upload_zip(client, make_zip(tree))
    assert response.status_code == 201, response.text
    assert response.json()["num_samples"] == 7
