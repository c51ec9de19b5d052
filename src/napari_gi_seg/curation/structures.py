"""Structures a user defines (GUI-free): the abdominal names offered, their colours,
and the mapping of a model's class names to AAPM TG-263 names for RTSTRUCT/SEG.

AAPM Task Group 263, "Standardizing Nomenclatures in Radiation Oncology" (Mayo et al.,
Int J Radiat Oncol Biol Phys 100(4) 2018 1057-1066): primary names such as
``Stomach``, ``Bowel_Small``, ``Bowel_Large``, ``Duodenum``, ``Liver``, ``Kidney_R``,
``Kidney_L``, ``Spleen`` (capitalised, ``_R``/``_L`` for laterality, at most 16
characters). The Correct page's "New structure..." offers :data:`TG263_ABDOMEN`;
:func:`tg263_name` maps our models' names (``right_kidney``, UW-Madison's
``large_bowel``) to them, and :func:`structure_for` gives the colour and
post-processing of a new class (the fine-tuned model's spec then carries them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import InputError

__all__ = [
    "Structure",
    "TG263_ABDOMEN",
    "tg263_name",
    "structure_for",
    "new_structure",
    "add_structure",
    "rt_roi_names",
    "StructureError",
]


class StructureError(InputError):
    """A structure name or colour that cannot be used (empty, taken, malformed)."""


@dataclass(frozen=True)
class Structure:
    """One structure: ``name`` (the class name written to ``dataset.json``, NIfTI
    sidecars, RTSTRUCT ROI and SEG segment labels), ``colour`` (RGB hex), ``tg263``
    (the TG-263 primary name, ``""`` when none applies) and ``single_component`` (one
    connected object: post-processing keeps its largest 3D component)."""

    name: str
    colour: str
    tg263: str = ""
    single_component: bool = False


#: The abdominal structures offered by "New structure...", TG-263 primary names, with
#: colours close to 3D Slicer's / TotalSegmentator's defaults.
TG263_ABDOMEN: tuple[Structure, ...] = (
    Structure("Stomach", "#f5c26b", "Stomach", True),
    Structure("Bowel_Small", "#d1904a", "Bowel_Small", False),
    Structure("Bowel_Large", "#9c5a2c", "Bowel_Large", False),
    Structure("Duodenum", "#ffd8a0", "Duodenum", False),
    Structure("Liver", "#e6194b", "Liver", True),
    Structure("Kidney_R", "#3cb44b", "Kidney_R", True),
    Structure("Kidney_L", "#4363d8", "Kidney_L", True),
    Structure("Spleen", "#f58231", "Spleen", True),
)

#: Our models' class names (CHAOS, UW-Madison, TotalSegmentator style) -> TG-263.
_ALIASES = {
    "stomach": "Stomach",
    "small_bowel": "Bowel_Small",
    "bowel_small": "Bowel_Small",
    "smallbowel": "Bowel_Small",
    "large_bowel": "Bowel_Large",
    "bowel_large": "Bowel_Large",
    "colon": "Bowel_Large",
    "duodenum": "Duodenum",
    "liver": "Liver",
    "right_kidney": "Kidney_R",
    "kidney_right": "Kidney_R",
    "kidney_r": "Kidney_R",
    "left_kidney": "Kidney_L",
    "kidney_left": "Kidney_L",
    "kidney_l": "Kidney_L",
    "spleen": "Spleen",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
_COLOUR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


def tg263_name(name: str) -> str:
    """The TG-263 primary name of a class name (case-insensitive; ``"right_kidney"`` ->
    ``"Kidney_R"``), or ``name`` itself when TG-263 has none we know."""
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return _ALIASES.get(key, str(name))


def structure_for(name: str, colour: str = "") -> Structure:
    """The :class:`Structure` for ``name``: the TG-263 catalogue's entry when
    ``name`` is (an alias of) one, else a structure with ``colour`` (or a default)."""
    tg = tg263_name(name)
    for s in TG263_ABDOMEN:
        if s.name == tg:
            return Structure(str(name), colour or s.colour, s.tg263, s.single_component)
    return Structure(str(name), colour or "#ffe119", "", False)


def new_structure(name: str, colour: str, existing: Sequence[str] | Mapping[int, str]) -> Structure:
    """Check a user's new structure against the classes ``existing`` (names, or
    ``{index: name}``) and return it.

    Raises
    ------
    StructureError
        An empty or malformed name (1-64 letters, digits, space, ``_``, ``.``, ``-``;
        not ``background``/``ignore``), a name already used (case-insensitive, also
        through its TG-263 name: ``Kidney_R`` is ``right_kidney``), or a colour that
        is not ``#rrggbb``.
    """
    name = str(name).strip()
    names = list(existing.values()) if isinstance(existing, Mapping) else list(existing)
    if not _NAME_RE.match(name) or name.lower() in ("background", "ignore"):
        raise StructureError(
            f"structure name {name!r}: use 1-64 letters, digits, spaces, '_', '.' or '-' (not 'background'/'ignore')"
        )
    taken = {n.lower() for n in names} | {tg263_name(n).lower() for n in names}
    if name.lower() in taken or tg263_name(name).lower() in taken:
        raise StructureError(f"structure {name!r} exists already (classes: {', '.join(names)})")
    if colour and not _COLOUR_RE.match(colour):
        raise StructureError(f"colour {colour!r}: use #rrggbb")
    return structure_for(name, colour)


def add_structure(
    class_names: Mapping[int, str], colours: Mapping[int, str], structure: Structure
) -> tuple[dict[int, str], dict[int, str], int]:
    """The case's classes with ``structure`` appended after the last one (its label
    value is ``max + 1``, so the values of the model's classes never change).

    Parameters
    ----------
    class_names : mapping
        ``{value: name}`` (``0: "background"`` may be present).
    colours : mapping
        ``{value: "#rrggbb"}``.
    structure : Structure
        From :func:`new_structure` (checked against ``class_names``).

    Returns
    -------
    (dict, dict, int)
        ``(class_names, colours, value)``, new dicts.

    Raises
    ------
    StructureError
        The name is taken, or no label value is left (uint8 labels with an ignore
        value: at most 254 structures).
    """
    names = {int(k): str(v) for k, v in class_names.items()}
    fg = {k: v for k, v in names.items() if k != 0}
    new_structure(structure.name, structure.colour, fg)  # raises when taken or malformed
    value = max(fg, default=0) + 1
    if value > 254:
        raise StructureError("no label value left for another structure (at most 254)")
    names[value] = structure.name
    out_colours = {int(k): str(v) for k, v in colours.items()}
    out_colours[value] = structure.colour
    return names, out_colours, value


def rt_roi_names(class_names: Mapping[int, str], tg263: bool = True) -> dict[int, str]:
    """``{value: ROI name}`` for RTSTRUCT ``ROIName`` / SEG ``SegmentLabel``: each
    foreground class's TG-263 name (:func:`tg263_name`) when ``tg263``, else its own
    name. Two classes that would map to the same TG-263 name keep their own names."""
    fg = {int(k): str(v) for k, v in class_names.items() if int(k) != 0}
    if not tg263:
        return fg
    mapped = {k: tg263_name(v) for k, v in fg.items()}
    counts = {}
    for v in mapped.values():
        counts[v] = counts.get(v, 0) + 1
    return {k: (mapped[k] if counts[mapped[k]] == 1 else fg[k]) for k in fg}
