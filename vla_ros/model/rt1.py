"""
The RT-1 policy network in PyTorch, as the chapter describes it.

uint8 image [B, 300, 300, 3] -> normalised inside the graph -> ResNet (bottleneck stages, the
last one dilated so a 300x300 image gives a 19x19 map) -> TokenLearner (81 learned spatial
attention maps, each pooling the map into one token, projected to d_model) -> 16 text token
embeddings projected to d_model -> transformer encoder over the 97 tokens -> transformer
decoder -> logits [B, 11, 256].

Two decoding modes share the weights:

* ``single``: 11 learned action queries decoded in one pass (the export default);
* ``autoregressive``: greedy, one action token per step, each step's decoder input being the
  action queries plus the embeddings of the tokens already chosen, under a causal mask.

Attention is written with plain matmuls so that the ONNX graph is simple for every runtime,
and masks use -1e4 rather than -inf so an FP16 TensorRT engine cannot produce NaN.

Length (over 300 lines): the whole RT-1 network in one file (as model codebases do: a model
is read top to bottom in one place).
"""

import dataclasses
import hashlib
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from .config import RT1Config
from ..core.model_contract import NUM_ACTION_TOKENS as NUM_QUERIES_PER_STEP

DECODING_MODES = ('single', 'autoregressive')

# ImageNet statistics: the backbone is a ResNet and would be trained (or fine-tuned) from
# images normalised this way.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
MASK_VALUE = -1.0e4
# Scale of the last BatchNorm in each residual branch at initialisation. With BatchNorm's
# identity running statistics an untrained branch keeps the variance of its input, so each
# residual add would double it (16 blocks: 2**16); 0.5 keeps random-weight features in a
# range where FP32/INT8 comparisons mean something.
RESIDUAL_GAMMA = 0.5


class ImageNormalizer(nn.Module):
    """
    uint8 NHWC RGB -> float NCHW, scaled and shifted with the ImageNet statistics.

    With ``downsample`` > 1 a full-size image (``full_size`` pixels) is average-pooled by
    that factor; an image that already has the network's size (training batches pooled
    once on the way into the dataset cache) passes through.
    """

    def __init__(self, downsample: int = 1, full_size: int = 300):
        super().__init__()
        self.downsample = int(downsample)
        self.full_size = int(full_size)
        std = torch.tensor(IMAGE_STD)
        scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
        bias = (-torch.tensor(IMAGE_MEAN) / std).view(1, 3, 1, 1)
        self.register_buffer('scale', scale, persistent=False)
        self.register_buffer('bias', bias, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise a uint8 image batch [B, H, W, 3]."""
        # Transpose while still uint8 (a quarter of the bytes of float32).
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        if self.downsample > 1 and image.shape[1] == self.full_size:
            x = F.avg_pool2d(x, self.downsample)
        return x * self.scale + self.bias


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4); stride on the 3x3 (v1.5)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, dilation: int):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet with four bottleneck stages; the last stage dilated (output stride 16)."""

    def __init__(self, config: RT1Config):
        super().__init__()
        stem = [nn.Conv2d(3, config.stem_width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(config.stem_width), nn.ReLU(inplace=True)]
        if config.stem_pool:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        stages = []
        in_channels = config.stem_width
        for index, (width, blocks) in enumerate(zip(config.stage_widths, config.stage_blocks)):
            last = index == len(config.stage_widths) - 1
            dilated = last and config.dilate_last_stage
            # Dilation instead of stride keeps 19x19 (RT-1 wants 361 positions to attend
            # over) while the receptive field still grows as in a plain ResNet-50.
            stride = 1 if index == 0 or dilated else 2
            dilation = 2 if dilated else 1
            layers = []
            for block in range(blocks):
                layers.append(Bottleneck(in_channels, width, stride if block == 0 else 1,
                                         dilation))
                in_channels = width * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_channels
        self.stage_channels = [w * Bottleneck.expansion for w in config.stage_widths]

    def forward(self, x: torch.Tensor, film: Optional[List[torch.Tensor]] = None
                ) -> torch.Tensor:
        """Return the feature map [B, C, 19, 19] of a normalised image [B, 3, 300, 300]."""
        x = self.stem(x)
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if film is not None:
                # FiLM: (1 + gamma) * x + beta per channel, from the instruction.
                gamma, beta = film[index].chunk(2, dim=1)
                x = x * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return x


class TokenLearner(nn.Module):
    """
    Learned spatial attention: each of N maps pools the feature map into one token.

    LayerNorm -> per-position MLP -> N attention logits per position -> softmax over the
    positions -> weighted sums of the features -> linear projection to ``d_model``.
    """

    def __init__(self, channels: int, hidden: int, num_tokens: int, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attention = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(),
                                       nn.Linear(hidden, num_tokens))
        self.project = nn.Linear(channels, d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return tokens [B, N, d_model] from a feature map [B, C, H, W]."""
        x = self.norm(features.flatten(2).transpose(1, 2))
        weights = torch.softmax(self.attention(x).transpose(1, 2), dim=-1)
        # Pool first, project after: N=81 tokens are far fewer than H*W=361 positions.
        return self.project(torch.matmul(weights, x))


class Attention(nn.Module):
    """Multi-head attention with an additive bias (mask) [B or 1, 1, Lq, Lk]."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def key_value(self, memory: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return per-head keys and values of ``memory`` (computed once per forward)."""
        return self._heads(self.key(memory)), self._heads(self.value(memory))

    def forward(self, x: torch.Tensor, kv: Tuple[torch.Tensor, torch.Tensor],
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        """Attend from ``x`` [B, Lq, d] to precomputed keys/values."""
        q = self._heads(self.query(x)) * (1.0 / math.sqrt(self.head_dim))
        k, v = kv
        logits = torch.matmul(q, k.transpose(-1, -2))
        if bias is not None:
            logits = logits + bias
        weights = self.dropout(torch.softmax(logits, dim=-1))
        out = torch.matmul(weights, v).transpose(1, 2)
        return self.out(out.reshape(x.shape[0], x.shape[1], -1))


class FeedForward(nn.Sequential):
    """Position-wise MLP (GELU)."""

    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, d_model))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer encoder layer."""

    def __init__(self, config: RT1Config):
        super().__init__()
        d = config.d_model
        self.norm1 = nn.LayerNorm(d)
        self.attention = Attention(d, config.num_heads, config.dropout)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, config.ffn_dim, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Apply self-attention over all tokens (text padding masked by ``bias``)."""
        h = self.norm1(x)
        x = x + self.dropout(self.attention(h, self.attention.key_value(h), bias))
        return x + self.dropout(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-LayerNorm transformer decoder layer: self-attention, cross-attention, MLP."""

    def __init__(self, config: RT1Config):
        super().__init__()
        d = config.d_model
        self.norm1 = nn.LayerNorm(d)
        self.self_attention = Attention(d, config.num_heads, config.dropout)
        self.norm2 = nn.LayerNorm(d)
        self.cross_attention = Attention(d, config.num_heads, config.dropout)
        self.norm3 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, config.ffn_dim, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, memory_kv: Tuple[torch.Tensor, torch.Tensor],
                self_bias: Optional[torch.Tensor], memory_bias: torch.Tensor) -> torch.Tensor:
        """Decode ``x`` [B, L, d] against precomputed encoder keys/values."""
        h = self.norm1(x)
        x = x + self.dropout(self.self_attention(h, self.self_attention.key_value(h),
                                                 self_bias))
        x = x + self.dropout(self.cross_attention(self.norm2(x), memory_kv, memory_bias))
        return x + self.dropout(self.ffn(self.norm3(x)))


class RT1Policy(nn.Module):
    """
    RT-1: image + instruction token embeddings -> action logits [B, 11, 256].

    With ``config.chunk_steps`` k > 1 the decoder has 11 k queries and the logits are
    [B, 11 k, 256]: k consecutive steps, 11 tokens each, in time order (action chunks).
    """

    def __init__(self, config: RT1Config, decoding: str = 'single'):
        super().__init__()
        if decoding not in DECODING_MODES:
            raise ValueError(f'decoding must be one of {DECODING_MODES}, found {decoding!r}')
        self.config = config
        self.decoding = decoding
        # Steps of a chunk the forward pass returns (None: all). A chunked model exported with
        # fewer (``vla-ros export --keep-steps``) runs under the single-step contract; the
        # slice is of the logits, so the kept steps equal the full model's.
        self.output_steps: Optional[int] = None
        d = config.d_model
        self.normalizer = ImageNormalizer(config.input_downsample, config.image_size)
        self.backbone = ResNetBackbone(config)
        extra = 2 if config.coord_features else 0
        self.token_learner = TokenLearner(self.backbone.out_channels + extra,
                                          config.token_learner_hidden,
                                          config.num_image_tokens, d)
        self.text_projection = nn.Linear(config.text_dim, d)
        # One FiLM generator per backbone stage (zero-initialised: identity at start).
        self.film = (nn.ModuleList(nn.Linear(d, 2 * c) for c in self.backbone.stage_channels)
                     if config.film else None)
        self.state_projection = (nn.Sequential(nn.Linear(config.state_dim, d), nn.GELU(),
                                               nn.Linear(d, d))
                                 if config.state_dim else None)
        self.position = nn.Parameter(torch.zeros(1, config.sequence_length, d))
        self.encoder = nn.ModuleList(EncoderLayer(config)
                                     for _ in range(config.encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.action_queries = nn.Parameter(torch.zeros(1, config.num_queries, d))
        # Embeddings of already chosen action tokens (autoregressive decoding only).
        self.action_embedding = nn.Embedding(config.num_bins, d)
        self.decoder = nn.ModuleList(DecoderLayer(config)
                                     for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.num_bins)
        n = config.num_queries
        causal = torch.full((n, n), MASK_VALUE).triu(1)
        self.register_buffer('causal_bias', causal.view(1, 1, n, n), persistent=False)
        self.reset_parameters(config.seed)

    # -- initialisation ----------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Seeded initialisation: the same seed gives the same bytes on every machine."""
        gen = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu',
                                        generator=gen)
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04,
                                      generator=gen)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02, generator=gen)
        for module in self.modules():
            if isinstance(module, Bottleneck):
                module.bn3.weight.fill_(RESIDUAL_GAMMA)
        if self.film is not None:
            for layer in self.film:
                nn.init.zeros_(layer.weight)
        nn.init.normal_(self.position, std=0.02, generator=gen)
        # Unit scale, like normalised embeddings: with a pre-LayerNorm decoder, queries of
        # std 0.02 would vanish next to the attention outputs and all 11 slots would agree.
        nn.init.normal_(self.action_queries, std=1.0, generator=gen)

    # -- stages -------------------------------------------------------------------------
    def image_tokens(self, image: torch.Tensor,
                     text: Optional[torch.Tensor] = None,
                     text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return the visual tokens [B, N, d] of a uint8 image batch [B, 300, 300, 3]."""
        film = None
        if self.film is not None:
            # Masked mean of the projected instruction tokens conditions every stage.
            weights = text_mask / text_mask.sum(dim=1, keepdim=True).clamp(min=1.0)
            context = torch.matmul(weights[:, None, :], text)[:, 0]
            film = [layer(context) for layer in self.film]
        features = self.backbone(self.normalizer(image), film)
        if self.config.coord_features:
            b, _, h, w = features.shape
            ys = torch.linspace(-1.0, 1.0, h, dtype=features.dtype, device=features.device)
            xs = torch.linspace(-1.0, 1.0, w, dtype=features.dtype, device=features.device)
            grid = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])
            features = torch.cat([features, grid[None].expand(b, -1, -1, -1)], dim=1)
        return self.token_learner(features)

    def encode(self, image: torch.Tensor, text_embeddings: torch.Tensor,
               text_mask: torch.Tensor, state: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return the encoder output [B, L, d] and its additive key bias [B, 1, 1, L]."""
        memory, bias, _ = self.encode_with_vision(image, text_embeddings, text_mask, state)
        return memory, bias

    def encode_with_vision(self, image: torch.Tensor, text_embeddings: torch.Tensor,
                           text_mask: torch.Tensor, state: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``encode``'s outputs and the visual tokens [B, N, d] it started from."""
        text = self.text_projection(text_embeddings)
        vision = self.image_tokens(image, text, text_mask)
        parts = [vision, text]
        valid = [torch.ones_like(text_mask[:, :1]).expand(-1, vision.shape[1]), text_mask]
        if self.state_projection is not None:
            if state is None:
                raise ValueError(f'config {self.config.name!r} needs the state input '
                                 f'[B, {self.config.state_dim}]')
            parts.append(self.state_projection(state)[:, None, :])
            valid.append(torch.ones_like(text_mask[:, :1]))
        x = torch.cat(parts, dim=1) + self.position
        # Visual and state tokens are always valid; padded text tokens get MASK_VALUE.
        valid = torch.cat(valid, dim=1)
        bias = ((1.0 - valid) * MASK_VALUE)[:, None, None, :]
        for layer in self.encoder:
            x = layer(x, bias)
        return self.encoder_norm(x), bias, vision

    def _decode(self, x: torch.Tensor, memory_kv, self_bias, memory_bias) -> torch.Tensor:
        for layer, kv in zip(self.decoder, memory_kv):
            x = layer(x, kv, self_bias, memory_bias)
        return self.head(self.decoder_norm(x))

    def _memory_kv(self, memory: torch.Tensor):
        return [layer.cross_attention.key_value(memory) for layer in self.decoder]

    def decode_single(self, memory: torch.Tensor, memory_bias: torch.Tensor) -> torch.Tensor:
        """Decode all 11 action tokens in one pass from the queries: logits [B, 11, 256]."""
        queries = self.action_queries.expand(memory.shape[0], -1, -1)
        return self._decode(queries, self._memory_kv(memory), None, memory_bias)

    def _shifted_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        # Position i sees the query i plus the embedding of token i-1 (nothing for i = 0).
        b, n = tokens.shape
        queries = self.action_queries[:, :n + 1].expand(b, -1, -1)
        if n == 0:
            return queries
        previous = self.action_embedding(tokens)
        pad = torch.zeros_like(previous[:, :1])
        return queries + torch.cat([pad, previous], dim=1)

    def decode_teacher_forced(self, memory: torch.Tensor, memory_bias: torch.Tensor,
                              tokens: torch.Tensor) -> torch.Tensor:
        """Return autoregressive logits for given tokens [B, 11] in one causal pass (training)."""
        x = self._shifted_inputs(tokens[:, :-1])
        return self._decode(x, self._memory_kv(memory), self.causal_bias, memory_bias)

    def decode_autoregressive(self, memory: torch.Tensor,
                              memory_bias: torch.Tensor) -> torch.Tensor:
        """Decode greedily, one token per step: logits [B, 11, 256] of the chosen path."""
        memory_kv = self._memory_kv(memory)
        tokens = memory.new_zeros((memory.shape[0], 0), dtype=torch.long)
        steps = []
        for i in range(self.config.num_queries):
            x = self._shifted_inputs(tokens)
            bias = self.causal_bias[:, :, :i + 1, :i + 1]
            logits = self._decode(x, memory_kv, bias, memory_bias)[:, -1:]
            steps.append(logits)
            tokens = torch.cat([tokens, logits.argmax(dim=-1)], dim=1)
        return torch.cat(steps, dim=1)

    def forward(self, image: torch.Tensor, text_embeddings: torch.Tensor,
                text_mask: torch.Tensor, state: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return action logits [B, 11, 256] (the ONNX graph's ``action_logits``)."""
        memory, bias = self.encode(image, text_embeddings, text_mask, state)
        if self.decoding == 'autoregressive':
            logits = self.decode_autoregressive(memory, bias)
        else:
            logits = self.decode_single(memory, bias)
        if self.output_steps is not None:
            logits = logits[:, :self.output_steps * NUM_QUERIES_PER_STEP]
        return logits


def tile_action_queries(state_dict: Dict[str, torch.Tensor], chunk_steps: int
                        ) -> Dict[str, torch.Tensor]:
    """
    Fit a single-step checkpoint to a chunked model: every step starts from its 11 queries.

    The rest of the network is shared by all steps, so a chunked model can be initialised
    from (fine-tuned after) a single-step one; other checkpoints are returned unchanged.
    """
    queries = state_dict.get('action_queries')
    if queries is None or chunk_steps == 1 or queries.shape[1] != NUM_QUERIES_PER_STEP:
        return state_dict
    return dict(state_dict, action_queries=queries.repeat(1, chunk_steps, 1))


def chunk_steps_of(state_dict: Dict[str, torch.Tensor]) -> int:
    """Return how many steps per frame a checkpoint's decoder predicts (1: single-step)."""
    queries = state_dict.get('action_queries')
    if queries is None:
        return 1
    steps, rest = divmod(int(queries.shape[1]), NUM_QUERIES_PER_STEP)
    if rest or steps < 1:
        raise ValueError(f'checkpoint has {queries.shape[1]} action queries: not a multiple '
                         f'of {NUM_QUERIES_PER_STEP}')
    return steps


def build_policy(config: RT1Config, decoding: str = 'single',
                 state_dict: Optional[Dict[str, torch.Tensor]] = None,
                 output_steps: Optional[int] = None) -> RT1Policy:
    """
    Create the policy in eval mode; seeded random weights unless ``state_dict`` is given.

    The steps per frame follow ``state_dict`` when it is given (a chunked checkpoint has
    11 k action queries; ValueError when they are not a multiple of 11).
    ``output_steps``: of a chunked model's steps, return only the first ones (ValueError
    unless 1 <= output_steps <= the model's steps).
    """
    if state_dict is not None and chunk_steps_of(state_dict) != config.chunk_steps:
        config = dataclasses.replace(config, chunk_steps=chunk_steps_of(state_dict))
    model = RT1Policy(config, decoding)
    if output_steps is not None:
        if not 1 <= int(output_steps) <= config.chunk_steps:
            raise ValueError(f'output_steps must be 1..{config.chunk_steps} (the steps the '
                             f'model predicts), found {output_steps}')
        model.output_steps = int(output_steps)
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(
                f'checkpoint does not fit config {config.name!r}: missing {sorted(missing)}, '
                f'unexpected {sorted(unexpected)}')
    return model.eval()


def weights_sha256(model: nn.Module) -> str:
    """Hash the state dict with SHA-256 (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f'{name}|{t.dtype}|{tuple(t.shape)}|'.encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()
