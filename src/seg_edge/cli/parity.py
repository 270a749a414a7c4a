"""``seg-edge parity``: each backend against the PyTorch reference, on whole cases."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from seg_edge.card import REGIONS
from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import JSON_OPTION, THREADS_OPTION, Backend, Blend, PrecisionHint, dumps


@guarded
def parity(
    model: Path = typer.Argument(..., help="ONNX model with a seg-edge card."),
    cases: list[Path] = typer.Argument(..., help="BraTS-format case folders."),
    reference: str = typer.Option(None, "--reference", help="The file the model was made from: preset checkpoint "
                                  "(default: MODEL with suffix .pt), NVIDIA .ckpt, or PyTorch weights (its sha256 "
                                  "must match the card); or the framework's own predictor: nnunet:MODEL_FOLDER, "
                                  "monai-bundle:BUNDLE_DIR, MODEL.keras (the Keras tutorial's own pipeline)."),
    network: str = typer.Option(None, "--network", help="ONNX imports: the PyTorch module standing for the "
                                "graph, PKG.MODULE:FACTORY or file.py:FACTORY."),
    network_kwargs: str = typer.Option(None, "--network-kwargs", help="JSON keyword arguments for --network."),
    backend: list[Backend] = typer.Option([Backend.onnxruntime], "--backend", help="Backend(s) to check."),
    overlap: float = typer.Option(None, "--overlap", help="Default: the card's."),
    blend: Blend = typer.Option(None, "--blend", help="Default: the card's."),
    tta: bool = typer.Option(None, "--tta/--no-tta", help="Mirroring TTA (default: the card's)."),
    threads: int = THREADS_OPTION,
    precision_hint: list[PrecisionHint] = typer.Option(None, "--precision-hint", help="OpenVINO precision(s)."),
    report: Path = typer.Option(None, "--report", help="Also write a self-contained HTML report: the table and, per "
                                "case and backend, slices where labels differ with those voxels highlighted."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Compare backends with PyTorch + MONAI per case: probabilities, labels, Dice, HD95, volumes."""
    from seg_edge.evaluation.parity import Reference, check_parity
    from seg_edge.evaluation.sources import parse_source
    from seg_edge.importers.torch import parse_kwargs
    from seg_edge.runtime.segmenter import SegmenterOptions

    hints: list[str | None] = [h.value for h in dict.fromkeys(precision_hint or [])] or [None]
    backends = tuple((b.value, h) for b in dict.fromkeys(backend) for h in (hints if b.value == "openvino" else [None]))
    options = SegmenterOptions(overlap=overlap, blend=blend.value if blend else None, tta=tta)
    pictures = _report_start(report)
    ref: object = parse_source(reference) if reference else None
    if ref is None:
        ref = Reference(Path(reference) if reference else None, network,
                        parse_kwargs(network_kwargs) if network else None)
    # progress only: the verdict is the table's (or the JSON's), said once
    results = check_parity(model, cases, backends, ref, options, threads,
                           on_result=lambda r: err.print(f"  {escape(r.case_id)} / {r.backend}: compared"),
                           on_case=pictures)
    if report is not None:
        from seg_edge.evaluation.html_report import parity_html, write_html

        write_html(report, parity_html(results, pictures, _against(reference)))
        err.print(f"wrote {escape(str(report))}")
    if json_out:
        out.print_json(dumps({"passed": all(r.passed for r in results),
                              "results": [dataclasses.asdict(r) for r in results]}))
    else:
        out.print(_table(results, reference))
        for r in results:
            if r.reference_ties:
                out.print(f"{escape(r.case_id)} / {r.backend}: {r.reference_ties} of the {r.labels_changed} voxels≠ "
                          "are ties in the reference's own output (its probability at a decision boundary, within its "
                          "rounding); judged Dice without them "
                          + "/".join(f"{(r.dice_outside_ties or r.dice)[k]:.4f}" for k in REGIONS))
            for failure in r.failures:
                out.print(f"[red]FAIL[/] {escape(r.case_id)} / {r.backend}: {escape(failure)}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def _report_start(report: Path | None):
    """The picture collector for --report (None without it), its target checked before any work."""
    if report is None:
        return None
    from seg_edge.errors import InputError
    from seg_edge.evaluation.html_report import ParityPictures
    from seg_edge.runtime.outputs import check_targets
    from seg_edge.runtime.pictures import require_pillow

    if not report.parent.is_dir():
        raise InputError(f"{report}: folder {report.parent} does not exist (expected an existing folder)")
    check_targets([report], overwrite=True)
    require_pillow()
    return ParityPictures()


def _against(reference: str | None) -> str:
    kind = str(reference).partition(":")[0] if reference else ""
    kind = "keras" if str(reference).endswith(".keras") else kind
    return {"nnunet": "nnU-Net's nnUNetPredictor", "monai-bundle": "the MONAI bundle's own inference",
            "keras": "the Keras model's own slice-by-slice prediction"}.get(kind, "PyTorch + MONAI")


def _table(results, reference: str | None) -> Table:
    against = _against(reference)
    table = Table(title=f"parity vs {against} (Dice vs the reference labels; --json has HD95 and more)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True,
                  show_edge=False)
    timed = any(r.reference_seconds is not None for r in results)
    columns = ("case", "backend", "max Δp", "voxels≠", "agree %", "Dice WT/TC/ET") + \
        (("s seg-edge/source",) if timed else ()) + ("result",)
    for col in columns:
        table.add_column(col, justify="left" if col in ("case", "backend", "result") else "right", no_wrap=True)
    for r in results:
        times = (f"{r.seconds:.1f}/{r.reference_seconds:.1f}",) if timed and r.reference_seconds is not None else \
            (("",) if timed else ())
        table.add_row(escape(r.case_id), r.backend, f"{r.max_abs:.1e}", str(r.labels_changed),
                      f"{100 * r.label_agreement:.3f}", "/".join(f"{r.dice[k]:.4f}" for k in REGIONS), *times,
                      "[green]pass[/]" if r.passed else "[red]FAIL[/]")
    return table


def register(app: typer.Typer) -> None:
    app.command("parity")(parity)
