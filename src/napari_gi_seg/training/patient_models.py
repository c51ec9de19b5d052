"""Keep an adapted model for a patient: pseudonymous patient keys and their models.

An adapted model (:func:`napari_gi_seg.training.adaptation.adapt_to_scan`) is worth
keeping: on an MR-Linac the same patient is scanned every treatment day, and day 2
should start from the model adapted on day 1. The registry stores it under a
**pseudonymous patient key**, never a name:

``patient_key(identifier) = "p" + HMAC-SHA256(secret, identifier)[:16 hex]``

* ``identifier`` is what identifies the patient to this installation: by default the
  image fingerprint of the scan that was corrected
  (:func:`napari_gi_seg.curation.session.image_fingerprint`, a hash of the voxels: no
  name, no ID); or a code the clinic already uses for the patient (a study or
  treatment-course code), which makes day 2's scan find day 1's model by itself.
* ``secret`` is 32 random bytes created once per user folder
  (``<user folder>/patient_key.secret``, readable by the user only), so the key
  cannot be recomputed from an identifier anywhere else, and two installations give
  the same patient different keys.

The model is registered as ``patient-<key>`` (:func:`patient_model_name`); every
"keep" adds a version, whose ``parent`` is the model it was adapted from (the
bundled model on day 1, ``patient-<key>:1`` on day 2 when day 2 started from it).
:func:`find_patient_model` looks it up; ``napari-gi-seg segment DAY2 -o OUT --model
patient-<key>`` and the Segment widget's model list use it like any other model.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..models import registry
from ..models.spec import ModelSpec
from ..paths import user_dir

SECRET_FILE = "patient_key.secret"
PREFIX = "patient-"


def _secret() -> bytes:
    """The per-user-folder HMAC secret (32 random bytes), created on first use with
    mode 0600 (``mkstemp``, then an exclusive hard link: two processes creating it at
    once agree on one secret)."""
    path = user_dir() / SECRET_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=".secret-", dir=path.parent)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.close(fd)
            try:
                os.link(tmp, path)  # fails if another process won the race
            except FileExistsError:
                pass
        finally:
            Path(tmp).unlink(missing_ok=True)
    data = path.read_bytes()
    if len(data) < 16:
        raise InputError(f"{path}: patient key secret is damaged (too short); delete it to start a new one")
    return data


def patient_key(identifier: str) -> str:
    """The pseudonymous key of a patient: ``"p"`` + the first 16 hex digits of
    HMAC-SHA256(secret, identifier) (RFC 2104).

    Parameters
    ----------
    identifier
        An image fingerprint (:func:`scan_key` computes it from the voxels) or a code
        the clinic uses for the patient. Never stored.

    Returns
    -------
    str
        17 characters, ``[a-z0-9]``.

    Raises
    ------
    ValueError
        Empty identifier, or a damaged secret file.
    """
    ident = str(identifier).strip()
    if not ident:
        raise InputError("empty patient identifier")
    return "p" + hmac.new(_secret(), ident.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def scan_key(volume_data: np.ndarray) -> str:
    """:func:`patient_key` of a scan's image fingerprint (``(z, y, x)`` voxels; see
    :func:`napari_gi_seg.curation.session.image_fingerprint`)."""
    from ..curation.session import image_fingerprint

    return patient_key(image_fingerprint(volume_data))


def patient_model_name(key: str) -> str:
    """Registry name of a patient's adapted models: ``"patient-<key>"``.

    Raises ``ValueError`` when ``key`` is not a key made by :func:`patient_key`."""
    if not (len(key) == 17 and key[0] == "p" and all(ch in "0123456789abcdef" for ch in key[1:])):
        raise InputError(f"{key!r} is not a patient key (p + 16 hex digits)")
    return PREFIX + key


def find_patient_model(key: str) -> registry.ModelEntry | None:
    """The newest model kept for the patient ``key``, or ``None``."""
    try:
        return registry.get_entry(patient_model_name(key))
    except registry.ModelNotFoundError:
        return None


def check_model_name(name: str) -> str:
    """``name`` if it is a valid registry name (:func:`napari_gi_seg.models.registry.validate_name`);
    else ``ValueError`` naming it and the rule."""
    return registry.validate_name(name)


def register_adapted(result, name: str, description: str = "") -> registry.ModelEntry:
    """Register an :class:`~napari_gi_seg.training.adaptation.AdaptationResult` as
    ``name`` (the next free version; float16 weights, spec and ``MODEL_CARD.md``).

    Parameters
    ----------
    result
        The adaptation result (its ``spec.parent`` is the model it was adapted from).
    name
        Registry name (``[A-Za-z0-9._-]``, not starting with a dot).
    description
        Replaces the spec's description when given.

    Returns
    -------
    ModelEntry

    Raises
    ------
    ValueError
        A name that is not a plain folder name.
    """
    check_model_name(name)
    d = result.spec.to_dict()
    d.update(name=name, version=registry.next_version(name), created="", software_version="")
    if description:
        d["description"] = description
    spec = ModelSpec.from_dict(d)
    # next_free: another process keeping a model for the same patient takes the next version
    return registry.register_model(
        spec, model=result.net, half=True, extra_files={"MODEL_CARD.md": _card}, next_free=True
    )


def keep_for_patient(result, key: str) -> registry.ModelEntry:
    """Register an adapted model for the patient ``key`` (:func:`patient_key`) as the
    next version of ``patient-<key>``, so the next treatment day can start from it
    (:func:`find_patient_model`).

    Returns the :class:`~napari_gi_seg.models.registry.ModelEntry`. Raises
    ``ValueError`` for a malformed key.
    """
    name = patient_model_name(key)
    return register_adapted(
        result,
        name,
        description=f"adapted for patient {key} from {result.spec.parent} on {len(result.slices)} corrected slices",
    )


def _card(spec: ModelSpec) -> str:
    """Model card of an adapted model: the base's card plus the adaptation."""
    from ..models.card import model_card

    a = spec.metrics.get("adaptation") or {}
    r = spec.training.get("adaptation") or {}
    return (
        model_card(spec)
        + "\n## Patient adaptation\n\n"
        + f"Fine-tuned from `{spec.parent}` on {len(a.get('slices', []))} corrected slices of one scan "
        + f"({r.get('steps')} steps, {r.get('seconds')} s). Dice on those slices (trained on, not an accuracy "
        + f"estimate): {a.get('dice_before', float('nan')):.3f} before, {a.get('dice_after', float('nan')):.3f} "
        + "after. Meant for this patient's scans only.\n"
    )
