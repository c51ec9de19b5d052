"""The 2.5D inference engine on a real CHAOS volume and on networks whose output
is a known function of the input (flip TTA, resizing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_gi_seg.engine.inference import iter_segment, segment_volume
from napari_gi_seg.engine.preprocess import context_batch, context_indices, normalise_intensity
from napari_gi_seg.io.volume import Volume
from napari_gi_seg.models.spec import ClassInfo, ModelSpec


def test_output_shape_and_dtype_on_real_volume(chaos_volume, tiny_model):
    res = segment_volume(
        chaos_volume, tiny_model.spec, tiny_model.network(), device="cpu", batch_size=8, return_probs=True
    )
    assert res.labels.shape == chaos_volume.shape and res.labels.dtype == np.uint8
    assert res.probs.shape == (5, *chaos_volume.shape) and res.probs.dtype == np.float16
    assert set(np.unique(res.labels)) <= {0, 1, 2, 3, 4}
    assert res.segmented == list(range(chaos_volume.shape[0])) and not res.cancelled
    np.testing.assert_allclose(res.probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    # labels are the argmax of the probabilities
    assert np.mean(res.labels == res.probs.argmax(0)) > 0.999


def test_reduced_precision_matches_fp32(chaos_volume, tiny_model):
    from napari_gi_seg.engine.inference import autocast_dtype

    assert autocast_dtype(torch.device("cpu"), "fp32") is None
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.float16
    with pytest.raises(ValueError, match="precision 'int4'"):
        autocast_dtype(torch.device("cpu"), "int4")
    spec, net = tiny_model.spec, tiny_model.network()
    z = range(8, 16)
    ref = segment_volume(chaos_volume, spec, net, slices=z, device="cpu", precision="fp32", return_probs=True)
    bf = segment_volume(chaos_volume, spec, net, slices=z, device="cpu", precision="bf16", return_probs=True)
    assert np.abs(bf.probs.astype(np.float32) - ref.probs.astype(np.float32)).max() < 0.1
    assert np.mean(bf.labels == ref.labels) > 0.99


def test_context_indices_clamped_at_edges():
    idx = context_indices([0, 1, 9], (-1, 0, 1), depth=10)
    np.testing.assert_array_equal(idx, [[0, 0, 1], [0, 1, 2], [8, 9, 9]])
    idx = context_indices([0, 9], (-2, -1, 0, 1, 2), depth=10)
    np.testing.assert_array_equal(idx, [[0, 0, 0, 1, 2], [7, 8, 9, 9, 9]])
    vol = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
    b = context_batch(vol, [0, 3], (-1, 0, 1))
    assert b.shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(b[:, :, 0, 0], [[0, 0, 1], [2, 3, 3]])


def test_edge_slices_alone_equal_full_run(chaos_volume, tiny_model):
    spec, net = tiny_model.spec, tiny_model.network()
    last = chaos_volume.shape[0] - 1
    full = segment_volume(chaos_volume, spec, net, device="cpu", return_probs=True)
    for z in (0, last):
        one = segment_volume(chaos_volume, spec, net, slices=[z], device="cpu", return_probs=True)
        assert one.segmented == [z]
        np.testing.assert_allclose(one.probs[:, z].astype(np.float32), full.probs[:, z].astype(np.float32), atol=2e-3)
        np.testing.assert_array_equal(one.labels[z], full.labels[z])


class EdgeNet(torch.nn.Module):
    """Class 1 where the previous-slice channel equals the target slice, class 2
    where the next-slice channel does; background elsewhere (input offsets -1, 0, 1)."""

    def forward(self, x):
        prev, mid, nxt = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        return torch.cat([torch.full_like(mid, 0.5), 1 - 10 * (prev - mid).abs(), 0.9 - 10 * (nxt - mid).abs()], 1)


def test_edge_slices_get_clamped_neighbours():
    spec = ModelSpec(name="edge", encoder="resnet18", input_size=(8, 8), classes=[ClassInfo(1, "a"), ClassInfo(2, "b")])
    v = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 8, 8), np.float32)  # slice k == k
    full = segment_volume(v, spec, EdgeNet(), device="cpu", batch_size=2)
    # slice 0's -1 neighbour is slice 0 itself; slice 4's +1 neighbour is slice 4
    np.testing.assert_array_equal(full.labels[:, 0, 0], [1, 0, 0, 0, 2])
    for z in (0, 4):
        one = segment_volume(v, spec, EdgeNet(), slices=[z], device="cpu")
        np.testing.assert_array_equal(one.labels[z], full.labels[z])


def test_slice_range_touches_only_those_slices(chaos_volume, tiny_model):
    spec, net = tiny_model.spec, tiny_model.network()
    full = segment_volume(chaos_volume, spec, net, device="cpu", return_probs=True)
    part = segment_volume(chaos_volume, spec, net, slices=range(10, 15), device="cpu", return_probs=True)
    assert part.segmented == [10, 11, 12, 13, 14] and not part.cancelled
    outside = np.ones(chaos_volume.shape[0], bool)
    outside[10:15] = False
    assert not part.labels[outside].any() and not part.probs[:, outside].any()
    np.testing.assert_allclose(
        part.probs[:, 10:15].astype(np.float32), full.probs[:, 10:15].astype(np.float32), atol=2e-3
    )
    with pytest.raises(IndexError, match="outside"):
        segment_volume(chaos_volume, spec, net, slices=[chaos_volume.shape[0]], device="cpu")


def test_cancellation_stops_within_one_batch(chaos_volume, tiny_model):
    batches = []
    res = segment_volume(
        chaos_volume,
        tiny_model.spec,
        tiny_model.network(),
        batch_size=4,
        device="cpu",
        progress=batches.append,
        cancel=lambda: len(batches) >= 1,
    )
    assert res.cancelled and len(batches) == 1
    assert res.segmented == [0, 1, 2, 3]
    assert not res.labels[4:].any()
    assert batches[0].stage == "segment" and batches[0].done == 4 and batches[0].total == chaos_volume.shape[0]
    # the generator form: stop asking -> nothing more is computed
    it = iter_segment(chaos_volume, tiny_model.spec, tiny_model.network(), batch_size=4, device="cpu")
    first = next(it)
    it.close()
    assert list(first.z) == [0, 1, 2, 3]


# --------------------------------------------------------------- known networks
LR_SPEC = dict(
    name="lr",
    architecture="Unet",
    encoder="resnet18",
    context_offsets=(-1, 0, 1),
    input_size=(32, 32),
    flip_augmented=True,
    classes=[ClassInfo(1, "left_kidney", mirror="right_kidney"), ClassInfo(2, "right_kidney", mirror="left_kidney")],
)


class SideAwareNet(torch.nn.Module):
    """Calls a bright voxel ``left_kidney`` in the image's left half (x < W/2) and
    ``right_kidney`` in the right half; background elsewhere. Exactly
    flip-equivariant with left/right swapped: f(flip(x)) = perm(flip(f(x)))."""

    def forward(self, x):
        w = x.shape[-1]
        s = torch.where(torch.arange(w) < w // 2, 1.0, -1.0).to(x)
        c = x[:, 1:2]
        return torch.cat([torch.full_like(c, 1.0), 10 * c * s, -10 * c * s], 1)


class LeftBiasedNet(torch.nn.Module):
    """Not equivariant: always favours ``left_kidney`` where the image is bright."""

    def forward(self, x):
        c = x[:, 1:2]
        return torch.cat([torch.full_like(c, 1.0), 4 * c, 2 * c], 1)


def _blob_volume():
    v = np.zeros((3, 32, 32), np.float32)
    v[:, 10:20, 4:10] = 1.0  # left half of the image
    v[:, 10:20, 22:28] = 1.0  # right half
    return v


def test_flip_tta_maps_left_and_right_back():
    spec = ModelSpec(**LR_SPEC)
    assert spec.mirror_permutation() == [0, 2, 1]
    v = _blob_volume()
    plain = segment_volume(v, spec, SideAwareNet(), device="cpu", return_probs=True)
    tta = segment_volume(v, spec, SideAwareNet(), device="cpu", tta=True, return_probs=True)
    assert (plain.labels[:, 10:20, 4:10] == 1).all() and (plain.labels[:, 10:20, 22:28] == 2).all()
    # without the channel permutation the flipped pass would call the left blob
    # right_kidney and the average would be a tie
    np.testing.assert_array_equal(tta.labels, plain.labels)
    np.testing.assert_allclose(tta.probs.astype(np.float32), plain.probs.astype(np.float32), atol=1e-3)


def test_flip_tta_averages_with_permuted_flipped_pass():
    spec = ModelSpec(**LR_SPEC)
    v = _blob_volume()
    net = LeftBiasedNet()
    tta = segment_volume(v, spec, net, device="cpu", tta=True, return_probs=True)
    x = torch.from_numpy(context_batch(normalise_intensity(v), [0, 1, 2], spec.context_offsets))
    p = torch.softmax(net(x), 1)
    pf = torch.softmax(torch.flip(net(torch.flip(x, (-1,))), (-1,)), 1)[:, [0, 2, 1]]
    expected = (0.5 * (p + pf)).numpy()
    np.testing.assert_allclose(tta.probs.astype(np.float32), np.moveaxis(expected, 1, 0), atol=1e-3)
    # bright voxels: p(left)=p(right) after averaging 4c/2c with 2c/4c -> equal
    assert np.allclose(tta.probs[1, :, 12, 5], tta.probs[2, :, 12, 5], atol=1e-3)


class LeftHalfNet(torch.nn.Module):
    """Class 1 in the left half of whatever grid it is given, background elsewhere."""

    def forward(self, x):
        n, _, h, w = x.shape
        s = torch.where(torch.arange(w) < w // 2, 5.0, -5.0).to(x).expand(n, 1, h, w)
        return torch.cat([torch.zeros_like(s), s], 1)


@pytest.mark.parametrize("shape", [(4, 100, 150), (2, 17, 40)])
def test_output_returns_at_the_input_size(shape):
    spec = ModelSpec(name="half", encoder="resnet18", input_size=(64, 64), classes=[ClassInfo(1, "liver")])
    v = np.random.default_rng(0).random(shape).astype(np.float32)
    res = segment_volume(Volume(v, (3.0, 1.0, 1.0)), spec, LeftHalfNet(), device="cpu", return_probs=True)
    w = shape[2]
    assert res.labels.shape == shape and res.probs.shape == (2, *shape)
    assert (res.labels[..., : w // 2 - 1] == 1).all() and (res.labels[..., w // 2 + 1 :] == 0).all()


def test_real_volume_resized_from_256_to_model_size(chaos_volume, tiny_model):
    assert chaos_volume.shape[1:] != tiny_model.spec.input_size
    crop = chaos_volume.data[:6, 20:220, 10:250]  # 200 x 240, not square either
    res = segment_volume(crop, tiny_model.spec, tiny_model.network(), device="cpu")
    assert res.labels.shape == crop.shape and res.labels.dtype == np.uint8


def test_bad_volume_input(tiny_model):
    with pytest.raises(ValueError, match="3D"):
        segment_volume(np.zeros((4, 4)), tiny_model.spec, tiny_model.network(), device="cpu")
    v = np.ones((3, 8, 8), np.float32)
    v[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segment_volume(v, tiny_model.spec, tiny_model.network(), device="cpu")


class ContextNet(torch.nn.Module):
    """Contextual laterality ("keep" flip labels): the blob nearer the bright strip (the
    "liver") is class 1 on whichever side the strip lies."""

    def forward(self, x):
        c = x[:, 1:2]
        w = c.shape[-1]
        strip_left = c[..., : w // 8].mean() > c[..., -(w // 8) :].mean()
        near = torch.arange(w).to(c) < w // 2 if strip_left else torch.arange(w).to(c) >= w // 2
        near = near.expand_as(c)
        blob = (c > 0.5) & (c < 0.9)
        one = torch.where(blob & near, 4.0, 0.0)
        two = torch.where(blob & ~near, 4.0, 0.0)
        return torch.cat([torch.full_like(c, 1.0), one, two], 1)


def test_flip_tta_of_a_keep_model_does_not_swap_sides():
    """A model trained with ``flip_labels="keep"`` names each side by its context, so its
    flipped pass needs no channel swap: TTA agrees with the plain pass (a swap would
    turn every kidney into the other one)."""
    spec = ModelSpec(**{**LR_SPEC, "flip_augmented": True, "flip_labels": "keep"})
    assert spec.mirror_permutation() == [0, 1, 2]
    v = _blob_volume() * 0.7
    v[:, :, :3] = 1.0  # the "liver" strip on the left
    plain = segment_volume(v, spec, ContextNet(), device="cpu", tta=False)
    tta = segment_volume(v, spec, ContextNet(), device="cpu", tta=True)
    assert (plain.labels[:, 10:20, 4:10] == 1).all() and (plain.labels[:, 10:20, 22:28] == 2).all()
    np.testing.assert_array_equal(tta.labels, plain.labels)
    swapped = ModelSpec(**{**LR_SPEC, "flip_augmented": True})  # the same net read as a "swap" model
    bad = segment_volume(v, swapped, ContextNet(), device="cpu", tta=True, return_probs=True)
    assert np.allclose(bad.probs[1, :, 12, 5], bad.probs[2, :, 12, 5], atol=1e-3)  # a tie: sides lost
