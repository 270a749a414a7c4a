"""Turn a predict request into jobs (one per case) and read a job's case; ``runner`` runs them."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from seg_edge.errors import InputError, SegEdgeError
from seg_edge.runtime.io import NIFTI_SUFFIXES, Case, has_modality_files, load_case, strip_nifti
from seg_edge.runtime.outputs import check_name_length

# the segmenter's imports (scipy.ndimage, backends) are not needed to plan or read cases: not imported here
DEFAULT_OUT = Path("predictions")  # where predict writes without --out


@dataclass(frozen=True)
class Job:
    """One case to run: where it is read from (``file_order``: a stack's volume order, stated) and where its
    label map goes; the other outputs sit beside it as ``<case>.json``, ``<case>_probabilities.nii.gz`` and
    ``<case>_preview.png``, or, with ``plain_names`` (the server's job folders), as ``report.json``,
    ``probabilities.nii.gz`` and ``preview.png``."""

    case_id: str
    source: Path | dict[str, Path]
    out: Path
    file_order: tuple[str, ...] | None = None
    plain_names: bool = False

    def _beside(self, suffix: str, plain: str) -> Path:
        return self.out.with_name(plain if self.plain_names else strip_nifti(self.out.name) + suffix)

    @property
    def report(self) -> Path:
        return self._beside(".json", "report.json")

    @property
    def probabilities(self) -> Path:
        return self._beside("_probabilities.nii.gz", "probabilities.nii.gz")

    @property
    def preview(self) -> Path:
        return self._beside("_preview.png", "preview.png")

    def targets(self, probabilities: bool, preview: bool = False) -> list[Path]:
        """Every file this job writes, the label map last (its presence marks a finished case)."""
        return [*([self.probabilities] if probabilities else []), *([self.preview] if preview else []),
                self.report, self.out]


# Suffixes of files that are not label maps: such an --out is a mistake, not a folder name.
FILE_SUFFIXES = frozenset(
    "png jpg jpeg gif bmp tif tiff svg pdf json txt csv tsv npy npz nrrd nhdr mha mhd mgz mgh dcm img hdr "
    "h5 hdf5 gz zip tar onnx plan engine pt pth".split())


def output_kind(out: Path | None) -> str:
    """'file' for a NIfTI file name, 'folder' for a folder; InputError for another kind of file."""
    if out is None:
        return "folder"
    check_name_length(out)
    if out.name.lower().endswith(NIFTI_SUFFIXES):
        if out.is_dir():
            raise InputError(f"{out}: is a folder (expected a .nii.gz or .nii file name to write)")
        return "file"
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder (expected a .nii.gz or .nii file name, or a folder)")
    if not out.is_dir() and out.suffix.lower().lstrip(".") in FILE_SUFFIXES:
        raise InputError(f"{out}: output name must end in .nii.gz or .nii (or name a folder)")
    return "folder"


def _case_id(source: Path) -> str:
    if source.is_dir():
        return source.name
    return source.name[:-4] if source.name.lower().endswith(".npy") else strip_nifti(source.name)


def plan_jobs(source: Path | None, files: dict[str, Path] | None, out: Path | None,
              file_order: tuple[str, ...] | None = None) -> tuple[list[Job], bool]:
    """Jobs for the request and whether it is a batch (a folder of case folders); ``file_order``: the
    volume order of a stack (InputError for any other input).

    A folder holding modality files is one case (its defects are reported, even if it also has
    subfolders such as ``derivatives/``); a folder without them but with subfolders is a batch.
    """
    kind = output_kind(out)
    if files:
        if source is not None:
            raise InputError(f"{source}: give either INPUT or --flair/--t1/--t1ce/--t2, not both")
        _check_order(file_order, None)
        cid = strip_nifti(files.get("flair", next(iter(files.values()))).name)  # the model says which it needs
        for tag in ("_flair", "-t2f"):
            cid = cid.removesuffix(tag)
        return [Job(cid, files, _single_out(out, kind, cid))], False
    if source is None:
        raise InputError("no input: give a case folder, a 4D NIfTI, a .npy stack or --flair/--t1/--t1ce/--t2")
    if not source.exists():
        raise InputError(f"{source}: not found (expected a case folder, a folder of cases, a 4D NIfTI or .npy)")
    if source.is_dir() and not has_modality_files(source):
        subs = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        if subs:
            if kind == "file":
                raise InputError(f"{out}: a batch needs an output folder, not a file name")
            _check_order(file_order, source)
            folder = out or DEFAULT_OUT
            return [Job(p.name, p, folder / f"{p.name}.nii.gz") for p in subs], True
    _check_order(file_order, source)
    return [Job(_case_id(source), source, _single_out(out, kind, _case_id(source)), file_order)], False


def _check_order(file_order: tuple[str, ...] | None, source: Path | None) -> None:
    """InputError for a volume order given with an input that is not a stack (its files are named)."""
    is_stack = source is not None and not source.is_dir() and source.name.lower().endswith((*NIFTI_SUFFIXES, ".npy"))
    if file_order is not None and not is_stack:
        raise InputError(f"--modalities {','.join(file_order)}: applies to a 4D NIfTI or a .npy stack, not to "
                         f"{source or 'separate modality files'} (whose files are named by modality)")


def _single_out(out: Path | None, kind: str, case_id: str) -> Path:
    if kind == "file":
        return out  # type: ignore[return-value]
    return (out or DEFAULT_OUT) / f"{case_id}.nii.gz"


def finished(job: Job, overwrite: bool) -> bool:
    """Whether ``job`` is skipped: its label map exists (renamed into place last) and ``overwrite`` is off."""
    return not overwrite and job.out.exists()


def read_case(job: Job, modalities: tuple[str, ...]) -> Case:
    """``job``'s case, read in the model's modality order and named by the job."""
    case = load_case(job.source, modalities, job.file_order)
    case.case_id = job.case_id
    return case


def start_loading(job: Job, modalities: tuple[str, ...]) -> Future[Case]:
    """Read ``job``'s case in a background thread, e.g. while the model loads; hand the future to
    ``runner.run_cases(..., first=...)``, which waits for it (its errors are raised there)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="seg-edge-prefetch")
    future = pool.submit(read_case, job, modalities)
    pool.shutdown(wait=False)
    return future


def failure_reason(exc: BaseException) -> str:
    """One line for a case that failed: our message, or the exception's type and text."""
    text = str(exc) if isinstance(exc, SegEdgeError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__
