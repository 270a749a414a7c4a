"""An instance's pixels decoded with pydicom, or one line saying why they cannot be.

pydicom 3 decodes the uncompressed syntaxes, deflate and RLE Lossless itself; the compressed ones through
plugins: JPEG-LS through ``pyjpegls``, JPEG baseline/extended and JPEG 2000 through ``pillow``, JPEG Lossless
(process 14, what MR archives use most) only through ``pylibjpeg`` + ``pylibjpeg-libjpeg``, JPEG 2000 also
through ``pylibjpeg-openjpeg``, High-Throughput JPEG 2000 only through it. A syntax without an installed
decoder is refused naming the syntax and the packages that would decode it (pydicom's own list), never guessed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, JPEGLSLossless, JPEGLSNearLossless

from seg_edge.errors import InputError

__all__ = ["decode"]

# pydicom tries pylibjpeg first for JPEG-LS once it is installed: 22.5 ms a 256x256 slice against pyjpegls'
# (CharLS) 3.6 ms, measured on this 2-core machine
_PREFERRED = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# what decode_pixels may raise on damaged or unsupported data (pydicom's own and its plugins')
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, OSError, TypeError, KeyError, IndexError,
                  AttributeError, EOFError)


def decode(ds: Dataset, where: str) -> np.ndarray:
    """The instance's pixels as (frames, rows, columns), stored values (no rescale). ``where`` names the series
    and file in every refusal: no pixel data, a colour image, pixel data shorter than its header declares,
    a transfer syntax without an installed decoder, data the decoder rejects."""
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise InputError(f"{where}: no pixel data (expected an image: PixelData)")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise InputError(f"{where}: SamplesPerPixel {samples}, PhotometricInterpretation "
                         f"{ds.get('PhotometricInterpretation')} (expected a greyscale MR image: 1 sample)")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise InputError(f"{where}: no TransferSyntaxUID in its file meta (expected a DICOM file with its "
                         "file meta information)")
    syntax = UID(meta.TransferSyntaxUID)
    frames = _frames(ds, where)
    decoder = _decoder(syntax, where)
    if not syntax.is_compressed and "PixelData" in ds:
        _check_length(ds, frames, where)
    try:
        # the decoder's array, not ds.pixel_array: that one stays cached on the data set, which the caller keeps
        # (the SEG references it) — a second copy of every series in memory
        plugin = _PREFERRED.get(syntax, "")
        array = np.asarray(decoder.as_array(
            ds, decoding_plugin=plugin if plugin in decoder.available_plugins else "")[0])
    except _DECODE_ERRORS as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"{where}: pixel data ({syntax.name}) could not be decoded: {reason} (expected "
                         "complete, valid pixel data)") from None
    return array.reshape(frames, *array.shape[-2:])


def _frames(ds: Dataset, where: str) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 0
    if frames < 1:
        raise InputError(f"{where}: NumberOfFrames {ds.get('NumberOfFrames')!r} (expected a positive integer)")
    return frames


def _decoder(syntax: UID, where: str) -> Any:
    """pydicom's decoder for ``syntax``; refused when pydicom has none or none of its plugins is installed."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputError(f"{where}: transfer syntax {syntax.name} ({syntax}) has no pixel decoder in pydicom "
                         "(expected an image transfer syntax: uncompressed, RLE, JPEG, JPEG-LS or JPEG 2000)") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise InputError(f"{where}: transfer syntax {syntax.name} ({syntax}) cannot be decoded here: no decoder "
                         f"installed ({needs}); expected a decodable syntax, or install one of these packages")
    return decoder


def _check_length(ds: Dataset, frames: int, where: str) -> None:
    """Native pixel data must hold every frame: pydicom keeps a file cut inside it as a shorter value."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if rows < 1 or cols < 1 or bits not in (1, 8, 16, 32, 64):
        raise InputError(f"{where}: Rows {rows}, Columns {cols}, BitsAllocated {bits} (expected a positive size "
                         "and 8, 16, 32 or 64 bits)")
    expected = (rows * cols * frames * bits + 7) // 8
    found = len(ds.PixelData)
    if found < expected:
        raise InputError(f"{where}: pixel data cut short: {found} of {expected} bytes (Rows {rows} x Columns "
                         f"{cols} x {frames} frame(s) x {bits} bits; expected a complete file, is it truncated?)")
