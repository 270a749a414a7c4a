"""Choosing a study's series for each modality (T1, T1ce, T2, FLAIR) by rules a site can replace.

The order (docs/DICOM.md, "Series selection"): choices made by hand (``--series flair=UID,…``) are taken as
given; every other series meets the exclusions first (the first that holds excludes it: non-MR, localisers,
derived reformats, diffusion, …); then each modality's name rules (regexes over SeriesDescription and
ProtocolName) claim candidates; a modality no name rule found falls back to its tag rules (contrast agent,
TE/TR/TI) over the series no name rule claimed; its preferences (ORIGINAL\\PRIMARY, 3D, more images, a later
series) narrow the candidates in order. A modality left with none, or with two equally good, is refused in
one line that lists the candidates by series number and description: nothing is guessed.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from seg_edge.card import MODALITIES
from seg_edge.dicom.rules import PREFERENCES, Condition, Rules
from seg_edge.dicom.series import SeriesInfo
from seg_edge.errors import InputError

# DICOM's UI value representation: dot-separated numbers without leading zeros, at most 64 characters
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_UID_MAX = 64


@dataclass(frozen=True)
class Selection:
    """The series chosen for each modality, why each was chosen, the candidates each modality considered,
    and the series excluded (with the exclusion that held)."""

    chosen: dict[str, SeriesInfo]
    reasons: dict[str, str]
    candidates: dict[str, tuple[SeriesInfo, ...]]
    excluded: tuple[tuple[SeriesInfo, str], ...]

    def __getitem__(self, modality: str) -> SeriesInfo:
        return self.chosen[modality]


@dataclass(frozen=True)
class _Hit:
    series: SeriesInfo
    how: str  # "name rule" or "tag fallback"
    rule: Condition


def select(series: Sequence[SeriesInfo], rules: Rules, *, manual: dict[str, str] | None = None) -> Selection:
    """One series per modality of ``rules`` (see the module's docstring for the order); ``manual`` maps a
    modality to the SeriesInstanceUID chosen by hand. Raises InputError (one line) when a modality has no
    candidate or two equally good ones, or when a manual choice names no series of the study."""
    where = _where(series)
    chosen, reasons = _manual(series, rules, manual or {}, where)
    taken = {s.series_uid for s in chosen.values()}
    excluded = {s.series_uid: why for s in series if (why := _excluded(s, rules.exclude))}
    pool = [s for s in series if s.series_uid not in excluded and s.series_uid not in taken]
    to_find = [m for m in rules.modalities if m not in chosen]
    by_name = {m: _hits(pool, rules.modalities[m].names, "name rule") for m in to_find}
    claimed = _claimed(by_name, where)
    candidates: dict[str, tuple[SeriesInfo, ...]] = {m: (chosen[m],) for m in chosen}
    problems = []
    for modality in to_find:
        hits = by_name[modality] or _hits([s for s in pool if s.series_uid not in claimed],
                                          rules.modalities[modality].fallbacks, "tag fallback")
        candidates[modality] = tuple(h.series for h in hits)
        if not hits:
            problems.append(_missing(modality, pool, claimed, excluded, series))
            continue
        best, note = _prefer(hits, rules.modalities[modality].prefer)
        if len(best) > 1:
            problems.append(_ambiguous(modality, best))
            continue
        chosen[modality] = best[0].series
        reasons[modality] = f"{best[0].how}: {best[0].rule.why}{note}"
    twice = _chosen_twice(chosen)
    if twice:
        problems.append(twice)
    if problems:
        raise InputError(f"{where}: " + "; ".join(problems))
    order = list(rules.modalities)
    return Selection(chosen={m: chosen[m] for m in order}, reasons={m: reasons[m] for m in order},
                     candidates={m: candidates[m] for m in order},
                     excluded=tuple((s, excluded[s.series_uid]) for s in series if s.series_uid in excluded))


def parse_manual(text: str, *, modalities: Iterable[str] = MODALITIES) -> dict[str, str]:
    """``--series`` as given (``flair=1.2.840…,t1=…``) → modality → SeriesInstanceUID, every fault named."""
    known = tuple(modalities)
    choices: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise InputError(f"--series {text!r}: an empty entry; expected MODALITY=SERIES_UID[,…]")
        modality, sep, uid = (p.strip() for p in item.partition("="))
        if not sep or not uid:
            raise InputError(f"--series: {item!r} has no '=UID'; expected MODALITY=SERIES_UID, e.g. flair=1.2.3")
        if modality not in known:
            raise InputError(f"--series: modality {modality!r}; expected one of {', '.join(known)}")
        if modality in choices:
            raise InputError(f"--series: {modality} given twice; expected each modality at most once")
        if len(uid) > _UID_MAX or not _UID.fullmatch(uid):
            raise InputError(f"--series: {modality}={uid!r} is not a DICOM UID; expected digits and dots, "
                             f"no leading zeros, at most {_UID_MAX} characters (a SeriesInstanceUID)")
        if uid in choices.values():
            raise InputError(f"--series: {uid} given for two modalities; expected one series per modality")
        choices[modality] = uid
    return choices


def selection_lines(selection: Selection) -> list[str]:
    """One line per modality: the chosen series' number and description, and why it was chosen."""
    return [f"{m}: {s.label} — {selection.reasons[m]}" for m, s in selection.chosen.items()]


def print_selection(selection: Selection, *, file: TextIO | None = None) -> None:
    """Print the choice (``selection_lines``) to ``file`` (standard output by default)."""
    out = sys.stdout if file is None else file
    for line in selection_lines(selection):
        print(line, file=out)


def _manual(series: Sequence[SeriesInfo], rules: Rules, manual: dict[str, str],
            where: str) -> tuple[dict[str, SeriesInfo], dict[str, str]]:
    by_uid = {s.series_uid: s for s in series}
    chosen, reasons = {}, {}
    for modality, uid in manual.items():
        if modality not in rules.modalities:
            raise InputError(f"--series: modality {modality!r}; expected one of {', '.join(rules.modalities)} "
                             f"(the modalities of {rules.source})")
        if uid not in by_uid:
            listing = ", ".join(f"{s.label} ({s.series_uid})" for s in series)
            raise InputError(f"{where}: --series {modality}={uid}: no such series in the study; its series: "
                             f"{listing}")
        chosen[modality] = by_uid[uid]
        why = _excluded(by_uid[uid], rules.exclude)
        reasons[modality] = "chosen by hand (--series)" + (f"; the rules would have excluded it: {why}" if why
                                                            else "")
    return chosen, reasons


def _excluded(series: SeriesInfo, exclude: tuple[Condition, ...]) -> str:
    return next((rule.why for rule in exclude if rule.holds(series)), "")


def _hits(pool: Iterable[SeriesInfo], rules: tuple[Condition, ...], how: str) -> list[_Hit]:
    """Each series of ``pool`` that one of ``rules`` holds for (the first such rule is its reason)."""
    hits = []
    for series in pool:
        rule = next((r for r in rules if r.holds(series)), None)
        if rule is not None:
            hits.append(_Hit(series, how, rule))
    return hits


def _claimed(by_name: dict[str, list[_Hit]], where: str) -> dict[str, str]:
    """Series UID → the modality whose name rules found it; a series two modalities' names find is refused
    (the rules overlap for it; a person has to say which it is)."""
    claimed: dict[str, str] = {}
    for modality, hits in by_name.items():
        for hit in hits:
            other = claimed.setdefault(hit.series.series_uid, modality)
            if other != modality:
                raise InputError(f"{where}: series {hit.series.label} fits the name rules of both {other} and "
                                 f"{modality}; choose with --series {modality}=SERIES_UID or {other}=SERIES_UID")
    return claimed


def _prefer(hits: list[_Hit], prefer: tuple[str, ...]) -> tuple[list[_Hit], str]:
    """The hits left after each preference keeps only the best, and a note naming those that decided."""
    best, decided = hits, []
    for key in prefer:
        score = PREFERENCES[key]
        top = max(score(h.series) for h in best)
        kept = [h for h in best if score(h.series) == top]
        if len(kept) < len(best):
            others = ", ".join(h.series.label for h in best if h not in kept)
            decided.append(f"{key.replace('_', ' ')} than {others}")
        best = kept
    return best, ("; preferred as " + "; ".join(decided)) if decided else ""


def _missing(modality: str, pool: list[SeriesInfo], claimed: dict[str, str], excluded: dict[str, str],
             series: Sequence[SeriesInfo]) -> str:
    left = ", ".join(f"{s.label} ({claimed.get(s.series_uid, 'no rule')})" for s in pool) or "none"
    out = ", ".join(f"{s.label} ({excluded[s.series_uid]})" for s in series if s.series_uid in excluded)
    return (f"no {modality} series: no name rule or tag fallback of {modality} fits; candidates: {left}"
            + (f"; excluded: {out}" if out else "") + f"; choose one with --series {modality}=SERIES_UID")


def _ambiguous(modality: str, best: list[_Hit]) -> str:
    listing = ", ".join(f"{h.series.label} ({h.series.series_uid})" for h in best)
    return (f"{len(best)} equally good {modality} series ({best[0].how}s, equal on every preference): "
            f"{listing}; choose one with --series {modality}=SERIES_UID")


def _chosen_twice(chosen: dict[str, SeriesInfo]) -> str:
    seen: dict[str, str] = {}
    for modality, series in chosen.items():
        if series.series_uid in seen:
            return (f"series {series.label} was chosen for both {seen[series.series_uid]} and {modality} (the "
                    "rules overlap for it); choose with --series")
        seen[series.series_uid] = modality
    return ""


def _where(series: Sequence[SeriesInfo]) -> str:
    """The study's place, for errors: the .zip it came from, or the folder holding all its files."""
    places = {str(f.path if f.member else f.path.parent) for s in series for f in s.files}
    return os.path.commonpath(sorted(places)) if places else "the study"
