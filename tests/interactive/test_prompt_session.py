"""The prompt API on a real CHAOS scan (patient 1, T2-SPIR; held out of the bundled
promptable model's training): box + clicks raise Dice, undo restores, a negative click
removes a false region, propagation carries an organ and stops where it ends (and, on
a synthetic stack, where the object's intensity drifts away from the prompted slice's).

Dice is measured against the manual CHAOS labels with a Dice computed here, not the
package's."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gi_seg.errors import InputError
from napari_gi_seg.interactive import RANDOM_WALKER, PromptSession, next_click

RIGHT_KIDNEY = 2


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def kidney(chaos_volumes):
    """(image volume, (z, y, x) right-kidney mask, its largest slice, its box)."""
    image, labels = chaos_volumes
    organ = labels.data == RIGHT_KIDNEY
    z = int(np.argmax(organ.sum((1, 2))))
    ys, xs = np.nonzero(organ[z])
    return image, organ, z, (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)


def _protocol(session, truth, z, box, clicks):
    m = session.add_box(z, *box)
    dices = [_dice(m, truth[z])]
    for _ in range(clicks):
        y, x, positive = next_click(m, truth[z])
        m = session.add_point(z, y, x, positive=positive)
        dices.append(_dice(m, truth[z]))
    return dices


@pytest.mark.parametrize("model", [RANDOM_WALKER, None], ids=["random-walker", "default-model"])
def test_box_then_clicks_raise_dice(kidney, model):
    image, organ, z, box = kidney
    s = PromptSession(image, model=model)
    dices = _protocol(s, organ, z, box, clicks=3)
    # the box alone finds the kidney, the clicks (deepest point of the largest error) improve it
    assert dices[0] > 0.6
    # (chaos-prompt:2 starts at 0.94 from the box here and ends at 0.96: the gain left is small)
    assert dices[-1] > dices[0] + 0.01
    assert dices[-1] > 0.85
    assert s.prompted_slices == [z]
    assert s.mask[z].sum() > 0 and s.mask.sum() == s.mask[z].sum()


def test_undo_restores_each_step(kidney):
    image, organ, z, box = kidney
    s = PromptSession(image, model=RANDOM_WALKER)
    after_box = s.add_box(z, *box)
    y, x, positive = next_click(after_box, organ[z])
    after_click = s.add_point(z, y, x, positive=positive)
    assert not np.array_equal(after_box, after_click)
    assert s.undo()
    np.testing.assert_array_equal(s.mask[z], after_box)
    assert s.prompts(z).points == [] and s.prompts(z).box == tuple(box)
    assert s.undo()
    assert not s.mask.any() and s.prompted_slices == []
    assert not s.undo()  # nothing left


def test_negative_click_removes_a_false_region(kidney):
    image, organ, z, box = kidney
    s = PromptSession(image, model=RANDOM_WALKER)
    s.add_box(z, *box)
    # a false region: a positive scribble on background inside the box's corner
    ys, xs = np.nonzero(~organ[z])
    y0, x0, y1, x1 = box
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    dist = np.hypot(ys - (y0 + y1) / 2, xs - (x0 + x1) / 2)
    i = int(np.argmax(np.where(inside, dist, -1)))
    fy, fx = int(ys[i]), int(xs[i])
    scribble = np.zeros(organ[z].shape, bool)
    scribble[max(fy - 2, 0) : fy + 3, max(fx - 2, 0) : fx + 3] = True
    scribble &= ~organ[z]
    with_false = s.add_scribble(z, scribble, positive=True)
    assert with_false[fy, fx]
    false_before = (with_false & ~organ[z]).sum()
    m = s.add_point(z, fy, fx, positive=False)
    assert not m[fy, fx]
    assert (m & ~organ[z]).sum() < false_before
    assert _dice(m, organ[z]) > _dice(with_false, organ[z])


def test_propagate_carries_the_organ_and_stops_where_it_ends(kidney):
    image, organ, z, box = kidney
    s = PromptSession(image, model=RANDOM_WALKER)
    s.add_box(z, *box)
    m3 = s.propagate()
    present = np.flatnonzero(organ.any((1, 2)))
    reached = np.flatnonzero(m3.any((1, 2)))
    assert len(reached) >= 5  # several slices beyond the prompted one
    assert reached.min() >= present.min() - 3 and reached.max() <= present.max() + 3  # it stops
    assert _dice(m3, organ) > 0.5
    # a limit the user sets: 2 slices each way
    s.undo()
    m_lim = s.propagate(max_slices=2)
    assert set(np.flatnonzero(m_lim.any((1, 2)))) <= set(range(z - 2, z + 3))
    # a click on a propagated slice refines it from its propagated mask
    zz = int(reached[0]) if reached[0] != z else int(reached[-1])
    s.undo()
    s.propagate()
    before = s.mask[zz]
    c = next_click(before, organ[zz])
    after = s.add_point(zz, c[0], c[1], positive=c[2])
    assert _dice(after, organ[zz]) >= _dice(before, organ[zz]) - 0.02
    assert zz in s.prompted_slices


def test_propagation_stops_where_the_intensity_drifts_from_the_prompted_slice():
    """A disk whose intensity creeps up by 0.6 MAD a slice (each step passes the
    neighbour test of 2 MADs) stops within 3 MADs of the prompted slice (6 slices);
    without the anchor rule (the old behaviour) it runs through the whole stack."""
    rng = np.random.default_rng(0)
    nz, z0 = 21, 10
    yy, xx = np.ogrid[:64, :64]
    disk = (yy - 32) ** 2 + (xx - 32) ** 2 <= 12**2
    vol = rng.normal(0.0, 5.0, (nz, 64, 64)).astype(np.float32)
    for z in range(nz):
        vol[z][disk] += 100.0 + 4.0 * abs(z - z0) + rng.normal(0.0, 10.0, int(disk.sum()))
    s = PromptSession(vol, model=RANDOM_WALKER)
    s.add_box(z0, 20, 20, 45, 45)
    reached = np.flatnonzero(s.propagate().any((1, 2)))
    assert 3 <= z0 - reached.min() <= 6 and 3 <= reached.max() - z0 <= 6
    s.anchor_shift_mad = None
    assert len(np.flatnonzero(s.propagate().any((1, 2)))) == nz


def test_new_object_and_bad_prompts(kidney):
    image, organ, z, box = kidney
    s = PromptSession(image, model=RANDOM_WALKER)
    with pytest.raises(InputError, match="propagat"):
        s.propagate()
    with pytest.raises(InputError, match="outside the stack"):
        s.add_box(image.shape[0], *box)
    with pytest.raises(InputError, match="empty"):
        s.add_box(z, 10, 10, 10, 20)
    with pytest.raises(InputError, match="outside the slice"):
        s.add_point(z, -1, 5)
    with pytest.raises(InputError, match="shape"):
        s.add_scribble(z, np.ones((3, 3), bool))
    s.add_box(z, *box)
    s.new_object()
    assert not s.mask.any() and not s.can_undo and s.prompted_slices == []
