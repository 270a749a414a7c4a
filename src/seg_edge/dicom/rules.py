"""The series selection rules: a JSON file (the shipped ``rules.json``, or a site's own) read and checked.

A rule is a set of conditions on one series, all of which must hold (``Condition``). The file holds
exclusions (tried first), and for each modality its name rules, tag fallbacks and preferences
(docs/DICOM.md, "Series selection"). Every fault in a rules file is an InputError naming the file, the
place in it and what was expected, so a site's edit is checked before a study is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from seg_edge.dicom.series import SeriesInfo
from seg_edge.errors import InputError

# The preferences a modality may list, each a key that ranks a candidate (higher is better).
PREFERENCES: dict[str, Callable[[SeriesInfo], int]] = {
    "original_primary": lambda s: int(s.image_type[:2] == ("ORIGINAL", "PRIMARY")),
    "3d": lambda s: int(s.acquisition == "3D"),
    "more_images": lambda s: s.images,
    "later_series": lambda s: s.number if s.number is not None else -1,
}
_RANGES = ("te_ms", "tr_ms", "ti_ms")
_LISTS = ("modality_not", "modality_in", "image_type_any")
_KEYS = {"why", "text", "text_not", "contrast", "no_inversion", "acquisition", "images_max", "images_min",
         *_RANGES, *_LISTS}


@dataclass(frozen=True)
class Condition:
    """Conditions on one series, all of which must hold; ``why`` says in words what it recognises.

    ``text``: regexes that must all match one field (SeriesDescription or ProtocolName), ``text_not`` none of
    which may match that same field; ranges in ms (a series without the tag fails them); ``contrast`` whether
    an agent is recorded; ``no_inversion`` no TI (or 0); lists compared in upper case.
    """

    why: str
    text: tuple[re.Pattern[str], ...] = ()
    text_not: tuple[re.Pattern[str], ...] = ()
    modality_in: tuple[str, ...] = ()
    modality_not: tuple[str, ...] = ()
    image_type_any: tuple[str, ...] = ()
    te_ms: tuple[float, float] | None = None
    tr_ms: tuple[float, float] | None = None
    ti_ms: tuple[float, float] | None = None
    contrast: bool | None = None
    no_inversion: bool = False
    acquisition: str | None = None
    images_min: int | None = None
    images_max: int | None = None

    def holds(self, series: SeriesInfo) -> bool:
        """Whether every condition holds for ``series``."""
        if self.text or self.text_not:
            fields = (series.description, series.protocol)
            if not any(f and self._text_holds(f) for f in fields):
                return False
        if self.modality_in and series.modality not in self.modality_in:
            return False
        if self.modality_not and series.modality in self.modality_not:
            return False
        if self.image_type_any and not set(self.image_type_any) & set(series.image_type):
            return False
        for name in _RANGES:
            bounds, value = getattr(self, name), getattr(series, name)
            if bounds is not None and (value is None or not bounds[0] <= value <= bounds[1]):
                return False
        if self.contrast is not None and bool(series.contrast_agent) != self.contrast:
            return False
        if self.no_inversion and series.ti_ms:
            return False
        if self.acquisition is not None and series.acquisition != self.acquisition:
            return False
        if self.images_min is not None and series.images < self.images_min:
            return False
        return self.images_max is None or series.images <= self.images_max

    def _text_holds(self, field: str) -> bool:
        return all(p.search(field) for p in self.text) and not any(p.search(field) for p in self.text_not)


@dataclass(frozen=True)
class ModalityRules:
    """How one modality is recognised: name rules first, then tag fallbacks; preferences break ties."""

    names: tuple[Condition, ...]
    fallbacks: tuple[Condition, ...]
    prefer: tuple[str, ...]


@dataclass(frozen=True)
class Rules:
    """A rules file as read: exclusions in order, then each modality's rules (in the file's order)."""

    source: str
    exclude: tuple[Condition, ...]
    modalities: dict[str, ModalityRules]


def default_rules_path() -> Path:
    """The shipped rules file (``seg_edge/dicom/rules.json``)."""
    return Path(str(resources.files("seg_edge.dicom").joinpath("rules.json")))


def load_rules(path: Path | None = None) -> Rules:
    """The rules in ``path`` (a site's file), or the shipped ones; every fault named in one line."""
    path = default_rules_path() if path is None else Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the rules file ({exc.strerror}); expected a JSON rules file") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); expected a JSON rules file") from None
    return parse_rules(data, source=str(path))


def parse_rules(data: Any, *, source: str) -> Rules:
    """``data`` (a rules file's JSON) checked and compiled; ``source`` names it in errors."""
    _expect(isinstance(data, dict), source, "the top level", data, "an object")
    unknown = set(data) - {"about", "version", "exclude", "modalities"}
    _expect(not unknown, source, "the top level", sorted(unknown), "only about, version, exclude, modalities")
    _expect(data.get("version") == 1, source, "version", data.get("version"), "1")
    exclude = data.get("exclude", [])
    _expect(isinstance(exclude, list), source, "exclude", exclude, "a list of rules")
    modalities = data.get("modalities")
    _expect(isinstance(modalities, dict) and bool(modalities), source, "modalities", modalities,
            "an object naming at least one modality")
    return Rules(
        source=source,
        exclude=tuple(_condition(r, source, f"exclude[{i}]") for i, r in enumerate(exclude)),
        modalities={str(name): _modality(spec, source, f"modalities.{name}") for name, spec in modalities.items()},
    )


def _modality(spec: Any, source: str, where: str) -> ModalityRules:
    _expect(isinstance(spec, dict), source, where, spec, "an object with names, fallbacks, prefer")
    unknown = set(spec) - {"names", "fallbacks", "prefer"}
    _expect(not unknown, source, where, sorted(unknown), "only names, fallbacks, prefer")
    lists = {}
    for key in ("names", "fallbacks"):
        items = spec.get(key, [])
        _expect(isinstance(items, list), source, f"{where}.{key}", items, "a list of rules")
        lists[key] = tuple(_condition(r, source, f"{where}.{key}[{i}]") for i, r in enumerate(items))
    _expect(bool(lists["names"] or lists["fallbacks"]), source, where, "no rules", "names or fallbacks")
    prefer = spec.get("prefer", [])
    _expect(isinstance(prefer, list) and all(p in PREFERENCES for p in prefer), source, f"{where}.prefer",
            prefer, f"a list of {', '.join(PREFERENCES)}")
    return ModalityRules(names=lists["names"], fallbacks=lists["fallbacks"], prefer=tuple(prefer))


def _condition(rule: Any, source: str, where: str) -> Condition:
    _expect(isinstance(rule, dict), source, where, rule, "an object of conditions")
    unknown = set(rule) - _KEYS
    _expect(not unknown, source, where, sorted(unknown), f"keys among {', '.join(sorted(_KEYS))}")
    conditions = set(rule) - {"why"}
    _expect(bool(conditions), source, where, "no condition", "at least one condition")
    why = rule.get("why")
    _expect(isinstance(why, str) and bool(why.strip()), source, f"{where}.why", why, "a text saying what it finds")
    fields: dict[str, Any] = {"why": why.strip()}
    for key in ("text", "text_not"):
        if key in rule:
            fields[key] = _patterns(rule[key], source, f"{where}.{key}")
    for key in _LISTS:
        if key in rule:
            value = rule[key]
            _expect(isinstance(value, list) and all(isinstance(v, str) for v in value) and bool(value), source,
                    f"{where}.{key}", value, "a non-empty list of strings")
            fields[key] = tuple(v.strip().upper() for v in value)
    for key in _RANGES:
        if key in rule:
            fields[key] = _range(rule[key], source, f"{where}.{key}")
    for key in ("contrast", "no_inversion"):
        if key in rule:
            _expect(isinstance(rule[key], bool), source, f"{where}.{key}", rule[key], "true or false")
            fields[key] = rule[key]
    if "acquisition" in rule:
        _expect(rule["acquisition"] in ("2D", "3D"), source, f"{where}.acquisition", rule["acquisition"],
                "2D or 3D")
        fields["acquisition"] = rule["acquisition"]
    for key in ("images_min", "images_max"):
        if key in rule:
            value = rule[key]
            _expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0, source,
                    f"{where}.{key}", value, "a whole number >= 0")
            fields[key] = value
    return Condition(**fields)


def _patterns(value: Any, source: str, where: str) -> tuple[re.Pattern[str], ...]:
    texts = [value] if isinstance(value, str) else value
    _expect(isinstance(texts, list) and bool(texts) and all(isinstance(t, str) and t for t in texts), source,
            where, value, "a regex or a non-empty list of regexes")
    compiled = []
    for text in texts:
        try:
            compiled.append(re.compile(text, re.IGNORECASE))
        except re.error as exc:
            raise InputError(f"{source}: {where}: {text!r} is not a valid regex ({exc})") from None
    return tuple(compiled)


def _range(value: Any, source: str, where: str) -> tuple[float, float]:
    ok = isinstance(value, list) and len(value) == 2 and \
        all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and value[0] <= value[1]
    _expect(ok, source, where, value, "[low, high] in ms with low <= high")
    return float(value[0]), float(value[1])


def _expect(ok: bool, source: str, where: str, found: Any, expected: str) -> None:
    if not ok:
        raise InputError(f"{source}: {where} is {found!r}; expected {expected}")
