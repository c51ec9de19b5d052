"""Pseudonyms for what travels with a model: dataset folder names and case/patient ids.

Folder and file names of the user's data are often a patient's name or record number
(``Zzdoe_Janetest_MRN7734921/image_Zzdoe_Janetest_MRN7734921.nii.gz``). A trained or
fine-tuned model's ``spec.json`` and ``MODEL_CARD.md`` travel with the model; its run
folder's ``run.json``, ``config.json`` and ``train.log`` are shared to report a run. None
of them carries such a name: each is replaced by a keyed pseudonym,
``HMAC-SHA256(installation secret, name)`` (RFC 2104; the secret is
:func:`napari_gi_seg.paths.installation_secret`, mode 0600, never exported), first 8 hex
digits, with a prefix saying what it stands for:

* a dataset folder -> ``dataset-<8 hex>``;
* a case or patient id -> ``case-<8 hex>``; ids that are already this package's keyed
  pseudonyms (``img<8 hex>`` and ``img<8 hex>_<NNN>`` from the exporter,
  ``case-``/``dataset-`` ones) are kept as they are.

The same name gives the same pseudonym on one installation (so a resumed run, a
held-back list and a log line agree) and another one elsewhere; without the secret a
list of candidate names cannot be hashed to find the patient. The model's own name and
description are the user's words and are written as given.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "keyed_hex",
    "public_dataset_name",
    "public_case_id",
    "public_ids",
    "recorded_among",
    "redactions",
    "RedactingFormatter",
]

#: Case ids shorter than this are not scrubbed from logs (see :func:`redactions`).
MIN_REDACT_LEN = 3
_OWN_RE = re.compile(r"^(img[0-9a-f]{8}(_\d{3})?|case-[0-9a-f]{8}|dataset-[0-9a-f]{8})$")


def keyed_hex(text: str, n_hex: int = 8) -> str:
    """First ``n_hex`` hex digits of HMAC-SHA256(installation secret, ``text``)."""
    from .paths import installation_secret

    return hmac.new(installation_secret(), str(text).encode("utf-8"), hashlib.sha256).hexdigest()[:n_hex]


def public_dataset_name(root: str | Path) -> str:
    """``dataset-<8 hex>`` for a dataset folder (by its name; never its path)."""
    name = Path(str(root)).name
    return name if _OWN_RE.match(name) else f"dataset-{keyed_hex('dataset:' + name)}"


def public_case_id(case_id: str) -> str:
    """``case-<8 hex>`` for a case or patient id (this package's own pseudonyms unchanged)."""
    s = str(case_id)
    return s if _OWN_RE.match(s) else f"case-{keyed_hex('case:' + s)}"


def public_ids(ids):
    """:func:`public_case_id` applied to a list of ids, or to the keys of a dict
    (``{case_id: [slices]}`` -> ``{pseudonym: [slices]}``)."""
    if isinstance(ids, Mapping):
        return {public_case_id(k): v for k, v in ids.items()}
    return [public_case_id(i) for i in ids]


def recorded_among(recorded, ids) -> list[str]:
    """The ids of ``ids`` that ``recorded`` lists (a spec's ``train_patients`` or
    ``val_patients``, a fine-tune's ``held_back``): by their name (specs written before
    the pseudonyms, the bundled models) or by their keyed pseudonym (models trained on
    this installation). Lets a benchmark or the demo tell which patients a model saw."""
    rec = {str(r) for r in (recorded or [])}
    return [str(i) for i in ids if str(i) in rec or public_case_id(str(i)) in rec]


def redactions(root: str | Path | None, ids: Iterable[str] = ()) -> dict[str, str]:
    """``{private text: pseudonym}`` for a dataset folder (its absolute path and its
    name) and case ids, to scrub a log (:class:`RedactingFormatter`). Ids shorter than
    :data:`MIN_REDACT_LEN` characters (``"1"``, ``"12"``: numbers, not names) are left
    alone: they would garble every number of the log."""
    out: dict[str, str] = {}
    if root is not None:
        p = Path(str(root))
        pub = public_dataset_name(p)
        for form in {str(p), str(p.absolute())}:
            out[form] = pub
        if p.name and p.name != pub:
            out[p.name] = pub
    for i in ids:
        s = str(i)
        if len(s) >= MIN_REDACT_LEN and public_case_id(s) != s:
            out.setdefault(s, public_case_id(s))
    return out


class RedactingFormatter(logging.Formatter):
    """A formatter that replaces private texts (longest first, whole names only: not
    inside a longer run of letters and digits) by their pseudonyms in what it writes (the record itself is untouched, so the terminal still shows the
    user's own names)."""

    def __init__(self, fmt: str, mapping: Mapping[str, str]):
        super().__init__(fmt)
        self.pairs: list[tuple[str, str]] = []
        self.add(mapping)

    def add(self, mapping: Mapping[str, str]) -> None:
        """Add ``{private text: pseudonym}`` pairs."""
        pairs = dict(self.pairs)
        pairs.update({k: v for k, v in mapping.items() if k})
        self.pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))
        self._map = dict(self.pairs)
        # whole names only: "MRN12" is not scrubbed out of "MRN123" or "0.MRN12x"
        alts = "|".join(re.escape(k) for k, _ in self.pairs)
        self._re = re.compile(rf"(?<![A-Za-z0-9])(?:{alts})(?![A-Za-z0-9])") if alts else None

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self._re is None:
            return text
        return self._re.sub(lambda m: self._map[m.group(0)], text)
