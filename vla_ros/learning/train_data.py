"""
Training data: image caches, instruction embeddings, frames in memory, relabelling, batches.

Images are decoded once into a cache at the network's resolution (the same average pooling
the exported graph applies); on CUDA the cache moves to the GPU and batches (random shifts
included) are cut there.
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import dataset as ds
from . import instructions
from .progress import Progress


def pool_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool uint8 [H, W, 3] by ``factor`` (as the exported graph does), rounded."""
    if factor == 1:
        return image
    h, w, c = image.shape
    x = image.reshape(h // factor, factor, w // factor, factor, c).astype(np.float32)
    return np.rint(x.mean(axis=(1, 3))).astype(np.uint8)


def cache_path(root: str, factor: int) -> str:
    """Where the frames of ``root`` pooled by ``factor`` are cached (keyed by its content)."""
    return os.path.join(root, 'cache', f'images_x{factor}_{ds.dataset_id(root)}.npy')


def write_cache(root: str, factor: int, frames: np.ndarray):
    """Save pooled frames (all of the dataset's, in index order) as its cache."""
    path = cache_path(root, factor)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path + '.tmp.npy', frames)
    os.replace(path + '.tmp.npy', path)


def image_cache(root: str, factor: int, episodes: List[Dict], quiet: bool = False
                ) -> np.ndarray:
    """Frames of ``root`` pooled by ``factor``, cached as .npy beside the dataset."""
    total = max(e['dataset_to_index'] for e in episodes)
    path = cache_path(root, factor)
    if os.path.exists(path):
        cached = np.load(path, mmap_mode='r')
        if len(cached) == total:
            return np.asarray(cached)
    size = 300 // factor
    out = np.zeros((total, size, size, 3), np.uint8)
    progress = Progress(total, f'decode {os.path.basename(root)}', quiet=quiet)
    for e, i, frame in ds.iter_episode_images(root, episodes):
        out[e['dataset_from_index'] + i] = pool_image(frame, factor)
        progress.step()
    progress.close()
    write_cache(root, factor, out)
    return out


class TextTable:
    """
    Text embeddings of every phrasing, computed once with the torch MiniLM.

    With ``path``: read from that file when it exists (every phrasing must be in it), else
    computed for every training phrasing of every task and written there.
    """

    def __init__(self, phrasings: Sequence[str], path: Optional[str] = None):
        self.index = {p: i for i, p in enumerate(phrasings)}
        if path and os.path.exists(path):
            table = read_text_embeddings(path)
            missing = [p for p in phrasings if p not in table]
            if missing:
                raise ValueError(f'{path} lacks the embeddings of {len(missing)} phrasing(s), '
                                 f'e.g. {missing[0]!r}; write it again where the MiniLM '
                                 'package is installed')
            self.embeddings, self.masks = _stack([table[p] for p in phrasings])
            return
        import torch
        from ..model import text_encoder as te
        encoder = te.load_text_encoder().eval()
        tokenizer = te.load_tokenizer()
        every = sorted(set(phrasings) | set(_every_training_phrasing())) if path else phrasings
        table = {}
        with torch.no_grad():
            for text in every:
                ids, mask = te.tokenize(tokenizer, text)
                table[text] = (encoder(ids, mask)[0], mask[0].float())
        self.embeddings, self.masks = _stack([table[p] for p in phrasings])
        if path:
            write_text_embeddings(path, table, te.encoder_id())


def _stack(pairs):
    import torch
    return torch.stack([e for e, _ in pairs]), torch.stack([m for _, m in pairs])


def _every_training_phrasing() -> List[str]:
    from ..sim.tasks import make_task, TASK_NAMES
    colours = {t: getattr(make_task(t), 'colours', ()) for t in TASK_NAMES}
    return instructions.all_training_phrasings(TASK_NAMES, colours)


def write_text_embeddings(path: str, table: Dict, encoder: str):
    """Save {phrasing: (embeddings [16, 384], mask [16])} with the encoder's identity."""
    import torch
    from safetensors.torch import save_file
    texts = sorted(table)
    tensors = {'embeddings': torch.stack([table[t][0] for t in texts]).contiguous(),
               'masks': torch.stack([table[t][1] for t in texts]).contiguous()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata={'phrasings': json.dumps(texts), 'encoder': encoder})


def read_text_embeddings(path: str) -> Dict:
    """Read what ``write_text_embeddings`` saved: {phrasing: (embeddings, mask)}."""
    from safetensors import safe_open
    with safe_open(path, 'pt') as stream:
        texts = json.loads(stream.metadata()['phrasings'])
        embs, masks = stream.get_tensor('embeddings'), stream.get_tensor('masks')
    return {t: (embs[i], masks[i]) for i, t in enumerate(texts)}


def target_slots() -> Tuple[str, ...]:
    """Return the objects an instruction can name, by colour (blocks, then markers)."""
    from ..sim.tasks import BLOCK_COLOURS, MARKER_COLOURS
    return tuple(BLOCK_COLOURS) + tuple(MARKER_COLOURS)


def target_slot(colour: str) -> int:
    """Index of the named object's colour in ``target_slots()``; -1 when none is named."""
    slots = target_slots()
    return slots.index(colour) if colour in slots else -1


@dataclasses.dataclass
class Data:
    """All frames of the training datasets in memory."""

    images: np.ndarray       # uint8 [N, s, s, 3] (a torch tensor once moved to a GPU)
    state: np.ndarray        # float32 [N, 11]
    tokens: np.ndarray       # int64 [N, 11] (chunked training: [N, 11 k], steps in order)
    target: np.ndarray       # float32 [N, 4]: named object x, y, z (base frame), valid
    episode: np.ndarray      # int64 [N] (global over datasets)
    choices: List[List[int]]  # per global episode: phrasing indices
    identity: Dict[str, str]
    # int64 [N]: which object ``target`` is, an index into ``target_slots()`` (-1: none named)
    target_slot: np.ndarray
    # bool [N]: the frame comes from a learner-driven (DAgger) dataset
    learner: Optional[np.ndarray] = None
    # float32 [N, 4]: where the named block must go (the bowl of a place episode), x, y, z
    # in the base frame, valid; ``episode_goals``
    goal: Optional[np.ndarray] = None


def episode_goals(episodes: List[Dict], state: np.ndarray) -> np.ndarray:
    """
    Return each frame's goal position [x, y, z, valid] (base frame), from its episode.

    A simulated place episode's bowl is drawn from its (task, seed) (``draw_scene``; the bowl
    never moves). The base starts at the world origin, so the bowl's world position is its
    position in the base frame for as long as the base has not been driven: an episode
    whose state shows a base command anywhere gets no goal. Other tasks, and episodes
    without a seed (a robot's bag), get none.
    """
    from ..sim.tasks import draw_scene
    goal = np.zeros((len(state), 4), np.float32)
    for e in episodes:
        if e.get('task') != 'place_in_bowl' or e.get('seed') is None:
            continue
        lo, hi = e['dataset_from_index'], e['dataset_to_index']
        if np.any(state[lo:hi, 7:10] != 0.0):
            continue
        goal[lo:hi, :3] = draw_scene(e['task'], int(e['seed'])).bowl
        goal[lo:hi, 3] = 1.0
    return goal


def load_data(roots: Sequence[str], factor: int, quiet: bool = False,
              action_space_file: str = '') -> Tuple[Data, List[str], Dict]:
    """
    Load datasets; return data, phrasings and the action space of their labels.

    Without ``action_space_file`` every dataset must have been recorded in the same space.
    With it, each dataset's labels are brought into that space on their own (``relabel``;
    none when recorded in it), so joint-delta expert data and DAgger data recorded in tool
    deltas train together.
    """
    images, state, tokens, target, episode, choices, goal = [], [], [], [], [], [], []
    learner: List[np.ndarray] = []
    episode_slot: List[int] = []
    phrasings: Dict[str, int] = {}
    identity, space = {}, None
    offset = 0
    for root in roots:
        loaded = ds.load(root)
        meta_space = loaded.info.get('vla_ros.action_space')
        n = loaded.episodes[-1]['dataset_to_index'] if loaded.episodes else 0
        cols = loaded.columns
        root_state = np.asarray(cols[ds.STATE_KEY][:n], np.float32)
        root_tokens = np.asarray(cols[ds.TOKENS_KEY][:n], np.int64)
        if action_space_file:
            root_tokens, meta_space = relabel_tokens(root_tokens, root_state, meta_space,
                                                     action_space_file)
        if space is None:
            space = meta_space
        elif meta_space != space:
            raise ValueError(f'{root} was recorded in a different action space than '
                             f'{roots[0]} (train with --action-space to bring both into one)')
        identity[os.path.basename(os.path.normpath(root))] = ds.dataset_id(root)
        images.append(image_cache(root, factor, loaded.episodes, quiet))
        state.append(root_state)
        tokens.append(root_tokens)
        target.append(np.asarray(cols[ds.TARGET_KEY][:n], np.float32) if ds.TARGET_KEY in cols
                      else np.zeros((n, 4), np.float32))
        episode.append(np.asarray(cols['episode_index'][:n], np.int64) + offset)
        goal.append(episode_goals(loaded.episodes, root_state))
        learner.append(np.full(n, loaded.info.get('vla_ros.source') == 'dagger'))
        for e in loaded.episodes:
            params = {'colour': e['colour'], 'direction': e['direction'], 'close': e['close']}
            params = {k: v for k, v in params.items() if v != ''}
            if e.get('task') in instructions.TRAIN:
                options = instructions.training_phrasings(e['task'], params)
            else:  # a robot's own task (bag without sim status): its recorded instruction
                options = list(e['tasks'])
            choices.append([phrasings.setdefault(p, len(phrasings)) for p in options])
            episode_slot.append(target_slot(params.get('colour', '')))
        offset += len(loaded.episodes)
    episodes = np.concatenate(episode)
    data = Data(np.concatenate(images), np.concatenate(state), np.concatenate(tokens),
                np.concatenate(target), episodes, choices, identity,
                np.asarray(episode_slot, np.int64)[episodes], np.concatenate(learner),
                np.concatenate(goal))
    return data, sorted(phrasings, key=phrasings.get), space


# An arm label within this fraction of its dimension's half-range counts as "no motion".
IDLE_FRACTION = 0.025


def idle_frames(data: Data, space_dict: Dict) -> np.ndarray:
    """
    Return which frames are idle: their label leaves the robot where it is.

    Idle: every arm delta within ``IDLE_FRACTION`` of its half-range of zero (relative arm
    spaces only; an absolute target always says where to be), base velocity zero and the
    gripper label the same as the previous commanded gripper (the state's last value). A
    scripted expert's waits (settling at the pre-grasp pose, the end of an episode) are such
    frames; a policy that predicts one in a state it cannot tell from the wait's sees the
    same image next step and waits for ever.
    """
    from ..core.action_space import ActionSpace
    return idle_labels(data.tokens, data.state[:, 10], ActionSpace.from_dict(space_dict))


def idle_labels(tokens: np.ndarray, previous_gripper: np.ndarray, space) -> np.ndarray:
    """Return which rows of ``tokens`` (step now first) are idle (``idle_frames``)."""
    from ..core.action_space import ActionTokenizer
    if not space.relative_arm:
        return np.zeros(len(tokens), bool)
    values = ActionTokenizer(space).detokenize(tokens[:, :len(space.low)])  # step now
    half = (space.high - space.low) / 2.0
    arm = np.all(np.abs(values[:, :7]) <= IDLE_FRACTION * half[:7], axis=1)
    base = np.all(values[:, 7:10] == 0.0, axis=1)
    gripper = values[:, 10] == previous_gripper
    return arm & base & gripper


def relabel(data: Data, recorded: Dict, target_file: str) -> Dict:
    """Re-tokenize ``data``'s labels in another arm representation (``relabel_tokens``)."""
    data.tokens, space = relabel_tokens(data.tokens, data.state, recorded, target_file)
    return space


def relabel_tokens(tokens: np.ndarray, state: np.ndarray, recorded: Dict, target_file: str
                   ) -> Tuple[np.ndarray, Dict]:
    """
    Re-tokenize arm labels in another arm representation; return them and its action space.

    Absolute joint targets are rebuilt from the recorded labels and the previous commanded
    target (the state input); a tool-delta space gets the tool motion between the two by
    forward kinematics (``core/kinematics.py``). Labels recorded in the target space are
    returned unchanged.
    """
    from ..core.action_space import ActionSpace, ActionTokenizer
    source = ActionTokenizer(ActionSpace.from_dict(recorded))
    target_space = ActionSpace.from_yaml(target_file)
    if source.space.identity == target_space.identity:
        return tokens, target_space.to_dict()
    target = ActionTokenizer(target_space)
    values = source.detokenize(tokens)
    if source.space.tool_arm:
        raise ValueError('datasets recorded in tool deltas cannot be relabelled to another '
                         'space (record in joint deltas)')
    if source.space.relative_arm:
        values[:, :7] += state[:, :7]
    if target_space.tool_arm:
        from ..core.kinematics import default_kinematics
        kinematics = default_kinematics()
        for i in range(len(values)):
            values[i] = target_space.relative_labels(values[i], state[i, :7], kinematics)
    elif target_space.relative_arm:
        values[:, :7] -= state[:, :7]
    return target.tokenize(values).astype(np.int64), target_space.to_dict()


def split_episodes(num_episodes: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation episodes (by episode, deterministic)."""
    rng = np.random.default_rng(seed + 7919)
    return rng.random(num_episodes) < fraction


def _shifted_on_device(images, idx: np.ndarray, rng: np.random.Generator, shift: int):
    """Cut the same random shifts (edge-padded crops) from a GPU-resident image tensor."""
    import torch
    device = images.device
    imgs = images[torch.from_numpy(idx).to(device)]
    if shift <= 0:
        return imgs
    b, h, w, _ = imgs.shape
    dy = torch.from_numpy(rng.integers(0, 2 * shift + 1, size=b)).to(device)
    dx = torch.from_numpy(rng.integers(0, 2 * shift + 1, size=b)).to(device)
    # Edge padding = clamping the source row / column of every output pixel.
    rows = (dy[:, None] + torch.arange(h, device=device)[None] - shift).clamp(0, h - 1)
    cols = (dx[:, None] + torch.arange(w, device=device)[None] - shift).clamp(0, w - 1)
    batch = torch.arange(b, device=device)[:, None, None]
    return imgs[batch, rows[:, :, None], cols[:, None, :]]


def _batch(data: Data, idx: np.ndarray, text: TextTable, rng: np.random.Generator,
           shift: int, device):
    import torch
    if isinstance(data.images, torch.Tensor):
        imgs = _shifted_on_device(data.images, idx, rng, shift)
    else:
        imgs = data.images[idx]
        if shift > 0:
            b, h, w, _ = imgs.shape
            padded = np.pad(imgs, ((0, 0), (shift, shift), (shift, shift), (0, 0)),
                            mode='edge')
            dy = rng.integers(0, 2 * shift + 1, size=b)
            dx = rng.integers(0, 2 * shift + 1, size=b)
            imgs = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
        imgs = torch.from_numpy(np.ascontiguousarray(imgs)).to(device)
    phr = np.array([rng.choice(data.choices[e]) for e in data.episode[idx]])
    return (imgs, text.embeddings[phr].to(device), text.masks[phr].to(device),
            torch.from_numpy(data.state[idx]).to(device),
            torch.from_numpy(data.tokens[idx]).to(device))
