"""Self-contained HTML reports (no scripts, no links out): ``evaluate --report`` and ``parity --report``.

Pictures are PNGs inlined as data URIs (``runtime.pictures``, Pillow); box plots are inline SVG.
"""

from __future__ import annotations

import base64
import datetime
import html
from pathlib import Path

import numpy as np

from seg_edge import __version__
from seg_edge.runtime.atomic import write_text_atomic
from seg_edge.runtime.io import find_modalities, is_case_folder, read_labels, read_nifti
from seg_edge.runtime.pictures import Line, comparison_image, encode_png, legend
from seg_edge.runtime.regions import REGIONS

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1d2330; margin: 1.5rem auto; max-width: 1200px; padding: 0 1rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { border-bottom: 1px solid #d5d9e2; padding: 3px 8px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.low { background: #fde2e2; } .fail { color: #a01515; font-weight: 600; } .pass { color: #17702f; }
.muted { color: #5b6475; } img { max-width: 100%; border: 1px solid #d5d9e2; } figure { margin: 1rem 0; }
.notice { background: #fff4e5; border: 1px solid #f0d2a8; padding: 0.4rem 0.7rem; }
"""


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body``."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
            f"<p class=\"muted\">seg-edge {__version__}, {stamp}</p></body></html>\n")


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def boxplot_svg(groups: dict[str, list[float]], hi: float = 1.0, label: str = "Dice") -> str:
    """One box per group (quartiles, whiskers at 1.5 IQR, every value as a dot); the axis runs from a
    round number below the smallest value (0 at most 0.9 below ``hi``) to ``hi``."""
    smallest = min((min(v) for v in groups.values() if len(v)), default=0.0)
    lo = max(0.0, min(float(np.floor((smallest - 0.01) * 20) / 20), hi - 0.1))
    step = 170
    width, height, left, top, box_w = step * len(groups) + 60, 280, 50, 15, 46
    plot_h = height - top - 50

    def y(v: float) -> float:
        return top + plot_h * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(label)} box plots">']
    for tick in np.linspace(lo, hi, 6):
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e3e6ec"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" font-size="11" text-anchor="end">{tick:.2f}</text>')
    for i, (name, values) in enumerate(groups.items()):
        cx = left + step // 2 + step * i
        v = np.asarray(values, dtype=float)
        q1, med, q3 = np.percentile(v, (25, 50, 75))
        iqr = q3 - q1
        low = float(v[v >= q1 - 1.5 * iqr].min())
        high = float(v[v <= q3 + 1.5 * iqr].max())
        parts.append(f'<line x1="{cx}" x2="{cx}" y1="{y(high):.1f}" y2="{y(low):.1f}" stroke="#333"/>'
                     f'<rect x="{cx - box_w / 2}" y="{y(q3):.1f}" width="{box_w}" '
                     f'height="{max(y(q1) - y(q3), 1):.1f}" fill="#cfe0fb" stroke="#333"/>'
                     f'<line x1="{cx - box_w / 2}" x2="{cx + box_w / 2}" y1="{y(med):.1f}" y2="{y(med):.1f}" '
                     f'stroke="#a01515" stroke-width="2"/>')
        for j, value in enumerate(v):
            jitter = ((j * 37) % 21 - 10) * 1.2
            parts.append(f'<circle cx="{cx + box_w / 2 + 14 + jitter:.1f}" cy="{y(value):.1f}" r="2.5" '
                         f'fill="#2463c9" fill-opacity="0.7"><title>{value:.4f}</title></circle>')
        parts.append(f'<text x="{cx + 10}" y="{height - 28}" font-size="13" text-anchor="middle">'
                     f'{html.escape(name)}</text><text x="{cx + 10}" y="{height - 12}" font-size="11" '
                     f'text-anchor="middle" fill="#5b6475">median {med:.3f}, n = {len(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _case_table(cases: list[dict]) -> str:
    head = "".join(f'<th class="num">Dice {r}</th>' for r in REGIONS) + \
        "".join(f'<th class="num">HD95 {r} (mm)</th>' for r in REGIONS)
    rows = []
    for case in sorted(cases, key=_mean_dice):
        cells = "".join(f'<td class="num{" low" if case[r]["dice"] < 0.8 else ""}">{case[r]["dice"]:.4f}</td>'
                        for r in REGIONS)
        cells += "".join(f'<td class="num">{case[r]["hd95"]:.2f}</td>' for r in REGIONS)
        rows.append(f"<tr><td>{html.escape(case['case_id'])}</td>{cells}</tr>")
    return f"<table><tr><th>case (worst first)</th>{head}</tr>{''.join(rows)}</table>"


def _mean_dice(case: dict) -> float:
    return float(np.mean([case[r]["dice"] for r in REGIONS]))


def _background(label_file: Path) -> tuple[str, np.ndarray] | None:
    """The T1ce (else FLAIR) image of the case folder a label file sits in, if it is one."""
    folder = label_file.parent
    if not is_case_folder(folder):
        return None
    files = find_modalities(folder)
    name = "t1ce" if "t1ce" in files else "flair"
    return name, np.asarray(read_nifti(files[name]).dataobj, dtype=np.float32)


def worst_case_figure(case: dict, pred: Path, truth: Path, et: int) -> bytes:
    """Prediction and ground truth of one case over its T1ce, as PNG bytes, Dice in the legend."""
    p_labels, _ = read_labels(pred, et)
    t_labels, t_img = read_labels(truth, et)
    spacing = tuple(float(z) for z in t_img.header.get_zooms()[:3])
    lines: list[Line] = [(None, "region", "Dice")]
    lines += [(None, r, f"{case[r]['dice']:.4f}") for r in REGIONS] + [(None, "", "")]
    voxel_ml = float(np.prod(spacing)) / 1000
    lines.append((None, "label", "pred / truth mL"))
    for row in legend(et):
        colour = tuple(int(row["colour"][i:i + 2], 16) for i in (1, 3, 5))
        pv, tv = (int((x == row["value"]).sum()) * voxel_ml for x in (p_labels, t_labels))
        lines.append((colour, row["name"], f"{pv:.2f} / {tv:.2f}"))
    png = comparison_image(_background(truth) or _background(pred), ("prediction", p_labels),
                           ("ground truth", t_labels), t_img.affine, spacing, et, case["case_id"], lines)
    return encode_png(png)


def evaluation_html(result: dict, et: int, worst: int = 3) -> str:
    """The ``evaluate --report`` page: summary, Dice box plots, per-case table, worst cases' pictures."""
    cases = result["cases"]
    summary = "".join(
        f"<tr><td>{m}</td>" + "".join(f'<td class="num">{result["summary"][r][m]["mean"]:.4f} ± '
                                      f'{result["summary"][r][m]["std"]:.4f}</td>' for r in REGIONS) + "</tr>"
        for m in ("dice", "hd95", "sensitivity", "precision"))
    body = [f"<p>{len(cases)} cases: predictions against ground truth, BraTS regions (WT = labels 1, 2, {et}; "
            f"TC = 1, {et}; ET = {et}).</p>",
            f"<table><tr><th>metric (mean ± std)</th>{''.join(f'<th>{r}</th>' for r in REGIONS)}</tr>{summary}</table>",
            "<h2>Dice per region</h2>", boxplot_svg({r: [c[r]["dice"] for c in cases] for r in REGIONS}),
            "<h2>Cases</h2>", _case_table(cases),
            f"<h2>The {min(worst, len(cases))} worst cases (lowest mean Dice)</h2>"]
    for case in sorted(cases, key=_mean_dice)[:worst]:
        cid = case["case_id"]
        pred, truth = result["files"][cid]
        png = worst_case_figure(case, pred, truth, et)
        body.append(f"<figure>{img_tag(png, cid)}<figcaption>{html.escape(cid)}: mean Dice "
                    f"{_mean_dice(case):.4f}</figcaption></figure>")
    if result.get("unmatched"):
        body.append(f"<p class=\"muted\">Without a partner: {html.escape(', '.join(result['unmatched']))}</p>")
    return page("seg-edge evaluation", "".join(body))


def write_html(out: Path, text: str) -> None:
    """Write an HTML report atomically."""
    write_text_atomic(out, text)


class ParityPictures:
    """``check_parity``'s ``on_case``: one picture per case and backend, the reference's labels above the
    backend's, the voxels whose label changed in magenta, planes through the slices with most of them."""

    def __init__(self) -> None:
        self.pictures: dict[tuple[str, str], tuple[int, bytes]] = {}

    def __call__(self, case, reference, backend: str, got) -> None:
        from seg_edge.runtime.pictures import HIGHLIGHT
        from seg_edge.runtime.regions import et_label

        changed = int(np.count_nonzero(reference.labels != got.labels))
        names = list(case.sources)
        shown = "t1ce" if "t1ce" in names else names[0]
        lines: list[Line] = [(HIGHLIGHT, "label differs", f"{changed} voxels"), (None, "", ""),
                 (None, "label", "ref / backend mL")]
        et = et_label(got.label_scheme)
        for row in legend(et):
            colour = tuple(int(row["colour"][i:i + 2], 16) for i in (1, 3, 5))
            lines.append((colour, row["name"], f"{reference.volumes_ml[row['name']]:.2f} / "
                                               f"{got.volumes_ml[row['name']]:.2f}"))
        title = f"{case.case_id}: {backend} against the reference, {changed} voxels differ"
        png = comparison_image((shown, case.images[names.index(shown)]), ("reference", reference.labels),
                               (backend, got.labels), case.affine, case.spacing, et, title, lines,
                               highlight_changes=True)
        self.pictures[(case.case_id, backend)] = (changed, encode_png(png))


def parity_html(results: list, pictures: ParityPictures, against: str) -> str:
    """The ``parity --report`` page: the results table, then each case and backend's picture."""
    rows = []
    for r in results:
        verdict = '<span class="pass">pass</span>' if r.passed else '<span class="fail">FAIL</span>'
        rows.append(f"<tr><td>{html.escape(r.case_id)}</td><td>{html.escape(r.backend)}</td>"
                    f'<td class="num">{r.max_abs:.2e}</td><td class="num">{r.labels_changed}</td>'
                    f'<td class="num">{100 * r.label_agreement:.4f}</td>'
                    + "".join(f'<td class="num">{r.dice[k]:.5f}</td>' for k in REGIONS)
                    + f"<td>{verdict} {html.escape('; '.join(r.failures))}</td></tr>")
    head = "".join(f'<th class="num">{h}</th>' for h in ("max |Δp|", "voxels ≠", "agree %",
                                                          *(f"Dice {k}" for k in REGIONS)))
    body = [f"<p>Each backend against {html.escape(against)} on whole cases; labels compared voxel by voxel.</p>",
            f"<table><tr><th>case</th><th>backend</th>{head}<th>result</th></tr>{''.join(rows)}</table>",
            "<h2>Where the labels differ</h2>"]
    for (case_id, backend), (changed, png) in pictures.pictures.items():
        note = (f"{changed} voxels differ (magenta), slices through where most of them are" if changed
                else "no voxel differs; slices through the tumour")
        body.append(f"<figure>{img_tag(png, f'{case_id} {backend}')}<figcaption>{html.escape(case_id)} / "
                    f"{html.escape(backend)}: {note}</figcaption></figure>")
    return page("seg-edge parity", "".join(body))


def _score_cell(value: object, digits: int) -> str:
    v = float(value)  # type: ignore[arg-type]
    if np.isnan(v):
        return '<td class="num muted">–</td>'
    return f'<td class="num">{"inf" if np.isinf(v) else f"{v:.{digits}f}"}</td>'


def challenge_html(result: dict) -> str:
    """The ``evaluate --challenge X --report`` page: the terminal's table, lesion-wise Dice box plots and every
    case's row of the challenge's own figures (the CSV's columns, less the per-case std)."""
    from seg_edge.evaluation.challenge_eval import region_summary

    challenge = result["challenge"]
    lines, keys = region_summary(result)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    summary = "".join(f"<tr><td>{html.escape(stem)}</td>" + "".join(f'<td class="num">{html.escape(c)}</td>'
                                                                    for c in cells) + "</tr>"
                      for stem, cells in lines)
    labels = ", ".join(f"{v} {n}" for v, n in sorted(challenge.labels.items()))
    regions = "; ".join(f"{r.key} = {'+'.join(str(v) for v in r.labels)}" for r in challenge.regions)
    body = [f"<p>{len(result['cases'])} cases scored as <b>{html.escape(challenge.title)}</b> "
            f"(<code>--challenge {html.escape(challenge.name)}</code>): labels {html.escape(labels)}; regions "
            f"{html.escape(regions)}. Rules from {html.escape(challenge.source)}.</p>",
            f"<table><tr><th>metric (mean ± std over cases)</th>{head}</tr>{summary}</table>"]
    dice_column = "lesionwise_dsc_mean" if challenge.method == "panoptica" else "Lesion_Wise_Score_Dice"
    groups = {k: [float(v) for v in _column(result, dice_column, k) if not np.isnan(float(v))] for k in keys}
    if any(groups.values()):
        body += [f"<h2>Lesion-wise Dice per region ({html.escape(dice_column)})</h2>",
                 boxplot_svg({k: v for k, v in groups.items() if v}, label="lesion-wise Dice")]
    columns = [c for c in result["rows"][0] if c not in ("subject_id", "Case_Name") and "_std_" not in c]
    cells = "".join(f"<th class=\"num\">{html.escape(c)}</th>" for c in columns)
    rows = []
    for row in result["rows"]:
        name = row.get("subject_id", row.get("Case_Name", ""))
        rows.append(f"<tr><td>{html.escape(str(name))}</td>" + "".join(
            f"<td>{html.escape(row[c])}</td>" if isinstance(row[c], str) else
            _score_cell(row[c], 2 if "hd95" in c.lower() else 4) for c in columns) + "</tr>")
    body += ["<h2>Cases</h2>", f"<table><tr><th>case</th>{cells}</tr>{''.join(rows)}</table>"]
    if result.get("missing"):
        body.append(f"<p class=\"notice\">Ground truths without a prediction (scored with the challenge's penalty): "
                    f"{html.escape(', '.join(result['missing']))}</p>")
    if result.get("unmatched"):
        unmatched = html.escape(", ".join(result["unmatched"]))
        body.append(f"<p class=\"muted\">Predictions without ground truth: {unmatched}</p>")
    return page(f"seg-edge evaluation: --challenge {challenge.name}", "".join(body))


def _column(result: dict, stem: str, key: str) -> list[float]:
    if result["challenge"].method == "panoptica":
        return [row[f"{stem}_{key}"] for row in result["rows"][:len(result["cases"])]]
    return [row[stem] for row in result["rows"] if row["Labels"] == key]
