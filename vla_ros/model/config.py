"""
RT-1 model configurations: ``seed`` (the chapter's model) and ``tiny`` (same shape, small).

Each configuration is a frozen dataclass validated in ``__post_init__``; ``get_config`` is the
factory from name to configuration. The numbers that the I/O contract fixes (300x300 image,
16 text tokens, 11 action tokens of 256 bins) are defaults that every configuration shares.
"""

from dataclasses import dataclass, fields, replace
from typing import Dict, Tuple

from ..core import model_contract
from ..core.params import ConfigError

# all-MiniLM-L6-v2 hidden size: the text embeddings the policy consumes.
MINILM_DIM = 384


def _conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class RT1Config:
    """Hyper-parameters of the RT-1 network (ResNet -> TokenLearner -> encoder-decoder)."""

    name: str
    # ResNet backbone (bottleneck blocks, expansion 4, last stage dilated instead of strided).
    stem_width: int = 64
    stage_widths: Tuple[int, ...] = (64, 128, 256, 512)
    stage_blocks: Tuple[int, ...] = (3, 4, 6, 3)
    dilate_last_stage: bool = True
    # Max-pool after the stem (the ResNet default); off keeps twice the resolution.
    stem_pool: bool = True
    # Average-pool the 300x300 image by this factor inside the graph before the backbone
    # (3: the network sees 100x100); the contract's input stays 300x300 uint8.
    input_downsample: int = 1
    # FiLM: the instruction scales and shifts every backbone stage's output (RT-1's
    # FiLM-EfficientNet idea), so the visual tokens are already about the named object.
    film: bool = False
    # Append x/y coordinate channels to the feature map before the TokenLearner, so each
    # pooled token carries where its attention looked (a spatial soft-argmax for free).
    coord_features: bool = False
    # Size of the ``state`` input (the previous commanded 11-D target), 0 = no such input.
    state_dim: int = 0
    # TokenLearner: learned spatial attention maps, one per visual token.
    num_image_tokens: int = 81
    token_learner_hidden: int = 512
    # Transformer.
    d_model: int = 512
    num_heads: int = 8
    # The RT-1 reference transformer's feed_forward_size; the chapter gives no width.
    ffn_dim: int = 512
    encoder_layers: int = 8
    decoder_layers: int = 4
    dropout: float = 0.1
    # Fixed by the I/O contract.
    image_size: int = model_contract.IMAGE_SIZE[0]
    text_tokens: int = model_contract.MAX_TEXT_TOKENS
    text_dim: int = MINILM_DIM
    num_actions: int = model_contract.NUM_ACTION_TOKENS
    num_bins: int = model_contract.NUM_BINS
    # Action chunks: the decoder predicts this many consecutive steps per frame, 11 tokens
    # each (logits [B, 11 * chunk_steps, 256]); 1 is the single-step contract the nodes run.
    chunk_steps: int = 1
    # Seed of the random initialisation (exports without a checkpoint are reproducible).
    seed: int = 0

    def __post_init__(self):
        positive = ('stem_width', 'num_image_tokens', 'token_learner_hidden', 'd_model',
                    'num_heads', 'ffn_dim', 'encoder_layers', 'decoder_layers', 'image_size',
                    'text_tokens', 'text_dim', 'num_actions', 'num_bins', 'chunk_steps')
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f'config {self.name!r}: {key} must be a positive int, '
                                  f'found {value!r}')
        if len(self.stage_widths) != 4 or len(self.stage_blocks) != 4:
            raise ConfigError(
                f'config {self.name!r}: a ResNet-50-style backbone has 4 stages; found '
                f'stage_widths={self.stage_widths}, stage_blocks={self.stage_blocks}')
        if any(w <= 0 for w in self.stage_widths) or any(b <= 0 for b in self.stage_blocks):
            raise ConfigError(f'config {self.name!r}: stage widths and block counts must be '
                              f'positive, found {self.stage_widths} / {self.stage_blocks}')
        if self.d_model % self.num_heads:
            raise ConfigError(f'config {self.name!r}: d_model ({self.d_model}) must be a '
                              f'multiple of num_heads ({self.num_heads})')
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f'config {self.name!r}: dropout must be in [0, 1), found '
                              f'{self.dropout}')
        contract = {'image_size': model_contract.IMAGE_SIZE[0],
                    'text_tokens': model_contract.MAX_TEXT_TOKENS,
                    'num_actions': model_contract.NUM_ACTION_TOKENS,
                    'num_bins': model_contract.NUM_BINS}
        for key, want in contract.items():
            if getattr(self, key) != want:
                raise ConfigError(f'config {self.name!r}: {key} is fixed by the I/O contract '
                                  f'to {want}, found {getattr(self, key)}')
        if self.input_downsample < 1 or self.image_size % self.input_downsample:
            raise ConfigError(f'config {self.name!r}: input_downsample must divide '
                              f'{self.image_size}, found {self.input_downsample}')
        if self.state_dim < 0:
            raise ConfigError(f'config {self.name!r}: state_dim must be >= 0, found '
                              f'{self.state_dim}')
        if self.feature_map_size ** 2 < self.num_image_tokens:
            raise ConfigError(
                f'config {self.name!r}: {self.num_image_tokens} image tokens from a '
                f'{self.feature_map_size}x{self.feature_map_size} feature map')

    @property
    def feature_channels(self) -> int:
        """Channels of the backbone's feature map (bottleneck expansion 4)."""
        return self.stage_widths[-1] * 4

    @property
    def feature_map_size(self) -> int:
        """Side of the backbone's square feature map (19 for a 300x300 image)."""
        size = _conv_out(self.image_size // self.input_downsample, 7, 2, 3)  # stem conv
        if self.stem_pool:
            size = _conv_out(size, 3, 2, 1)  # max pool
        strided = 2 if self.dilate_last_stage else 3
        for _ in range(strided):  # stages 2.. downsample with a stride-2 3x3 conv
            size = _conv_out(size, 3, 2, 1)
        return size

    @property
    def network_image_size(self) -> int:
        """Side of the image the backbone sees (after the in-graph average pooling)."""
        return self.image_size // self.input_downsample

    @property
    def sequence_length(self) -> int:
        """Count encoder tokens: visual, text, then the state token (97 for RT-1)."""
        return self.num_image_tokens + self.text_tokens + (1 if self.state_dim else 0)

    @property
    def num_queries(self) -> int:
        """Count the decoder's action queries: 11 tokens per predicted step."""
        return self.num_actions * self.chunk_steps

    def to_dict(self) -> Dict:
        """Plain mapping (JSON-safe) of every field (``chunk_steps`` only when above 1)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == 'chunk_steps' and value == 1:
                continue  # single-step configs serialise as they did before chunks existed
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


# The chapter's RT-1: ResNet-50 (3, 4, 6, 3 bottlenecks), 81 tokens of 512, 8 + 4 layers.
SEED = RT1Config(name='seed')

# Same structure (dilated 4-stage ResNet to 19x19, TokenLearner to 81 tokens, 8-layer
# encoder over 97 tokens, 4-layer decoder, 11x256 logits), narrow enough for a CPU policy.
TINY = RT1Config(
    name='tiny', stem_width=16, stage_widths=(16, 24, 32, 64), stage_blocks=(1, 1, 1, 1),
    num_image_tokens=81, token_learner_hidden=64, d_model=128, num_heads=4, ffn_dim=256,
    encoder_layers=8, decoder_layers=4)

# The shipped policy: RT-1's structure (ResNet with FiLM -> TokenLearner -> transformer ->
# 11 x 256 logits) sized for CPU training (~340 samples/s on 2 cores with bf16) and a 5 Hz
# CPU policy. The network sees the image at 100x100 (average-pooled in the graph), a 7x7
# map with coordinate channels, 24 visual tokens, the instruction, and the previous
# commanded target (``state``) as one more token.
NANO = RT1Config(
    name='nano', stem_width=24, stage_widths=(16, 24, 32, 48), stage_blocks=(1, 1, 1, 1),
    stem_pool=True, input_downsample=3, film=True, coord_features=True, state_dim=11,
    num_image_tokens=24, token_learner_hidden=64, d_model=128, num_heads=4, ffn_dim=256,
    encoder_layers=3, decoder_layers=2, dropout=0.0)

# The chapter's inputs (image + instruction only) at nano's size: the baseline of the
# representation comparison in docs/model-card.md.
NANO_NOSTATE = replace(NANO, name='nano_nostate', state_dim=0)

# nano with more pixels on the block: the network sees the image at 150x150 (a 10x10
# feature map) or at the full 300x300 (19x19). At 100 px the named block is ~2.4 px wide
# (1 px ~ 1.7 cm); the block-position probe (``vla-ros probe-block``) measures what each
# resolution can localise.
NANO_150 = replace(NANO, name='nano_150', input_downsample=2)
NANO_300 = replace(NANO, name='nano_300', input_downsample=1)

CONFIGS: Dict[str, RT1Config] = {
    c.name: c for c in (SEED, TINY, NANO, NANO_NOSTATE, NANO_150, NANO_300)}


def get_config(name: str) -> RT1Config:
    """Return the configuration called ``name`` (one of ``CONFIGS``)."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(f'unknown RT-1 config {name!r}; expected one of '
                          f'{sorted(CONFIGS)}') from None
