"""What every importer shares: safe torch loading, reading a user's card file, provenance.

Torch files are loaded with ``weights_only=True`` only: a pickle that needs a class outside
torch's allow-list (plus what a caller admits on purpose) is refused with the class named,
never unpickled.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from seg_edge import __version__
from seg_edge.artifact import file_sha256
from seg_edge.card import ModelCard
from seg_edge.errors import InputError

_REFUSED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_torch_file(path: Path, admit: tuple[type, ...] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` admitting only the classes in ``admit``.

    InputError if the file is missing, is not a torch file, or needs a class that is not admitted
    (the message names the class and the file).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with torch.serialization.safe_globals(list(admit)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED.search(str(exc))
        what = f"it needs {refused.group(1)}" if refused else "it is not weights-only data"
        raise InputError(f"{path}: refused by weights-only loading ({what}; seg-edge never unpickles "
                         "arbitrary classes)") from exc
    except Exception as exc:  # torch raises many types for files that are not torch zips/pickles
        raise InputError(f"{path}: not a loadable torch file ({type(exc).__name__})") from exc


def state_dict_of(data: Any, path: Path) -> dict:
    """The tensor state dict in a loaded torch file: bare, or under 'state_dict' / 'model'."""
    import torch

    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{path}: holds no state dict (expected a dict of tensors, as "
                         "torch.save(model.state_dict(), ...) writes)")
    if all(k.startswith("module.") for k in data):  # saved from DataParallel / DistributedDataParallel
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def load_weights_into(net, state: dict, source: Path, what: str, aliases: str | None = None) -> None:
    """Load ``state`` into ``net`` strictly; InputError naming the first mismatch if it does not fit.

    Keys under ``aliases`` (a prefix) may be missing: they name modules the network also holds
    under another name (MONAI DynUNet's ``skip_layers``), which the state loads.
    """
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches are raised even when not strict
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = next((line for line in lines if "size mismatch" in line), lines[-1] if lines else "")
        raise InputError(f"{source}: weights do not fit {what}: {first[:300]}") from exc
    missing = [k for k in result.missing_keys if not (aliases and k.startswith(aliases))]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first: {missing[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected (first: {result.unexpected_keys[0]})")
    if problems:
        raise InputError(f"{source}: weights do not fit {what}: keys " + ", ".join(problems))


def read_card_file(path: Path) -> ModelCard:
    """A user-written card (JSON, schema 2; schema 1 is migrated), validated; ArtifactError names the defect."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: card file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: card file is not readable UTF-8 text ({type(exc).__name__})") from exc
    return ModelCard.from_json(text, str(path))


def source_provenance(framework: str, source: Path, **extra: Any) -> dict[str, Any]:
    """Where an imported model came from: framework, file name and sha256, the importer's version."""
    return {"source_framework": framework, "source_file": Path(source).name,
            "source_sha256": file_sha256(Path(source)), "importer": f"seg-edge {__version__}", **extra}


def refuse_existing_dir(out: Path) -> Path:
    """``out`` as a Path; InputError if it is a folder (the importers write one file)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder (expected the path of the .onnx file to write)")
    return out

