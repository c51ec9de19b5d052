"""The command line's exit status: the package's expected failures (GiSegError and its
subclasses), OSError and MemoryError are the user's input or environment (exit 2, one
line naming the file); any other exception is a bug (exit 1, "internal error")."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from napari_gi_seg._cli_errors import run_guarded
from napari_gi_seg.errors import GiSegError, InputError, NotFoundError, OutOfRangeError


def _raise(exc):
    def func(args):
        raise exc

    return func


@pytest.mark.parametrize(
    "exc, rc",
    [
        (InputError("scan.nii.gz: not 3D"), 2),
        (NotFoundError("model 'x' is not registered"), 2),
        (OutOfRangeError("slice 99 outside 0..36"), 2),
        (OSError(28, "No space left on device", "out.nii.gz"), 2),
        (MemoryError(), 2),
        (ValueError("a bug in our code"), 1),
        (IndexError("index 3 is out of bounds"), 1),
        (KeyError("missing"), 1),
        (TypeError("unsupported operand"), 1),
    ],
)
def test_exit_status(exc, rc, capsys):
    args = argparse.Namespace(input="scan.nii.gz")
    assert run_guarded(_raise(exc), args, debug=False) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("napari-gi-seg: internal error: " if rc == 1 else "napari-gi-seg: error: ")


def test_raise_sites_of_user_errors_are_gisegerrors():
    """What the core raises for bad input is a GiSegError (and still the built-in type
    callers catch): an out-of-range slice, an unknown state, a bad review record."""
    from napari_gi_seg.curation.review import ReviewTracker
    from napari_gi_seg.engine.inference import normalise_slices

    with pytest.raises(OutOfRangeError) as e:
        normalise_slices([3, 40], 37)
    assert isinstance(e.value, IndexError) and isinstance(e.value, GiSegError)
    with pytest.raises(InputError):
        ReviewTracker.from_dict({"states": [9]})
    with pytest.raises(GiSegError):
        ReviewTracker(4).mark(np.int64(7), 1)
