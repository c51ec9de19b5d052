"""Teaching a model a new structure: the grown network keeps its old outputs, the
marginal loss does not teach background for a class a case does not annotate (plain
cross-entropy does), and ``finetune`` grows a base without the spleen into a model
that predicts it (real CHAOS patients, the tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_gi_seg.datasets import IGNORE_INDEX
from napari_gi_seg.models import registry
from napari_gi_seg.models.grow import drop_classes, grow_spec, grow_state_dict
from napari_gi_seg.models.network import build_network, load_state
from napari_gi_seg.training.losses import marginal_loss, segmentation_loss


@pytest.fixture
def nospleen_key(tiny_model, _isolated_user_dir):
    """The tiny model with its spleen output removed, registered as ``tiny-nospleen:1``."""
    spec, sd = drop_classes(tiny_model.spec, tiny_model.state_dict, ["spleen"])
    spec.name = "tiny-nospleen"
    return registry.register_model(spec, model=load_state(build_network(spec), sd)).key


def _spleen_batch(tiny_model, chaos_volumes):
    """Real 2.5D slices of CHAOS patient 1 that show the spleen, at the tiny model's size."""
    from napari_gi_seg.engine.preprocess import context_batch, normalise_intensity, resize_images, resize_labels

    image, labels = chaos_volumes
    spec = tiny_model.spec
    zs = [int(z) for z in np.nonzero((labels.data == 4).sum((1, 2)) > 200)[0]][:8]
    norm = normalise_intensity(image.data, spec.normalisation, spec.percentiles)
    x = resize_images(torch.from_numpy(context_batch(norm, zs, spec.context_offsets)), spec.input_size)
    y = resize_labels(torch.from_numpy(labels.data[zs].astype(np.int64)), spec.input_size)
    return x, y


def test_grown_network_keeps_old_logits(tiny_model):
    """smp head and MONAI UNet (whose last residual unit reads and writes the output
    channels): the old classes' logits are exactly the base's before fine-tuning."""
    x = torch.randn(2, 3, 64, 64)
    small, sd = drop_classes(tiny_model.spec, tiny_model.state_dict, ["spleen"])
    grown = grow_spec(small, ["spleen"])
    assert [(c.index, c.name) for c in grown.classes][-1] == (4, "spleen") and grown.out_channels == 5
    base = load_state(build_network(small), sd).eval()
    big = load_state(build_network(grown), grow_state_dict(sd, grown)).eval()
    with torch.no_grad():
        assert torch.equal(big(x)[:, :4], base(x))
    spec = small.__class__.from_dict({**small.to_dict(), "architecture": "monai.UNet", "encoder": "16-256-res2-batch"})
    torch.manual_seed(0)
    mbase = build_network(spec).eval()
    mgrown = grow_spec(spec, ["spleen"])
    mbig = load_state(build_network(mgrown), grow_state_dict(mbase.state_dict(), mgrown)).eval()
    with torch.no_grad():
        out, ref = mbig(x[:1, :, :32, :32]), mbase(x[:1, :, :32, :32])
        assert torch.allclose(out[:, :4], ref, atol=1e-5) and out[:, 4].std() > 0


def test_marginal_loss_is_plain_loss_when_all_annotated(tiny_model, chaos_volumes):
    x, y = _spleen_batch(tiny_model, chaos_volumes)
    y[:, :5] = IGNORE_INDEX
    with torch.no_grad():
        logits = tiny_model.network()(x)
    plain = segmentation_loss(logits, y, multilabel=False)
    none = torch.zeros(len(x), 5, dtype=torch.bool)
    assert float(marginal_loss(logits, y, none)) == pytest.approx(float(plain), rel=1e-4)
    assert float(segmentation_loss(logits, y, False, none)) == float(plain)  # nothing left out: the plain path


def test_case_without_new_class_does_not_teach_background(tiny_model, chaos_volumes):
    """Real slices showing the spleen, exported before the spleen was a structure
    (spleen voxels are 0). Start from logits that know every organ (the true labels,
    made soft) and take gradient steps: plain Dice + CE unlearn the spleen where it is;
    the marginal loss (spleen not annotated) keeps it, and still fits the liver."""
    x, y = _spleen_batch(tiny_model, chaos_volumes)
    spleen = y == 4
    y_old = torch.where(spleen, torch.zeros_like(y), y)
    u = torch.zeros(len(x), 5, dtype=torch.bool)
    u[:, 4] = True
    g = torch.Generator().manual_seed(0)
    init = 2.0 * torch.nn.functional.one_hot(y, 5).permute(0, 3, 1, 2).float() + 0.5 * torch.randn(
        len(x), 5, *y.shape[1:], generator=g
    )

    def after(loss_fn) -> tuple[float, float]:
        z = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.1)
        for _ in range(15):
            loss = loss_fn(z)
            opt.zero_grad()
            loss.backward()
            opt.step()
        p = z.detach().softmax(1)
        return float(p[:, 4][spleen].mean()), float(p[:, 1][y == 1].mean())

    start = float(init.softmax(1)[:, 4][spleen].mean())
    plain, _ = after(lambda z: segmentation_loss(z, y_old, False))
    marginal, liver = after(lambda z: segmentation_loss(z, y_old, False, u))
    assert plain < 0.5 * start  # plain loss: "not spleen" where the spleen is
    assert marginal > 0.9 * start and marginal > plain + 0.2
    assert liver > float(init.softmax(1)[:, 1][y == 1].mean())  # the annotated classes are still fitted


def test_finetune_grows_base_and_predicts_new_class(nospleen_key, chaos3, chaos_dir):
    """A dataset whose classes.json has the spleen fine-tunes the base without it (no
    extra argument: what ``napari-gi-seg finetune DATASET --model BASE --name NEW``
    calls) into a model with the spleen appended (old indices unchanged) that finds it
    on a training scan."""
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.io.nifti import read_nifti
    from napari_gi_seg.training.finetune import finetune

    res = finetune(
        chaos3, nospleen_key, "tiny-spleen", epochs=4, max_steps_per_epoch=6, batch_size=8, lr=1e-2,
        device="cpu", augment=False, val_fraction=0.34, register_if_worse=True,
    )  # fmt: skip
    assert res.registered and res.new_classes == ["spleen"]
    entry = res.entry
    spec, net = registry.load_model(entry.key)
    assert [(c.index, c.name) for c in spec.classes] == [
        (1, "liver"), (2, "right_kidney"), (3, "left_kidney"), (4, "spleen")
    ]  # fmt: skip
    assert spec.parent == nospleen_key and spec.classes[3].colour and spec.classes[3].single_component
    ft = spec.metrics["finetune"]
    assert ft["new_classes"] == ["spleen"] and "spleen" not in ft["per_class_before"]
    assert set(ft["old_class_change"]) == {"liver", "right_kidney", "left_kidney"}
    assert ft["n_cases"]["spleen"] == 1 and ft["annotated_cases"] == {"spleen": 3}
    old = ["liver", "right_kidney", "left_kidney"]  # like-for-like figures: old classes only, both sides
    assert ft["old_classes_before"] == pytest.approx(np.mean([ft["per_class_before"][c] for c in old]))
    assert ft["old_classes_after"] == pytest.approx(np.mean([ft["per_class_after"][c] for c in old]))
    from napari_gi_seg._privacy import public_case_id

    train_pid = next(p for p in ("1", "2", "3") if public_case_id(p) == spec.training["train_patients"][0])
    img = read_nifti(chaos_dir / f"image_{train_pid}.nii.gz")
    ref = read_nifti(chaos_dir / f"label_{train_pid}.nii.gz", as_labels=True).data
    res = segment_volume(img, spec, net, device="cpu", return_probs=True)
    p_spleen = res.probs[4].astype(np.float32)
    # a few steps of a 64 px model: the spleen is found where it is (not yet the argmax everywhere)
    inside, outside = float(p_spleen[ref == 4].mean()), float(p_spleen[ref != 4].mean())
    assert inside > 2.0 * outside, (inside, outside)
    from napari_gi_seg.models.card import model_card

    card = model_card(spec)
    assert "spleen" in card and "added by fine-tuning" in card


def test_held_back_comparison_sets_old_classes_against_old_classes():
    """A grown model's mean over old + new classes is not compared with the base's mean
    over the old ones (0.996 -> 0.794 read as a fall): the comparison takes the classes
    the base was scored on and lists the new structure on its own."""
    from napari_gi_seg.training.finetune import held_back_comparison

    nan = float("nan")
    before = {"liver": 0.99, "right_kidney": 0.98, "left_kidney": nan}  # left kidney: not on the held-back cases
    after = {"liver": 0.98, "right_kidney": 0.99, "left_kidney": 0.50, "spleen": 0.40}
    cmp = held_back_comparison(before, after)
    assert cmp["classes"] == ["liver", "right_kidney"]
    assert cmp["before"] == pytest.approx(0.985) and cmp["after"] == pytest.approx(0.985)
    assert cmp["new"] == {"spleen": 0.40}
    # a class the new model lacks is NaN after, never silently dropped
    assert held_back_comparison({"liver": 0.9}, {})["after"] != held_back_comparison({"liver": 0.9}, {})["after"]


def test_a_new_structure_absent_from_the_held_back_cases_is_found():
    """The UW-Madison rehearsal (docs/benchmarks.md): the held-back slice had no stomach,
    so choosing the epoch on it kept epoch 1 (Dice 1.0 for painting nothing). Such a
    structure is detected (single- and multi-label targets) and the last epoch is kept."""
    from napari_gi_seg.datasets import IGNORE_INDEX
    from napari_gi_seg.datasets.case import Case
    from napari_gi_seg.training.finetune import absent_from_held_back

    names = ["liver", "right_kidney", "left_kidney", "spleen", "Stomach"]
    t = np.zeros((2, 8, 8), np.uint8)
    t[0, :2] = 1
    t[1, -1] = IGNORE_INDEX
    held = [Case("a", "g", None, t, ["Stomach"])]
    assert absent_from_held_back(held, names, ["Stomach"]) == ["Stomach"]
    t2 = t.copy()
    t2[1, 3, 3] = 5
    assert absent_from_held_back(held + [Case("b", "h", None, t2, None)], names, ["Stomach"]) == []
    ch = np.zeros((5, 2, 8, 8), np.uint8)
    ch[4] = IGNORE_INDEX  # every Stomach voxel ignored: not shown
    assert absent_from_held_back([Case("c", "g", None, ch, None)], names, ["Stomach"], multilabel=True) == ["Stomach"]
    ch[4, 0, 1, 1] = 1
    assert absent_from_held_back([Case("c", "g", None, ch, None)], names, ["Stomach"], multilabel=True) == []
