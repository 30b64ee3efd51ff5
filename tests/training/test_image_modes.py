"""The reader takes what public sets ship: every PNG mode, JPEG variants, TIFF, DICOM without a
suffix, 16-bit containers of 12-bit data, odd names. Each test writes its own file (Pillow or
pydicom) and compares against an independent numpy expectation of the decoded pixels."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.training.test_imageio import write_dicom
from training.imageio import (
    BitDepthWarning,
    ImageReadError,
    image_size,
    is_image_file,
    png_significant_bits,
    read_image,
)

RNG = np.random.default_rng(7)
GRAY = RNG.integers(0, 256, (6, 9), dtype=np.uint8)
COLOUR = RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8)


def _png_with_sbit(path: Path, pixels: np.ndarray, bits: int) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([bits]))
    Image.fromarray(pixels).save(path, pnginfo=info)
    return path


# --------------------------------------------------------------------------- PNG modes


def test_png_mode_l(tmp_path: Path) -> None:
    Image.fromarray(GRAY, mode="L").save(tmp_path / "l.png")
    np.testing.assert_allclose(read_image(tmp_path / "l.png")[0], GRAY / 255.0, atol=1e-6)


def test_png_mode_la_drops_alpha(tmp_path: Path) -> None:
    alpha = 255 - GRAY
    Image.fromarray(np.stack([GRAY, alpha], -1), mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out.shape == (1, 6, 9)
    np.testing.assert_allclose(out[0], GRAY / 255.0, atol=1e-6)


def test_png_mode_rgb(tmp_path: Path) -> None:
    Image.fromarray(COLOUR, mode="RGB").save(tmp_path / "rgb.png")
    expected = COLOUR.transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), expected, atol=1e-6)


def test_png_mode_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([COLOUR, GRAY[..., None]], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    expected = COLOUR.transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), expected, atol=1e-6)


def test_png_mode_p_uses_the_palette(tmp_path: Path) -> None:
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = RNG.integers(0, 16, (6, 9), dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette(palette.ravel().tolist())
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    expected = palette[idx].transpose(2, 0, 1) / 255.0  # look-up done by numpy
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), expected, atol=1e-6)


def test_png_mode_i16_full_range(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 65536, (6, 9), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I;16")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BitDepthWarning)  # full range: no warning
        out = read_image(tmp_path / "i16.png")
    np.testing.assert_allclose(out[0], pixels / 65535.0, atol=1e-6)


def test_png_12bit_in_16bit_with_sbit_uses_12_bits(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 4096, (6, 9), dtype=np.uint16)
    path = _png_with_sbit(tmp_path / "twelve.png", pixels, 12)
    assert png_significant_bits(path) == 12
    np.testing.assert_allclose(read_image(path)[0], pixels / 4095.0, atol=1e-6)


def test_png_sbit_with_left_shifted_samples_is_shifted_back(tmp_path: Path) -> None:
    # the PNG spec's way: 12-bit samples scaled up to 16 bits (v << 4), sBIT says 12
    pixels = RNG.integers(0, 4096, (6, 9), dtype=np.uint16)
    pixels[0, 0] = 4095
    path = _png_with_sbit(tmp_path / "shifted.png", pixels << 4, 12)
    np.testing.assert_allclose(read_image(path)[0], pixels / 4095.0, atol=1e-6)


def test_png_12bit_without_sbit_warns_and_bit_depth_option_fixes_it(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 4096, (6, 9), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "dark.png")
    with pytest.warns(BitDepthWarning, match="12 bits"):
        out = read_image(tmp_path / "dark.png")
    np.testing.assert_allclose(out[0], pixels / 65535.0, atol=1e-6)
    out = read_image(tmp_path / "dark.png", bit_depth=12)
    np.testing.assert_allclose(out[0], pixels / 4095.0, atol=1e-6)
    with pytest.raises(ImageReadError, match="bit depth 8"):
        read_image(tmp_path / "dark.png", bit_depth=8)


def test_png_sbit_parser_reads_only_the_chunk(tmp_path: Path) -> None:
    # a hand-built PNG: signature, IHDR, sBIT, IDAT, IEND (parsed without Pillow)
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 2, 1, 16, 0, 0, 0, 0)
    raw = b"\x00" + struct.pack(">HH", 1000, 4000)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"sBIT", b"\x0c")
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "hand.png").write_bytes(png)
    assert png_significant_bits(tmp_path / "hand.png") == 12
    np.testing.assert_allclose(read_image(tmp_path / "hand.png")[0, 0], [1000 / 4095, 4000 / 4095])


# --------------------------------------------------------------------------- JPEG


def test_jpeg_cmyk(tmp_path: Path) -> None:
    # C, M, Y with K = 0: RGB = 255 - (C, M, Y) whichever CMYK convention applies
    cmy = np.zeros((16, 16, 3), dtype=np.uint8)
    cmy[:, :8] = (0, 255, 0)  # magenta
    cmy[:, 8:] = (255, 0, 0)  # cyan
    cmyk = np.concatenate([cmy, np.zeros((16, 16, 1), np.uint8)], -1)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = read_image(tmp_path / "cmyk.jpg")
    expected = (255 - cmy).transpose(2, 0, 1) / 255.0
    assert out.shape == (3, 16, 16)
    np.testing.assert_allclose(out[:, 4:12, 2:6], expected[:, 4:12, 2:6], atol=0.06)
    np.testing.assert_allclose(out[:, 4:12, 10:14], expected[:, 4:12, 10:14], atol=0.06)


def test_jpeg_progressive_equals_baseline(tmp_path: Path) -> None:
    smooth = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8) * 4
    Image.fromarray(smooth).save(tmp_path / "base.jpg", quality=95)
    Image.fromarray(smooth).save(tmp_path / "prog.jpg", quality=95, progressive=True)
    assert Image.open(tmp_path / "prog.jpg").info.get("progressive")
    prog = read_image(tmp_path / "prog.jpg")
    np.testing.assert_allclose(prog[0], smooth / 255.0, atol=0.04)
    np.testing.assert_allclose(prog, read_image(tmp_path / "base.jpg"), atol=0.02)


@pytest.mark.parametrize(("orientation", "turn"), [(3, 2), (6, -1), (8, 1)])
def test_jpeg_exif_rotation(tmp_path: Path, orientation: int, turn: int) -> None:
    # a bright block in the top-left corner of the stored pixels
    stored = np.zeros((24, 40), dtype=np.uint8)
    stored[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    out = read_image(tmp_path / "rot.jpg")[0]
    expected = np.rot90(stored, k=turn) / 255.0  # numpy: counter-clockwise quarter turns
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=0.12)


# --------------------------------------------------------------------------- TIFF, DICOM


def test_tiff_8bit_and_16bit(tmp_path: Path) -> None:
    Image.fromarray(GRAY).save(tmp_path / "g.tif")
    np.testing.assert_allclose(read_image(tmp_path / "g.tif")[0], GRAY / 255.0, atol=1e-6)
    wide = RNG.integers(0, 65536, (6, 9), dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.tiff")
    np.testing.assert_allclose(read_image(tmp_path / "w.tiff")[0], wide / 65535.0, atol=1e-6)
    Image.fromarray(COLOUR).save(tmp_path / "c.tif", compression="tiff_lzw")
    expected = COLOUR.transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(read_image(tmp_path / "c.tif"), expected, atol=1e-6)


def test_dicom_without_extension_is_an_image(tmp_path: Path) -> None:
    pixels = np.array([[0, 100, 200], [300, 400, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "IM0001", pixels)
    text = tmp_path / "README"
    text.write_text("not an image" * 30)
    assert is_image_file(path) and not is_image_file(text)
    np.testing.assert_allclose(read_image(path)[0], pixels / 500.0, atol=1e-6)
    assert image_size(path) == (2, 3)


def test_dicom_monochrome1_with_rescale(tmp_path: Path) -> None:
    stored = np.array([[10, 20, 30, 40]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "m1r.dcm", stored, photometric="MONOCHROME1", RescaleSlope=3, RescaleIntercept=5
    )
    values = stored * 3.0 + 5.0  # no window: the full rescaled range maps to [0, 1], inverted
    expected = 1.0 - (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(read_image(path)[0], expected, atol=1e-6)


# --------------------------------------------------------------------------- names, sizes


@pytest.mark.parametrize("name", ["chest x ray 01.png", "röntgen_ü.png", "胸部.png"])
def test_names_with_spaces_and_non_ascii(tmp_path: Path, name: str) -> None:
    Image.fromarray(GRAY).save(tmp_path / name)
    np.testing.assert_allclose(read_image(tmp_path / name)[0], GRAY / 255.0, atol=1e-6)


def test_image_size_reads_headers_only(tmp_path: Path) -> None:
    Image.fromarray(COLOUR).save(tmp_path / "c.png")
    Image.fromarray(GRAY).save(tmp_path / "g.jpg")
    assert image_size(tmp_path / "c.png") == (6, 9)
    assert image_size(tmp_path / "g.jpg") == (6, 9)
