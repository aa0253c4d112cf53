"""
The policy model I/O contract, checked without any runtime (docs/model.md).

A backend describes the model it loaded as ``TensorSpec`` lists plus a metadata mapping;
``check_policy`` compares them with the contract and the configured action space and raises
``ContractError`` naming what was expected and what was found.
"""

from dataclasses import dataclass
import hashlib
import json
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .action_space import ActionSpace, ActionSpaceError

CONTRACT_VERSION = '1'
IMAGE_SIZE = (300, 300)
MAX_TEXT_TOKENS = 16
NUM_ACTION_TOKENS = 11
NUM_BINS = 256

# Metadata keys written by the exporter and read by the inference node.
META_CONTRACT = 'vla_ros.contract_version'
META_ACTION_SPACE = 'vla_ros.action_space'
META_IMAGE_SIZE = 'vla_ros.image_size'
META_TEXT_ENCODER = 'vla_ros.text_encoder'
META_TEXT_DIM = 'vla_ros.text_embedding_dim'
META_CONFIG = 'vla_ros.config'
META_WEIGHTS = 'vla_ros.weights_sha256'
META_TRAINED = 'vla_ros.trained'
# Size of the optional ``state`` input (the previous commanded 11-D target, see
# core/targets.py); absent or "0": the model takes image and instruction only.
META_STATE_DIM = 'vla_ros.state_dim'
STATE_INPUT = 'state'
STATE_DIM = 11
# Action chunks: how many consecutive steps the policy predicts per frame (absent or "1":
# one step, the logits [B, 11, 256]; k: [B, 11 k, 256], steps in time order).
META_CHUNK_STEPS = 'vla_ros.chunk_steps'
# A chunked model exported with its first steps only (`vla-ros export --keep-steps`): the
# steps its decoder was trained to predict (informational; META_CHUNK_STEPS is what it emits).
META_TRAINED_CHUNK_STEPS = 'vla_ros.trained_chunk_steps'
MAX_CHUNK_STEPS = 32

POLICY_INPUTS = ('image', 'text_embeddings', 'text_mask')
POLICY_OUTPUT = 'action_logits'
TEXT_INPUTS = ('input_ids', 'attention_mask')
TEXT_OUTPUT = 'token_embeddings'

Dim = Union[int, str, None]


class ContractError(ValueError):
    """A model that does not satisfy the vla_ros I/O contract."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type (numpy name) and shape (int, or str/None for dynamic) of a tensor."""

    name: str
    dtype: str
    shape: Tuple[Dim, ...]

    def describe(self) -> str:
        """Return e.g. ``image uint8 [B, 300, 300, 3]``."""
        dims = ', '.join('B' if not isinstance(d, int) else str(d) for d in self.shape)
        return f'{self.name} {self.dtype} [{dims}]'


def _expected_policy_inputs(text_dim: Optional[int], state_dim: int = 0
                            ) -> List[TensorSpec]:
    h, w = IMAGE_SIZE
    specs = [
        TensorSpec('image', 'uint8', ('B', h, w, 3)),
        TensorSpec('text_embeddings', 'float32', ('B', MAX_TEXT_TOKENS, text_dim)),
        TensorSpec('text_mask', 'float32', ('B', MAX_TEXT_TOKENS)),
    ]
    if state_dim:
        specs.append(TensorSpec(STATE_INPUT, 'float32', ('B', state_dim)))
    return specs


def _int_metadata(metadata: Dict[str, str], key: str, default: int) -> int:
    """Return an integer metadata value (``default`` when absent); ContractError if not one."""
    raw = metadata.get(key, str(default))
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ContractError(f'model metadata {key!r}: expected an integer, found '
                            f'{raw!r}') from None


def state_dim(metadata: Dict[str, str]) -> int:
    """Size of the model's ``state`` input (0: none); ContractError if not servable."""
    value = _int_metadata(metadata, META_STATE_DIM, 0)
    if value not in (0, STATE_DIM):
        raise ContractError(
            f'model metadata {META_STATE_DIM!r} is {value}: the nodes can only serve the '
            f'{STATE_DIM}-D previous commanded target as state (or no state input)')
    return value


def chunk_steps(metadata: Dict[str, str]) -> int:
    """Return the steps per frame the model predicts (1: single-step); ContractError if bad."""
    value = _int_metadata(metadata, META_CHUNK_STEPS, 1)
    if not 1 <= value <= MAX_CHUNK_STEPS:
        raise ContractError(f'model metadata {META_CHUNK_STEPS!r} is {value}: expected 1 to '
                            f'{MAX_CHUNK_STEPS} steps per frame')
    return value


def policy_input_names(metadata: Dict[str, str]) -> Tuple[str, ...]:
    """Input names of a policy in feed order (``state`` last when the model has one)."""
    return POLICY_INPUTS + ((STATE_INPUT,) if state_dim(metadata) else ())


def _shape_matches(expected: Sequence[Dim], found: Sequence[Dim]) -> bool:
    if len(expected) != len(found):
        return False
    for e, f in zip(expected, found):
        # A fixed expected size must be met by the same fixed size (or a dynamic axis);
        # an expected dynamic axis ('B' or None) accepts anything.
        if isinstance(e, int) and isinstance(f, int) and e != f:
            return False
    return True


def _check_specs(kind: str, expected: List[TensorSpec], found: List[TensorSpec]) -> None:
    by_name = {s.name: s for s in found}
    problems = []
    for spec in expected:
        got = by_name.get(spec.name)
        if got is None:
            problems.append(f'missing {kind} {spec.describe()}')
        elif got.dtype != spec.dtype or not _shape_matches(spec.shape, got.shape):
            problems.append(f'{kind} expected {spec.describe()}, found {got.describe()}')
    extra = sorted(set(by_name) - {s.name for s in expected})
    if extra:
        problems.append(f'unexpected {kind}s {extra}')
    if problems:
        raise ContractError(
            'model does not match the vla_ros I/O contract v' + CONTRACT_VERSION + ': '
            + '; '.join(problems) + '. Expected ' + kind + 's: '
            + ', '.join(s.describe() for s in expected) + '; found: '
            + ', '.join(s.describe() for s in found)
            + '. Re-export the model with `vla-ros export`.')


def file_sha256(path: str) -> str:
    """Return the SHA-256 of a file's bytes (model artifacts, manifests, engine cache keys)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def check_policy(inputs: List[TensorSpec], outputs: List[TensorSpec],
                 metadata: Dict[str, str], space: ActionSpace) -> Dict[str, str]:
    """Validate a loaded policy; return its metadata. Raises ContractError."""
    version = metadata.get(META_CONTRACT)
    if version != CONTRACT_VERSION:
        raise ContractError(
            f'model metadata {META_CONTRACT!r}: expected {CONTRACT_VERSION!r}, found '
            f'{version!r}. Models must be written by `vla-ros export` for this version.')
    text_dim = metadata.get(META_TEXT_DIM)
    try:
        text_dim_int = int(text_dim)
    except (TypeError, ValueError):
        raise ContractError(
            f'model metadata {META_TEXT_DIM!r}: expected an integer, found {text_dim!r}')
    _check_specs('input', _expected_policy_inputs(text_dim_int, state_dim(metadata)), inputs)
    _check_specs('output', [TensorSpec(POLICY_OUTPUT, 'float32',
                                       ('B', NUM_ACTION_TOKENS * chunk_steps(metadata),
                                        NUM_BINS))], outputs)
    size = metadata.get(META_IMAGE_SIZE)
    if size != f'{IMAGE_SIZE[0]},{IMAGE_SIZE[1]}':
        raise ContractError(
            f'model metadata {META_IMAGE_SIZE!r}: expected "300,300", found {size!r}')
    raw = metadata.get(META_ACTION_SPACE)
    if raw is None:
        raise ContractError(f'model metadata has no {META_ACTION_SPACE!r}; cannot check '
                            'that its action bounds match config/action_space.yaml')
    try:
        model_space = ActionSpace.from_dict(json.loads(raw))
    except (ValueError, ActionSpaceError) as exc:
        raise ContractError(f'model metadata {META_ACTION_SPACE!r} is malformed: {exc}')
    diffs = space.differences(model_space)
    if diffs:
        raise ContractError(
            'the model was exported with a different action space than the configured one: '
            + '; '.join(f'config vs model {d}' for d in diffs)
            + '. Fix config/action_space.yaml or re-export the model.')
    return dict(metadata)


def check_text_encoder(inputs: List[TensorSpec], outputs: List[TensorSpec],
                       metadata: Dict[str, str], policy_metadata: Dict[str, str]) -> int:
    """Validate a text encoder against the policy it feeds; return the embedding size."""
    dim = int(policy_metadata[META_TEXT_DIM])
    _check_specs('text encoder input', [TensorSpec(n, 'int64', ('B', MAX_TEXT_TOKENS))
                                        for n in TEXT_INPUTS], inputs)
    _check_specs('text encoder output',
                 [TensorSpec(TEXT_OUTPUT, 'float32', ('B', MAX_TEXT_TOKENS, dim))], outputs)
    want, got = policy_metadata.get(META_TEXT_ENCODER), metadata.get(META_TEXT_ENCODER)
    if want != got:
        raise ContractError(
            f'the policy was trained with text encoder {want!r} but the text encoder model '
            f'is {got!r}; point text_encoder_path at the matching export')
    return dim
