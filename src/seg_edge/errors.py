"""Exception hierarchy, and the one table of what each error means to a user: every class carries the
label the CLI prints, the CLI's exit code and the HTTP status the server answers with."""

from __future__ import annotations

# Anything that is not a SegEdgeError (nor a missing extra) is a bug in seg-edge: its label and exit code
# (70 = EX_SOFTWARE in BSD's sysexits.h).
INTERNAL_LABEL = "internal error"
INTERNAL_EXIT_CODE = 70
INTERNAL_HTTP_STATUS = 500


class SegEdgeError(Exception):
    """Base class of every error seg-edge raises on purpose."""

    label = "error"
    exit_code = 1
    http_status = 500


class InputError(SegEdgeError):
    """A user-supplied file or value is not what was expected (names the file and the expectation)."""

    label = "input error"
    exit_code = 2
    http_status = 422  # the client's upload or form field


class ArtifactError(SegEdgeError):
    """A model file is missing, unreadable, or lacks a valid seg-edge model card."""

    label = "model error"
    exit_code = 2
    http_status = 500  # on the server, the model is the server's, not the client's


class BackendUnavailable(SegEdgeError):
    """The requested inference backend cannot load here; the message says why. Never falls back."""

    label = "backend unavailable"
    exit_code = 3
    http_status = 500


class SessionError(SegEdgeError):
    """A loaded session cannot run a batch: it was closed, or its backend failed while running."""

    label = "backend error"
    exit_code = 1
    http_status = 500


class ParityError(SegEdgeError):
    """A backend's output differs from the reference beyond the card's tolerance."""

    label = "parity error"
    exit_code = 1
    http_status = 500


# Top-level import name → (distribution on PyPI, the extra of pyproject.toml that installs it). Every
# optional package seg-edge imports is here; tests/cli/test_extras.py holds this table to pyproject's extras.
EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "export"),
    "monai": ("monai", "export"),
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "nilearn": ("nilearn", "synth"),
    "cuda": ("cuda-python", "tensorrt"),
    "matplotlib": ("matplotlib", "docs"),
    "openvino": ("openvino", "openvino"),
    "PIL": ("pillow", "preview"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "multipart": ("python-multipart", "serve"),
    "ray": ("ray", "ray"),
    "tritonclient": ("tritonclient", "triton"),
    "nnunetv2": ("nnunetv2", "nnunet"),
    "SimpleITK": ("simpleitk", "preprocess"),
    "pydicom": ("pydicom", "dicom"),
    "highdicom": ("highdicom", "dicom"),
    "pynetdicom": ("pynetdicom", "dicom"),
    # pydicom's decoders for JPEG Lossless and JPEG 2000 (found by pydicom itself, never imported by seg-edge)
    "pylibjpeg": ("pylibjpeg", "dicom"),
    "libjpeg": ("pylibjpeg-libjpeg", "dicom"),
    "openjpeg": ("pylibjpeg-openjpeg", "dicom"),
    "surface_distance": ("surface-distance", "brats2023"),
}


class MissingExtra(BackendUnavailable):
    """An optional package is not installed: names it, the extra that installs it and the install commands."""

    label = "missing extra"  # a BackendUnavailable (exit 3): this installation cannot do it, the input is fine

    def __init__(self, module: str, needed_for: str = "") -> None:
        """``module``: a key of EXTRAS (a top-level import name); ``needed_for``: what needs it, in words."""
        distribution, extra = EXTRAS[module]
        what = f"{needed_for} needs {distribution}, which is not installed" if needed_for else \
            f"{distribution} is not installed"
        super().__init__(f"{what}; it comes with seg-edge's '{extra}' extra: pip install -e '.[{extra}]' in a "
                         f"clone, or pip install 'seg-edge[{extra}]'")
        self.module, self.distribution, self.extra = module, distribution, extra

    @classmethod
    def from_import(cls, exc: ImportError) -> MissingExtra | None:
        """The MissingExtra that ``exc`` means, or None when it is not an optional package that is absent
        (a missing submodule of an installed package, or a module no extra provides, is a bug)."""
        if not isinstance(exc, ModuleNotFoundError) or not exc.name:
            return None
        top = exc.name.partition(".")[0]
        if top not in EXTRAS or (exc.name != top and _importable(top)):
            return None
        return cls(top)


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def error_label(exc: BaseException) -> tuple[str, int]:
    """The CLI's label and exit code for ``exc``: its class's, or the internal error's for anything else."""
    if isinstance(exc, SegEdgeError):
        return exc.label, exc.exit_code
    return INTERNAL_LABEL, INTERNAL_EXIT_CODE
