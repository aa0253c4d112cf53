"""
Parameter and FLOP counts of a model for one forward pass.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real forward pass
(convolutions and matrix products, 2 FLOPs per multiply-add); element-wise work
(normalisation, activations, softmax) is not counted, as is usual for such figures.
"""

from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode


def flops_by_module(model: torch.nn.Module, *inputs: torch.Tensor) -> Dict[str, int]:
    """Count the FLOPs of ``model(*inputs)`` per top-level child module, plus ``total``."""
    counter = FlopCounterMode(display=False, depth=3)
    # FlopCounterMode's module tracker hooks autograd; with gradients off for the weights
    # instead of torch.no_grad() it sees plain tensors and needs no graph.
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with counter:
            model(*inputs)
    finally:
        for param, flag in zip(model.parameters(), flags):
            param.requires_grad_(flag)
    direct: Dict[str, int] = {}
    nested: Dict[str, int] = {}
    for name, per_op in counter.get_flop_counts().items():
        parts = name.split('.')
        flops = int(sum(per_op.values()))
        if len(parts) == 2:
            direct[parts[1]] = direct.get(parts[1], 0) + flops
        elif len(parts) == 3:
            # A ModuleList (encoder, decoder) is never called itself: sum its layers.
            nested[parts[1]] = nested.get(parts[1], 0) + flops
    out = dict(nested, **direct)
    total = int(counter.get_total_flops())
    # Work done by a method of a child without calling the child itself (the decoder's
    # cross-attention keys/values, computed once per forward) lands here.
    out['other'] = total - sum(out.values())
    out['total'] = total
    return out


def count_flops(model: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """Count the total FLOPs of ``model(*inputs)``."""
    return flops_by_module(model, *inputs)['total']


def count_parameters(model: torch.nn.Module) -> Dict[str, int]:
    """Count parameters per top-level child module, plus ``total``."""
    counts: Dict[str, int] = {}
    for name, param in model.named_parameters():
        part = name.split('.')[0]
        counts[part] = counts.get(part, 0) + param.numel()
    counts['total'] = sum(p.numel() for p in model.parameters())
    return counts
