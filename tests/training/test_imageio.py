"""read_image: PNG/JPEG/DICOM decoding to [C, H, W] float32 in [0, 1], and its failures."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from training import imageio
from training.imageio import ImageReadError, read_image


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    frames: int = 1,
    with_pixels: bool = True,
    **attrs: object,
) -> Path:
    """A minimal Secondary Capture file, Explicit VR Little Endian, unsigned 16-bit."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in attrs.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = np.array([[0, 100, 200], [300, 400, 500]], dtype=np.uint16)


# --------------------------------------------------------------------------- PNG / JPEG


def test_png_8bit_round_trip(tmp_path: Path) -> None:
    pixels = np.array([[0, 128, 255], [1, 2, 3]], dtype=np.uint8)
    out = read_image(write_png(tmp_path / "g8.png", pixels))
    assert out.dtype == np.float32 and out.shape == (1, 2, 3)
    np.testing.assert_allclose(out[0], pixels / 255.0, atol=1e-6)


def test_png_16bit_uses_full_16bit_range(tmp_path: Path) -> None:
    pixels = np.array([[0, 32768, 65535]], dtype=np.uint16)
    out = read_image(write_png(tmp_path / "g16.png", pixels))
    assert out.shape == (1, 1, 3)
    assert out[0, 0, 0] == 0.0 and out[0, 0, 2] == 1.0
    assert out[0, 0, 1] == pytest.approx(0.5, abs=1e-4)


def test_rgb_png_keeps_colour_and_collapses_gray(tmp_path: Path) -> None:
    colour = np.zeros((4, 5, 3), dtype=np.uint8)
    colour[..., 0], colour[..., 2] = 255, 51
    out = read_image(write_png(tmp_path / "rgb.png", colour))
    assert out.shape == (3, 4, 5)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)

    gray = np.repeat(np.arange(20, dtype=np.uint8).reshape(4, 5, 1), 3, axis=2)
    out = read_image(write_png(tmp_path / "grayrgb.png", gray))
    assert out.shape == (1, 4, 5)


def test_gray_alpha_and_palette_pngs(tmp_path: Path) -> None:
    la = Image.fromarray(np.full((3, 3, 2), 200, dtype=np.uint8), mode="LA")
    la.save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out.shape == (1, 3, 3)
    assert out.max() == pytest.approx(200 / 255)

    pal = Image.fromarray(np.full((3, 3), 77, dtype=np.uint8)).convert("P")
    pal.save(tmp_path / "pal.png")
    out = read_image(tmp_path / "pal.png")
    assert out.shape == (1, 3, 3)
    assert out.max() == pytest.approx(77 / 255)


def test_jpeg_gray_and_colour(tmp_path: Path) -> None:
    Image.fromarray(np.full((16, 16), 100, dtype=np.uint8)).save(tmp_path / "g.jpg")
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (1, 16, 16) and out.dtype == np.float32
    assert out.mean() == pytest.approx(100 / 255, abs=0.02)

    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[..., 1] = 200
    Image.fromarray(colour).save(tmp_path / "c.jpeg", quality=95)
    out = read_image(tmp_path / "c.jpeg")
    assert out.shape == (3, 16, 16)
    assert out[1].mean() > 0.7 and out[0].mean() < 0.1


# --------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_uses_full_range_without_window(tmp_path: Path) -> None:
    out = read_image(write_dicom(tmp_path / "m2.dcm", RAMP))
    assert out.shape == (1, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], RAMP / 500.0, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", RAMP))
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono1[0, 0, 0] == 1.0  # lowest stored value is brightest in MONOCHROME1


def test_dicom_rescale_and_window(tmp_path: Path) -> None:
    # stored s -> 2 s - 1024; the window [-200, 200] is in rescaled units, so it only lands
    # where expected if the modality LUT ran first.
    stored = np.array([[0, 412, 512, 562, 612, 1000]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "ct.dcm",
        stored,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=0,
        WindowWidth=400,
    )
    out = read_image(path)[0, 0]
    assert out[0] == 0.0 and out[1] == 0.0  # -1024 and -200: at or below the window
    assert out[2] == pytest.approx(0.5, abs=0.01)  # 0
    assert out[3] == pytest.approx(0.75, abs=0.01)  # 100
    assert out[4] == 1.0 and out[5] == 1.0  # 200 and 976: above the window


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [512, 0, 12]
    item.add_new(0x00283006, "US", [min(4095, v * 8) for v in range(512)])  # LUTData
    path = write_dicom(
        tmp_path / "lut.dcm",
        RAMP,
        VOILUTSequence=Sequence([item]),
        RescaleSlope=1,
        RescaleIntercept=0,
    )
    np.testing.assert_allclose(read_image(path)[0], RAMP * 8 / 4095, atol=1e-6)


def test_dicom_rgb(tmp_path: Path) -> None:
    colour = np.zeros((4, 5, 3), dtype=np.uint8)
    colour[..., 0], colour[..., 2] = 255, 51
    path = write_dicom(tmp_path / "rgb.dcm", RAMP, with_pixels=False)
    ds = pydicom.dcmread(path)
    ds.set_pixel_data(colour, "RGB", 8)
    ds.save_as(path, enforce_file_format=True)
    out = read_image(path)
    assert out.shape == (3, 4, 5)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_dicom_multiframe_reads_first_frame(tmp_path: Path) -> None:
    frames = np.stack([RAMP, RAMP[:, ::-1]])
    out = read_image(write_dicom(tmp_path / "mf.dcm", frames, frames=2))
    np.testing.assert_allclose(out[0], RAMP / 500.0, atol=1e-6)


def test_dicom_detected_by_magic_whatever_the_suffix(tmp_path: Path) -> None:
    out = read_image(write_dicom(tmp_path / "actually_dicom.png", RAMP))
    assert out.shape == (1, 2, 3)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "empty.dcm", RAMP, with_pixels=False)
    with pytest.raises(ImageReadError, match="no pixel data") as info:
        read_image(path)
    assert "empty.dcm" in str(info.value)


def test_dicom_undecodable_transfer_syntax(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "j2k.dcm", RAMP)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"definitely not a codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"j2k\.dcm"):
        read_image(path)


# --------------------------------------------------------------------------- failures


def test_truncated_png_names_file(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    path = write_png(tmp_path / "cut.png", noise)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as info:
        read_image(path)
    assert info.value.path == path
    assert "cut.png" in str(info.value)


def test_text_with_png_suffix(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("hello, I am not a picture\n" * 20)
    with pytest.raises(ImageReadError, match="not an image") as info:
        read_image(path)
    assert "fake.png" in str(info.value)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("x" * 200)
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(other)
    with pytest.raises(ImageReadError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")


def test_decompression_bomb_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png = write_png(tmp_path / "big.png", np.zeros((20, 20), dtype=np.uint8))
    dcm = write_dicom(tmp_path / "big.dcm", np.zeros((20, 20), dtype=np.uint16))
    monkeypatch.setattr(imageio, "MAX_PIXELS", 100)
    for path in (png, dcm):
        with pytest.raises(ImageReadError, match="too large"):
            read_image(path)


def test_error_survives_pickle_and_one_argument_construction() -> None:
    err = ImageReadError(Path("/data/x.png"), "truncated")
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, str(again)) == (err.path, err.reason, str(err))
    assert "x.png" in str(ImageReadError("/data/x.png: from a DataLoader worker"))
