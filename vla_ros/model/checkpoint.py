"""Reading trained weights: a .safetensors file or a torch checkpoint, as a state dict."""

import os
from typing import Dict


class CheckpointError(ValueError):
    """A checkpoint that is missing or holds no state dict."""


def load_checkpoint(path: str) -> Dict:
    """Load a state dict from a .safetensors file or a torch checkpoint (tensors only)."""
    import torch
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path!r}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    data = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model'):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise CheckpointError(f'checkpoint {path!r}: expected a state dict, found {type(data)}')
    return data
