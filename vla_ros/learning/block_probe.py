"""
``vla-ros probe-block``: how well the image model tells where the named block is.

Grasping needs the block's position to about 1 cm. This command measures what the image
pathway delivers, in centimetres, next to that tolerance:

* **Scenes**: the first frame of seeded pick / place / push episodes (the 300x300 frame the
  node sees, the instruction naming the block, the block's true world x, y). Training
  scenes come from seeds below 100 000, test scenes from 100 000 on (``vla-ros eval``'s
  unseen seeds).
* **Frozen features** (``--checkpoint``): the trained RT-1's visual tokens (FiLM backbone →
  TokenLearner, conditioned on the instruction) are flattened and a ridge regression is
  fitted to the block's x, y. The test error says how much of the position the policy's
  own image tokens carry.
* **Resolution** (``--train-res 3 2``): the same backbone and TokenLearner, trained from
  scratch at each input pooling factor (3 → 100x100 px, the shipped one; 2 → 150x150; 1 →
  300x300) to regress the position directly, same steps and data. If the error falls with
  resolution, pixels are what binds; if not, more pixels would not help.

Both report the median and 90th-percentile error (cm) on the test scenes.
"""

import argparse
import dataclasses
import functools
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .collect import EVAL_SEED_START
from ..sim.robot import Robot
from ..sim.tasks import TaskEnv

TASKS = ('pick_block', 'place_in_bowl', 'push_block')
GRASP_TOLERANCE_CM = 1.0
OBJECTS = ('block', 'bowl')


@dataclasses.dataclass
class Scenes:
    """First frames of seeded episodes with the named block's true position."""

    images: np.ndarray        # uint8 [N, 300, 300, 3]
    instructions: List[str]
    xy: np.ndarray            # float64 [N, 2] world metres


def render_scenes(count: int, seed_start: int, obj: str = 'block') -> Scenes:
    """
    Render ``count`` scenes from ``seed_start`` with the true x, y of ``obj``.

    ``block``: the named block, cycling through the block tasks; ``bowl``: the bowl, in
    place-in-bowl scenes (the instruction names it).
    """
    if obj not in OBJECTS:
        raise ValueError(f'object must be one of {OBJECTS}, found {obj!r}')
    tasks = TASKS if obj == 'block' else ('place_in_bowl',)
    robot = Robot()
    env = TaskEnv(robot)  # only reset and render: no control steps
    images, texts, xy = [], [], []
    for i in range(count):
        episode = env.reset(tasks[i % len(tasks)], seed_start + i)
        images.append(robot.render())
        texts.append(episode.instruction)
        body = f'block_{episode.params["colour"]}' if obj == 'block' else 'bowl'
        xy.append(robot.body_position(body)[:2])
    robot.close()
    return Scenes(np.stack(images), texts, np.array(xy))


def _errors_cm(predicted: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    err = 100.0 * np.linalg.norm(predicted - truth, axis=1)
    return {'median_cm': round(float(np.median(err)), 2),
            'p90_cm': round(float(np.percentile(err, 90)), 2),
            'within_grasp_tolerance': round(float(np.mean(err <= GRASP_TOLERANCE_CM)), 3)}


@functools.lru_cache(maxsize=4)
def _table(phrasings: tuple):
    from .train_data import TextTable
    return TextTable(phrasings)


def _text(instructions: Sequence[str]):
    table = _table(tuple(sorted(set(instructions))))
    idx = [table.index[t] for t in instructions]
    return table.embeddings[idx], table.masks[idx]


def frozen_feature_probe(checkpoint: str, config: str, train: Scenes, test: Scenes,
                         ridge: float = 1.0) -> Dict[str, float]:
    """Ridge regression from a trained model's visual tokens to the block's x, y."""
    import torch
    from ..model.checkpoint import load_checkpoint
    from ..model.config import get_config
    from ..model.rt1 import build_policy
    # A chunk-trained checkpoint (the shipped one) builds with its own action queries; the
    # visual tokens probed here are the same.
    model = build_policy(get_config(config), state_dict=load_checkpoint(checkpoint)).eval()

    def features(scenes: Scenes) -> np.ndarray:
        emb, mask = _text(scenes.instructions)
        out = []
        with torch.no_grad():
            for i in range(0, len(scenes.xy), 64):
                text = model.text_projection(emb[i:i + 64])
                tokens = model.image_tokens(torch.from_numpy(scenes.images[i:i + 64]), text,
                                            mask[i:i + 64])
                out.append(tokens.flatten(1).numpy())
        return np.concatenate(out).astype(np.float64)
    ftr, fte = features(train), features(test)
    mean, std = ftr.mean(0), ftr.std(0) + 1e-6
    a, b = (ftr - mean) / std, (fte - mean) / std
    target_mean = train.xy.mean(0)
    w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]),
                        a.T @ (train.xy - target_mean))
    return _errors_cm(b @ w + target_mean, test.xy)


def resolution_probe(factor: int, train: Scenes, test: Scenes, steps: int, batch: int = 32,
                     seed: int = 0) -> Dict[str, float]:
    """Train the nano backbone + TokenLearner at this pooling factor to regress x, y."""
    import torch
    from ..model.config import get_config
    from ..model.rt1 import build_policy
    torch.manual_seed(seed)
    cfg = dataclasses.replace(get_config('nano'), input_downsample=factor, seed=seed)
    model = build_policy(cfg).train().to(memory_format=torch.channels_last)
    head = torch.nn.Linear(cfg.num_image_tokens * cfg.d_model, 2)
    from .train import _use_bf16
    from .train_config import TrainConfig
    bf16 = _use_bf16(TrainConfig(), torch.device('cpu'))  # the training command's rule
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    emb_tr, mask_tr = _text(train.instructions)
    emb_te, mask_te = _text(test.instructions)
    centre, scale = train.xy.mean(0), train.xy.std(0)
    target = torch.as_tensor((train.xy - centre) / scale, dtype=torch.float32)
    rng = np.random.default_rng(seed)

    def predict(images, emb, mask):
        text = model.text_projection(emb)
        return head(model.image_tokens(images, text, mask).flatten(1))
    for step in range(steps):
        for group in opt.param_groups:
            group['lr'] = 1e-3 * 0.5 * (1.0 + np.cos(np.pi * step / steps))
        idx = rng.integers(0, len(train.xy), batch)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            out = predict(torch.from_numpy(train.images[idx]), emb_tr[idx], mask_tr[idx])
        loss = torch.nn.functional.smooth_l1_loss(out.float(), target[idx], beta=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(test.xy), 64):
            preds.append(predict(torch.from_numpy(test.images[i:i + 64]), emb_te[i:i + 64],
                                 mask_te[i:i + 64]).numpy())
    return _errors_cm(np.concatenate(preds) * scale + centre, test.xy)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vla-ros probe-block``."""
    parser = argparse.ArgumentParser(
        prog='vla-ros probe-block', description='Error (cm) of the named block position '
        'read from image features, next to the 1 cm grasp tolerance.')
    parser.add_argument('--checkpoint', default=None,
                        help='trained weights (.safetensors) for the frozen-feature probe')
    parser.add_argument('--config', default='nano', help='model config of --checkpoint')
    parser.add_argument('--train-res', type=int, nargs='*', default=[],
                        metavar='FACTOR', help='pooling factors to train from scratch at '
                        '(3: 100 px, 2: 150 px, 1: 300 px)')
    parser.add_argument('--object', choices=OBJECTS, default='block',
                        help='what to locate: the named block (pick, place and push scenes) '
                        'or the bowl (place scenes)')
    parser.add_argument('--scenes', type=int, default=1500, help='training scenes')
    parser.add_argument('--test-scenes', type=int, default=300)
    parser.add_argument('--steps', type=int, default=1500, help='steps per resolution run')
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--json', default=None)
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.train_res:
        print('vla-ros probe-block: give --checkpoint and/or --train-res', file=sys.stderr)
        return 2
    if any(f not in (1, 2, 3) for f in args.train_res):
        print('vla-ros probe-block: --train-res factors are 1, 2 or 3', file=sys.stderr)
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    train = render_scenes(args.scenes, 0, args.object)
    test = render_scenes(args.test_scenes, EVAL_SEED_START, args.object)
    results: Dict[str, Dict] = {}
    if args.checkpoint:
        results['frozen_features'] = frozen_feature_probe(args.checkpoint, args.config,
                                                          train, test)
        results['frozen_features']['checkpoint'] = os.path.abspath(args.checkpoint)
        print(f'frozen features of {args.checkpoint}: {results["frozen_features"]}', flush=True)
    for factor in args.train_res:
        t = time.monotonic()
        r = resolution_probe(factor, train, test, args.steps)
        r['input_px'] = 300 // factor
        r['seconds'] = round(time.monotonic() - t, 1)
        results[f'trained_x{factor}'] = r
        print(f'trained at {300 // factor} px: {r}', flush=True)
    results['scenes'] = {'object': args.object, 'train': args.scenes, 'test': args.test_scenes,
                         'steps': args.steps, 'seconds': round(time.monotonic() - start, 1)}
    from ..verbs import write_json
    write_json(args.json, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
