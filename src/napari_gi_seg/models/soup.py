"""Weight averaging of networks fine-tuned from one starting point (a "model soup"):
one network, one inference, most of an ensemble's gain."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError

__all__ = ["average_weights"]


def average_weights(nets: Sequence[torch.nn.Module], names: Sequence[str] | None = None) -> torch.nn.Module:
    """The uniform average of the parameters and buffers of networks of one
    architecture, as a new network (the inputs are not changed).

    The *uniform soup* of Wortsman et al., "Model soups: averaging weights of multiple
    fine-tuned models improves accuracy without increasing inference time", ICML 2022:
    networks fine-tuned from the same weights (here ``chaos-t2spir:2``) with different
    augmentation stay in one basin of the loss, and their average behaves like their
    ensemble at the cost of one network. Averaging is torch's
    :class:`torch.optim.swa_utils.AveragedModel` with ``use_buffers=True``, so batch-norm
    running statistics are averaged too (integer buffers such as
    ``num_batches_tracked`` keep the first network's value). Not meaningful for networks
    trained from different random starts.

    Parameters
    ----------
    nets
        Two or more networks with identical state-dict keys and shapes (built from one
        spec by :func:`~napari_gi_seg.models.network.build_network`).
    names
        What to call them in an error (e.g. their checkpoint files); default ``#0``, ``#1``...

    Returns
    -------
    torch.nn.Module
        A copy of ``nets[0]`` holding the averaged weights (its dtypes), in eval mode.

    Raises
    ------
    InputError
        Fewer than two networks, or one whose weights' names or shapes differ from the
        first's (naming it and the first differing tensor).
    """
    from torch.optim.swa_utils import AveragedModel

    nets = list(nets)
    names = list(names) if names is not None else [f"#{i}" for i in range(len(nets))]
    if len(nets) < 2:
        raise InputError(f"a weight average needs two or more networks, got {len(nets)}")
    ref = {k: tuple(v.shape) for k, v in nets[0].state_dict().items()}
    for name, net in zip(names[1:], nets[1:]):
        sd = net.state_dict()
        if set(sd) != set(ref):
            diff = sorted(set(sd) ^ set(ref))[0]
            raise InputError(f"{name}: not the same network as {names[0]} (weight {diff!r} in only one of them)")
        bad = next((k for k, v in sd.items() if tuple(v.shape) != ref[k]), None)
        if bad is not None:
            raise InputError(f"{name}: weight {bad!r} has shape {tuple(sd[bad].shape)}, {names[0]} {ref[bad]}")
    avg = AveragedModel(nets[0], use_buffers=True)
    for net in nets:  # the first call copies nets[0] (n_averaged = 0), each later one is a running mean
        avg.update_parameters(net)
    out = avg.module
    ints = {k: v for k, v in nets[0].state_dict().items() if not v.is_floating_point()}
    out.load_state_dict({**out.state_dict(), **ints})
    return out.eval()
