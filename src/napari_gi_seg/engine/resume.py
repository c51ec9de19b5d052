"""Resumable folder runs: what ``segment -i IN -o OUT`` may skip, must redo, and how
a rerun merges its records into the folder's ``segment-manifest.json``.

A folder run keeps one record per output in the manifest (:mod:`.batch`). Each
successful record holds the fingerprint of what produced it: the input's voxel sha256
(:func:`~.batch.voxel_sha256`), the model key and the sha256 of its weights, the
settings that change the labels (``tta``, ``precision``, ``slices``, output format)
and the sha256 of the output file itself. A rerun into the same folder then

* **skips** an output whose record is ``ok`` and matches all of that, and whose file
  is still there with the recorded sha256 (nnU-Net's ``--continue_prediction`` idea,
  made exact by the fingerprints);
* **redoes** an output that is missing, whose record is stale (another input, model or
  setting; the file changed) or was left ``running``/``failed`` by an earlier run: the
  manifest lists it, so the file is this tool's and may be replaced without
  ``--overwrite``;
* refuses, without ``--overwrite``, an existing file the manifest does not list (not
  ours: never replaced silently);
* **merges**: records of outputs this run did not touch are kept as they were; a
  failure never replaces a good record whose file is intact (it is kept, with the
  new error under ``rerun_error``).

Single-process runs write the manifest after every output (an output is first
recorded as ``running``), so a ``kill -9`` at any moment leaves a manifest that a
rerun can trust. Under torchrun the manifest is written by rank 0 at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .batch import MANIFEST_NAME, file_sha256, write_manifest

log = logging.getLogger(__name__)

__all__ = ["FolderManifest", "settings_of"]


def settings_of(info: dict) -> dict:
    """The part of a run's :func:`~.batch.run_info` that decides the labels: model key,
    weights sha256, ``tta``, ``precision`` (requested), ``slices``, ``output_format``."""
    return {
        "model": info["model"]["key"],
        "weights_sha256": info["model"]["weights_sha256"],
        "tta": info.get("tta"),
        "precision": (info.get("precision") or {}).get("requested"),
        "slices": info.get("slices"),
        "output_format": info.get("output_format"),
    }


class FolderManifest:
    """The manifest of one output folder across runs.

    Parameters
    ----------
    folder : Path
        The output folder.
    info : dict
        This run's :func:`~.batch.run_info`.
    started : str
        This run's start time (ISO 8601).
    incremental : bool
        Write the manifest after every change (single-process runs).
    """

    def __init__(self, folder: Path, info: dict, started: str, incremental: bool = True):
        self.folder, self.info, self.started, self.incremental = Path(folder), info, started, incremental
        self.settings = settings_of(info)
        self.records: dict[str, dict] = {}
        self.history: list[dict] = []
        self.touched: set[str] = set()
        self._load()

    def _load(self) -> None:
        path = self.folder / MANIFEST_NAME
        if not path.exists():
            return
        try:
            doc = json.loads(path.read_text())
            cases = doc["cases"]
            if not isinstance(cases, list):
                raise TypeError("cases is not a list")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: unreadable (%s); every output is segmented again", path, e)
            return
        for r in cases:
            if isinstance(r, dict) and isinstance(r.get("output"), str):
                self.records[r["output"]] = r
        self.history = [h for h in doc.get("previous_runs", []) if isinstance(h, dict)]
        model = doc.get("model", {}).get("key") if isinstance(doc.get("model"), dict) else None
        self.history.append({"started": doc.get("started"), "finished": doc.get("finished"), "model": model})

    # ------------------------------------------------------------------ decisions
    def listed(self, output: str) -> bool:
        """True when an earlier run of this tool recorded ``output`` (any status)."""
        return output in self.records

    def up_to_date(self, out: Path, input_sha256: str) -> bool:
        """True when ``out``'s record is ``ok`` for this input, model and settings and
        the file is there with the recorded sha256."""
        r = self.records.get(out.name)
        if not r or r.get("status") != "ok" or r.get("input_sha256") != input_sha256:
            return False
        if r.get("settings") != self.settings or not r.get("output_sha256") or not out.is_file():
            return False
        return file_sha256(out) == r["output_sha256"]

    def why_stale(self, out: Path, input_sha256: str) -> str:
        """A short reason why a listed output is segmented again."""
        r = self.records.get(out.name) or {}
        if r.get("status") != "ok":
            return f"left {r.get('status', 'unfinished')} by an earlier run"
        if not out.is_file():
            return "the file is missing"
        if r.get("input_sha256") != input_sha256:
            return "the input changed"
        if r.get("settings") != self.settings:
            changed = sorted(k for k in self.settings if (r.get("settings") or {}).get(k) != self.settings[k])
            return f"other {', '.join(changed)}"
        return "the file changed since it was written"

    # ------------------------------------------------------------------ records
    def running(self, output: str, input_sha256: str) -> None:
        """Record ``output`` as being written (a kill now leaves it ``running``: redone next time)."""
        prev = self.records.get(output)
        if prev is not None and prev.get("status") == "ok":
            return  # keep the good record until the new one replaces it
        self.records[output] = {"output": output, "status": "running", "input_sha256": input_sha256}
        self._save_if_incremental()

    def add(self, rec: dict, out: Path | None = None) -> dict:
        """Merge this run's record of one output; returns the record kept."""
        name = rec.get("output") or rec.get("unit")
        self.touched.add(str(name))
        if rec.get("status") == "ok":
            rec = {**rec, "settings": self.settings}
            if out is not None and out.is_file():
                rec["output_sha256"] = file_sha256(out)
        else:
            prev = self.records.get(str(name))
            if prev is not None and prev.get("status") == "ok" and out is not None and _intact(prev, out):
                kept = {**prev, "rerun_error": rec.get("error", "failed")}
                self.records[str(name)] = kept
                self._save_if_incremental()
                return {**rec, "kept_previous": True}
        self.records[str(name)] = rec
        self._save_if_incremental()
        return rec

    def skipped(self, output: str) -> dict:
        """Mark a skipped (up-to-date) output as part of this run; returns its record."""
        self.touched.add(output)
        return self.records[output]

    def save(self, records: list[dict] | None = None) -> Path:
        """Write the merged manifest (``records``: all ranks' records, gathered, when
        the run was distributed)."""
        for r in records or []:
            if not r.get("kept_previous"):  # a failure beside an intact good record keeps the good one
                self.records[str(r.get("output") or r.get("unit"))] = r
        return write_manifest(self.folder, self.info, list(self.records.values()), self.started, self.history)

    def _save_if_incremental(self) -> None:
        if self.incremental:
            write_manifest(self.folder, self.info, list(self.records.values()), self.started, self.history)


def _intact(rec: dict, out: Path) -> bool:
    sha = rec.get("output_sha256")
    return bool(sha) and out.is_file() and file_sha256(out) == sha
