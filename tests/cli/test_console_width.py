"""Tables written off a terminal (CI logs, files, pipes) are laid out wide enough not to cut their cells."""

from __future__ import annotations

import io

from seg_edge.cli import console


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_width_off_a_terminal(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console._width(io.StringIO()) == console.OFF_TERMINAL_WIDTH
    assert console._width(_Tty()) is None  # a terminal: its own width
    monkeypatch.setenv("COLUMNS", "100")
    assert console._width(io.StringIO()) is None  # COLUMNS is rich's to read


def test_parity_table_in_a_log_keeps_whole_cells(monkeypatch):
    # what CI logs showed at rich's default 80 columns: "SynBraTS_3007_0…  onnxrunti…  5.0e-…"
    from types import SimpleNamespace

    from rich.console import Console

    from seg_edge.cli.parity import _table

    monkeypatch.delenv("COLUMNS", raising=False)
    row = SimpleNamespace(case_id="BraTS-GLI-00000-000", backend="openvino:bf16", max_abs=5.0e-6, labels_changed=12,
                          label_agreement=0.99999, dice={"WT": 0.99991, "TC": 0.99987, "ET": 0.99975}, seconds=12.3,
                          reference_seconds=45.6, passed=True)
    log = io.StringIO()
    table_console = Console(file=log, highlight=False, soft_wrap=True, width=console._width(log))
    table_console.print(_table([row], "nnunet:/models/Dataset137_BraTS2021/nnUNetTrainer__nnUNetPlans__3d_fullres"))
    text = log.getvalue()
    assert "…" not in text
    for cell in ("BraTS-GLI-00000-000", "openvino:bf16", "5.0e-06", "99.999", "0.9999/0.9999/0.9998", "12.3/45.6",
                 "pass"):
        assert cell in text
