"""Read one medical image file into a float32 ``[C, H, W]`` array in ``[0, 1]``.

Every decoder failure (truncated file, wrong content, decompression bomb, undecodable DICOM)
becomes an :class:`ImageReadError` that names the file, so a bad upload is reported instead
of crashing a training run or a worker with a bare traceback.

PNG, JPEG and TIFF go through Pillow (restricted to those decoders), DICOM through pydicom
with the modality LUT, VOI LUT / windowing and MONOCHROME1 inversion applied, so that "higher =
brighter" holds for every source. DICOM is recognised by its ``DICM`` magic whatever the file
is called (PACS exports like ``IM0001`` have no suffix).

16-bit grayscale (PNG ``I;16``, TIFF) is scaled by its real bit depth: the PNG ``sBIT`` chunk
when the file has one, else the caller's ``bit_depth`` (``--bit-depth``), else 16 bits -- with
a :class:`BitDepthWarning` when every value fits in far fewer bits (12-bit detector data in a
16-bit container reads almost black divided by 65535).
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Refuse images with more pixels than this (decompression-bomb guard); tests monkeypatch it.
MAX_PIXELS: int = 50_000_000

PIL_FORMATS = ("PNG", "JPEG", "TIFF")  # the only decoders Pillow may use here
CONTAINER_BITS = 16
# a 16-bit image whose maximum needs this many bits or fewer is probably N-bit data in a 16-bit
# container (12-bit detectors are common): warn, since dividing by 65535 makes it almost black
LOW_BITS_WARNING = 12
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DICM_OFFSET = 128
_EXIF_ORIENTATION = 0x0112
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class BitDepthWarning(UserWarning):
    """A 16-bit image looks like fewer-bit data read as 16 bits (pass ``bit_depth``)."""


class ImageReadError(ValueError):
    """An image file could not be read; ``str()`` names the file and the reason."""

    def __init__(self, path: Path | str, reason: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        # One-argument construction must work: DataLoader re-raises worker errors as cls(msg).
        super().__init__(f"{path}: {reason}" if reason else str(path))

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[Path, str]]:
        return (type(self), (self.path, self.reason))


def read_image(path: Path, bit_depth: int | None = None) -> np.ndarray:
    """float32 [C, H, W] in [0, 1], C = 1 (grayscale) or 3 (colour).

    ``bit_depth``: significant bits of 16-bit grayscale files without an ``sBIT`` chunk (e.g.
    12); None reads them as 16-bit. DICOM carries its own (BitsStored) and ignores it.
    """
    path = Path(path)
    check_bit_depth(bit_depth)
    try:
        is_dicom = _has_dicm_magic(path)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file ({exc})") from exc
    suffix = path.suffix.lower()
    if is_dicom or suffix in DICOM_SUFFIXES:
        return _read_dicom(path, force=not is_dicom)
    if suffix in PIL_SUFFIXES:
        return _read_pil(path, bit_depth)
    raise ImageReadError(path, f"not an image (unsupported suffix {suffix!r})")


def check_bit_depth(bit_depth: int | None) -> None:
    """A bit depth is 1..16 bits (what a 16-bit container can hold)."""
    if bit_depth is not None and not (
        isinstance(bit_depth, int) and 1 <= bit_depth <= CONTAINER_BITS
    ):
        raise ValueError(f"bit_depth must be 1..{CONTAINER_BITS} bits, got {bit_depth!r}")


def is_image_file(path: Path) -> bool:
    """An image suffix, or DICOM by its magic whatever the name (a folder scan asks this)."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        return _has_dicm_magic(path)
    except OSError:
        return False


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header alone, without decoding pixels."""
    path = Path(path)
    try:
        if _has_dicm_magic(path) or path.suffix.lower() in DICOM_SUFFIXES:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Rows), int(ds.Columns)
        with Image.open(path, formats=PIL_FORMATS) as img:
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width  # shown turned by a quarter
            return height, width
    except Exception as exc:
        raise ImageReadError(path, f"cannot read the image header ({exc})") from exc


def png_significant_bits(path: Path) -> int | None:
    """The grayscale sample's significant bits from a PNG ``sBIT`` chunk (None: no chunk).

    Pillow does not expose sBIT, so the chunks before the first IDAT are walked here.
    """
    with Path(path).open("rb") as fh:
        if fh.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return None
            data = fh.read(length)
            fh.seek(4, 1)  # CRC
            if kind == b"sBIT" and data:
                return int(data[0])


def _has_dicm_magic(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble, whatever their name."""
    with path.open("rb") as fh:
        fh.seek(_DICM_OFFSET)
        return fh.read(4) == b"DICM"


def _check_pixels(path: Path, width: int, height: int) -> None:
    """Refuse oversized images before any pixel is decoded."""
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            path,
            f"image too large ({width}x{height} = {width * height} pixels > MAX_PIXELS "
            f"{MAX_PIXELS}; possible decompression bomb)",
        )


# --------------------------------------------------------------------------- PNG / JPEG


def _read_pil(path: Path, bit_depth: int | None = None) -> np.ndarray:
    """Decode with Pillow; the header-only open lets the bomb guard run before decoding."""
    try:
        img = Image.open(path, formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image (no PNG/JPEG data or truncated header)") from exc
    except Exception as exc:
        raise ImageReadError(path, f"not an image or corrupt header ({exc})") from exc
    with img:
        _check_pixels(path, *img.size)
        try:
            img.load()
            img = _exif_upright(img)
            if img.mode.startswith("I;16") or img.mode == "I":
                return _wide_gray_to_unit(path, img, bit_depth)
            return _pil_to_array(img)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(path, f"truncated or corrupt image data ({exc})") from exc


def _exif_upright(img: Image.Image) -> Image.Image:
    """Honour an EXIF orientation tag so left/right match what a viewer shows."""
    if img.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Map any Pillow mode to float32 [C, H, W] in [0, 1] using the real bit depth."""
    mode = img.mode
    if mode in ("1", "L", "LA", "La"):
        arr = np.asarray(img.getchannel(0) if mode != "1" else img.convert("L"))
        return (arr.astype(np.float32) / 255.0)[None]
    if mode not in ("RGB", "RGBA", "RGBa"):
        img = img.convert("RGBA" if mode in ("P", "PA") else "RGB")
    rgb = np.asarray(img)[..., :3]
    return _collapse_gray(rgb.astype(np.float32).transpose(2, 0, 1) / 255.0)


def _wide_gray_to_unit(path: Path, img: Image.Image, bit_depth: int | None) -> np.ndarray:
    """16-bit grayscale by its real bit depth: sBIT, else ``bit_depth``, else 16 (and a
    warning when the data fit in far fewer bits).

    With sBIT = n the PNG spec wants samples scaled up to 16 bits; writers that store the raw
    n-bit values instead are recognised by a maximum below 2**n and read as they are.
    """
    arr = np.asarray(img).astype(np.int64)
    top = int(arr.max()) if arr.size else 0
    sbit = png_significant_bits(path) if img.format == "PNG" else None
    if sbit is not None and 0 < sbit < CONTAINER_BITS:
        if top > 2**sbit - 1:
            arr = arr >> (CONTAINER_BITS - sbit)  # spec-conformant: scaled up, shift back
        bits = sbit
    elif bit_depth is not None:
        if top > 2**bit_depth - 1:
            raise ImageReadError(
                path,
                f"pixel value {top} does not fit bit depth {bit_depth} "
                f"(max {2**bit_depth - 1}); use a larger --bit-depth",
            )
        bits = bit_depth
    else:
        bits = CONTAINER_BITS
        used = max(top, 1).bit_length()
        if used <= LOW_BITS_WARNING:
            warnings.warn(
                BitDepthWarning(
                    f"{path.name}: 16-bit image whose maximum {top} fits in {used} bits; "
                    f"read as 16-bit it is almost black: pass --bit-depth {used} (or the "
                    "detector's bit depth) if the data are fewer-bit"
                ),
                stacklevel=4,
            )
    unit = arr.astype(np.float64) / float(2**bits - 1)
    return np.clip(unit, 0.0, 1.0).astype(np.float32)[None]


def _collapse_gray(arr: np.ndarray) -> np.ndarray:
    """A colour image whose channels are all equal is grayscale saved as RGB: keep one."""
    if arr.shape[0] == 3 and np.array_equal(arr[0], arr[1]) and np.array_equal(arr[1], arr[2]):
        arr = arr[:1]
    return np.ascontiguousarray(arr, dtype=np.float32)


# --------------------------------------------------------------------------- DICOM


def _read_dicom(path: Path, *, force: bool) -> np.ndarray:
    """Decode the first frame and bring it to display space (LUTs, window, polarity)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=force)
    except Exception as exc:
        raise ImageReadError(path, f"not a readable DICOM file ({exc})") from exc
    if not any(key in ds for key in _PIXEL_KEYWORDS):
        raise ImageReadError(path, "DICOM file has no pixel data")
    try:
        _check_pixels(path, int(ds.Columns), int(ds.Rows))
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"DICOM image header is incomplete ({exc})") from exc
    frame = _decode_first_frame(path, ds)
    try:
        if photometric in _MONOCHROME and frame.ndim == 2:
            return _monochrome_to_unit(frame, ds, invert=photometric == "MONOCHROME1")[None]
        if photometric in _COLOUR and frame.ndim == 3:
            return _colour_to_unit(frame, ds)
    except Exception as exc:
        raise ImageReadError(path, f"cannot apply DICOM LUTs ({exc})") from exc
    raise ImageReadError(
        path, f"unsupported DICOM photometric interpretation {photometric!r} for {frame.shape}"
    )


def _decode_first_frame(path: Path, ds: Dataset) -> np.ndarray:
    """Only frame 0 is decoded: a multi-frame study is represented by its first image."""
    try:
        ds.pixel_array_options(index=0)
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({name}): {exc}") from exc
    frame_ndim = 3 if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1 else 2
    if arr.ndim == frame_ndim + 1:
        arr = arr[0]  # a decoder that ignored the frame index
    if arr.ndim != frame_ndim:
        raise ImageReadError(path, f"unexpected DICOM pixel array shape {arr.shape}")
    return arr


def _monochrome_to_unit(arr: np.ndarray, ds: Dataset, *, invert: bool) -> np.ndarray:
    """Modality LUT, then VOI LUT/window, then scale the VOI output range to [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    lo, hi = _voi_output_range(ds)
    if ds.get("VOILUTSequence") and np.array_equal(values, np.round(values)):
        values = values.astype(np.int64)  # a VOI LUT indexes with integers
    try:
        shown = apply_voi_lut(values, ds, prefer_lut=True) if lo is not None else values
    except (ValueError, NotImplementedError, AttributeError):
        lo = hi = None  # broken VOI attributes: fall back to the full data range
        shown = values
    shown = np.asarray(shown, dtype=np.float64)
    if lo is None or hi is None:
        lo, hi = float(shown.min()), float(shown.max())
    unit = _scale(shown, lo, hi)
    return (1.0 - unit if invert else unit).astype(np.float32)


def _voi_output_range(ds: Dataset) -> tuple[float | None, float | None]:
    """Output range of the VOI step pydicom will apply; (None, None) when there is none."""
    get = ds.get
    lut_seq = get("VOILUTSequence")
    if lut_seq and None not in (lut_seq[0].get("LUTDescriptor"), lut_seq[0].get("LUTData")):
        bits = int(lut_seq[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if get("WindowCenter") is None or get("WindowWidth") is None:
        return None, None
    return _window_output_range(ds)


def _window_output_range(ds: Dataset) -> tuple[float, float]:
    """Mirror of pydicom's windowing output range: stored-value range through the rescale."""
    get = ds.get
    mod_seq = get("ModalityLUTSequence")
    bits_stored = int(get("BitsStored", 16))
    if mod_seq:
        lo, hi = 0.0, float(2 ** int(mod_seq[0].LUTDescriptor[2]) - 1)
    elif int(get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits_stored - 1)
    else:
        lo, hi = float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    slope, intercept = get("RescaleSlope"), get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _colour_to_unit(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Colour DICOM (already RGB after pydicom's YBR conversion) scaled by its bit depth."""
    bits = int(ds.get("BitsStored", 8))
    unit = np.clip(arr.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)
    return _collapse_gray(unit.transpose(2, 0, 1))


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to [0, 1], clipped; a flat image maps to zeros."""
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(arr, dtype=np.float64)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)
