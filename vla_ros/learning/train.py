"""
``vla-ros train``: behaviour cloning of RT-1 on LeRobotDataset v3 folders.

Cross-entropy over the 11 action tokens (RT-1's loss), optionally with neighbour-aware
label smoothing (a Gaussian over adjacent bins). Train / validation split by episode.
Images: decoded once into a cache at the network's resolution (the same average pooling
the exported graph applies to the 300x300 input), random shifts of up to ``--shift`` px.
Instructions: every sample draws one of its episode's training phrasings
(``instructions.TRAIN``); their text embeddings are computed once, or read from
``--text-embeddings FILE`` (written by the same option where the MiniLM package is
installed, so training can run on a machine without it). bf16 autocast and channels-last
on CPU when faster (``--bf16 auto``); on CUDA the whole image cache is moved to the GPU and
batches (random shifts included) are cut there.

Auxiliary target loss (``--aux-target-weight W``, 0 = off): a linear head on the encoder's
visual tokens regresses the named object's position in the base frame (the datasets'
``observation.environment_state``, recorded by ``vla-ros collect``), so the image features
are pushed to locate the block the instruction names. The head is training-only: weight
snapshots hold the policy alone, and frames without a known target do not enter the loss.

Resumable: ``OUT/last.pt`` holds model, optimiser, step and RNG states; rerun the same
command to continue (in pieces, in the background with ``nice``). Weight snapshots
``OUT/weights_step*.safetensors`` are what ``vla-ros export --checkpoint`` takes; pick among
them by closed-loop success (``vla-ros eval``), not by validation loss. ``OUT/metrics.csv``
and ``OUT/curves.png`` record losses and per-dimension accuracies.

Split as LeRobot splits it: ``train_config.py`` (what decides the weights), ``train_data.py``
(caches, embeddings, frames, batches) and this file (the loop, resume, metrics, the command).
"""

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from typing import Dict, Optional, Sequence

import numpy as np

from .chunks import chunk_labels
from .progress import Progress
from .train_config import DIM_NAMES, TARGET_SCALE, TrainConfig
from .train_data import (_batch, Data, idle_frames, load_data, split_episodes,
                         target_slots, TextTable)
from ..core.model_contract import NUM_ACTION_TOKENS as NUM_ACTIONS


def token_weights(learner: np.ndarray, width: int, steps: int) -> Optional[np.ndarray]:
    """
    Return which label tokens of a batch enter the loss (float [B, width]), None for all.

    ``learner`` marks the batch's learner-driven (DAgger) frames; of those, only the first
    ``steps`` chunk steps count (0: all). A chunk label is the next k recorded labels, which
    in a DAgger episode follow the learner's path, not the expert's plan from this state.
    """
    first = steps * NUM_ACTIONS
    if not steps or first >= width or not np.any(learner):
        return None
    keep = np.ones((len(learner), width), np.float32)
    keep[np.asarray(learner, bool), first:] = 0.0
    return keep


def smooth_targets(tokens, bins: float, num_bins: int = 256):
    """Gaussian label smoothing over neighbouring bins (sigma ``bins``); one-hot if 0."""
    import torch
    one_hot = torch.nn.functional.one_hot(tokens, num_bins).float()
    if bins <= 0:
        return one_hot
    grid = torch.arange(num_bins, dtype=torch.float32, device=tokens.device)
    weights = torch.exp(-0.5 * ((grid - tokens[..., None].float()) / bins) ** 2)
    smoothed = weights / weights.sum(-1, keepdim=True)
    # The gripper (the last of every step's 11 dimensions) is binary: keep it one-hot.
    grip = slice(len(DIM_NAMES) - 1, None, len(DIM_NAMES))
    smoothed[..., grip, :] = one_hot[..., grip, :]
    return smoothed


class TargetHead:
    """
    The auxiliary head: the visual tokens (TokenLearner output) -> each object's x, y, z.

    It reads the tokens before the encoder mixes in the state input: the previous commanded
    arm target follows the expert toward the block, so a head on the encoder output can
    read the position from the state instead of the image (measured: 0.86 cm from the
    encoder output on validation frames, 8.0 cm from the image tokens of the same weights
    on first frames, where the state says nothing). One position is regressed per
    nameable object (``target_slots()``, by colour) and the loss takes the named object's,
    so the head itself never has to decode which object is named; the tokens are
    conditioned on the instruction (FiLM) and must still carry that object's position.

    With ``goal``, one more slot regresses where the named block must go (the bowl of a
    place episode, ``Data.goal``), added to the loss on the frames that have one: the
    frozen tokens of a policy trained without it located the bowl to 6.9 cm (median)
    against 1.5 cm for the block, and the bowl's inner radius is 7.8 cm.
    """

    def __init__(self, model, device, goal: bool = False):
        import torch
        cfg = model.config
        self.goal = goal
        self.slots = len(target_slots()) + (1 if goal else 0)
        self.linear = torch.nn.Linear(cfg.num_image_tokens * cfg.d_model,
                                      3 * self.slots).to(device)

    def __call__(self, vision, slot):
        """Position (10 cm units) of object ``slot`` [B] from visual tokens [B, N, d]."""
        import torch
        out = self.linear(vision.flatten(1).float()).view(-1, self.slots, 3)
        return out[torch.arange(out.shape[0], device=out.device), slot]

    def loss(self, vision, target, slot, goal=None):
        """
        Smooth-L1 (10 cm units) over frames with a known target; 0 when none.

        With the goal slot and ``goal`` [B, 4]: plus the same loss of the goal's position.
        """
        import torch
        total = vision.new_zeros(()).float()
        valid = (target[:, 3] > 0.5) & (slot >= 0)
        if bool(valid.any()):
            pred = self(vision[valid], slot[valid])
            total = total + torch.nn.functional.smooth_l1_loss(
                pred, target[valid, :3] / TARGET_SCALE, beta=0.1)
        if self.goal and goal is not None:
            has = goal[:, 3] > 0.5
            if bool(has.any()):
                pred = self(vision[has], torch.full_like(slot[has], self.slots - 1))
                total = total + torch.nn.functional.smooth_l1_loss(
                    pred, goal[has, :3] / TARGET_SCALE, beta=0.1)
        return total


def _forward(model, head: Optional[TargetHead], img, emb, mask, state):
    """Logits, and the visual tokens when the auxiliary head needs them."""
    if head is None:
        return model(img, emb, mask, state), None
    memory, bias, vision = model.encode_with_vision(img, emb, mask, state)
    return model.decode_single(memory, bias), vision


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + np.cos(np.pi * frac))


def _use_bf16(cfg: TrainConfig, device) -> bool:
    if cfg.bf16 in ('on', 'off'):
        return cfg.bf16 == 'on'
    if device.type == 'cuda':
        return True
    try:
        flags = open('/proc/cpuinfo', encoding='utf-8').read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def evaluate_offline(model, data: Data, idx: np.ndarray, text: TextTable, device,
                     bf16: bool, batch: int = 256, head: Optional[TargetHead] = None
                     ) -> Dict[str, float]:
    """
    Return the validation loss and per-dimension exact / within-one-bin accuracy.

    With the auxiliary head: the median error (cm) of its named-object position.
    """
    import torch
    model.eval()
    rng = np.random.default_rng(0)
    losses, exact, near, errors, goal_errors = [], [], [], [], []
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            part = idx[s:s + batch]
            img, emb, mask, state, tok = _batch(data, part, text, rng, 0, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits, vision = _forward(model, head, img, emb, mask, state)
            if head is not None:
                valid = (data.target[part, 3] > 0.5) & (data.target_slot[part] >= 0)
                if valid.any():
                    slot = torch.from_numpy(data.target_slot[part][valid]).to(device)
                    pred = head(vision[torch.from_numpy(valid).to(device)], slot)
                    pred = pred.float().cpu().numpy() * TARGET_SCALE
                    errors.append(np.linalg.norm(pred - data.target[part][valid, :3], axis=1))
                has = (data.goal[part, 3] > 0.5) if head.goal else np.zeros(len(part), bool)
                if has.any():
                    slot = torch.full((int(has.sum()),), head.slots - 1, device=device)
                    pred = head(vision[torch.from_numpy(has).to(device)], slot)
                    pred = pred.float().cpu().numpy() * TARGET_SCALE
                    goal_errors.append(np.linalg.norm(pred - data.goal[part][has, :3], axis=1))
            logits = logits.float()
            losses.append(torch.nn.functional.cross_entropy(
                logits.reshape(-1, 256), tok.reshape(-1), reduction='sum').item())
            # Accuracies of the step executed now (a chunk's first 11 tokens).
            pred = logits[:, :len(DIM_NAMES)].argmax(-1)
            first = tok[:, :len(DIM_NAMES)]
            exact.append((pred == first).float().sum(0).cpu().numpy())
            near.append(((pred - first).abs() <= 1).float().sum(0).cpu().numpy())
    model.train()
    n = max(1, len(idx))
    out = {'val_loss': sum(losses) / (n * data.tokens.shape[1])}
    acc, acc1 = np.sum(exact, 0) / n, np.sum(near, 0) / n
    for i, name in enumerate(DIM_NAMES):
        out[f'acc_{name}'] = float(acc[i])
        out[f'acc1_{name}'] = float(acc1[i])
    if errors:
        out['val_target_cm'] = float(np.median(np.concatenate(errors)) * 100.0)
    if goal_errors:
        out['val_goal_cm'] = float(np.median(np.concatenate(goal_errors)) * 100.0)
    return out


def plot(metrics_path: str, out_png: str):
    """Loss and per-dimension accuracy curves from metrics.csv."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    with open(metrics_path, encoding='utf-8') as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return
    step = [int(r['step']) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    axes[0].plot(step, [float(r['train_loss']) for r in rows], label='train')
    val = [(int(r['step']), float(r['val_loss'])) for r in rows if r['val_loss']]
    if val:
        axes[0].plot(*zip(*val), label='validation')
    axes[0].set_xlabel('step')
    axes[0].set_ylabel('cross-entropy per token')
    axes[0].set_yscale('log')
    axes[0].legend()
    for name in DIM_NAMES:
        pts = [(int(r['step']), float(r[f'acc1_{name}'])) for r in rows if r.get(f'acc1_{name}')]
        if pts:
            axes[1].plot(*zip(*pts), label=name)
    axes[1].set_xlabel('step')
    axes[1].set_ylabel('validation accuracy within one bin')
    if axes[1].lines:
        axes[1].legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def train(roots: Sequence[str], out: str, cfg: TrainConfig, minutes: Optional[float] = None,
          quiet: bool = False, text_embeddings: Optional[str] = None) -> Dict:
    """Train (or resume) into ``out``; returns a summary."""
    if not 0 <= cfg.learner_chunk_steps <= cfg.chunk:
        raise ValueError(f'learner_chunk_steps must be 0 (all) to chunk {cfg.chunk}, found '
                         f'{cfg.learner_chunk_steps}')
    import torch
    from safetensors.torch import save_file
    from ..model.config import get_config
    from ..model.rt1 import build_policy
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model_cfg = dataclasses.replace(get_config(cfg.model), seed=cfg.seed,
                                    chunk_steps=cfg.chunk)
    factor = model_cfg.input_downsample
    os.makedirs(out, exist_ok=True)
    data, phrasings, space = load_data(roots, factor, quiet, cfg.action_space)
    if cfg.chunk > 1:  # after relabelling: each step's label in the training space
        data.tokens = chunk_labels(data.tokens, data.episode, cfg.chunk)
    text = TextTable(phrasings, text_embeddings)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        data.images = torch.from_numpy(data.images).to(device)
    num_episodes = len(data.choices)
    val_ep = split_episodes(num_episodes, cfg.val_fraction, cfg.seed)
    is_val = val_ep[data.episode]
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    dropped = 0
    if cfg.drop_idle:
        keep = ~idle_frames(data, space)[train_idx]
        dropped = int((~keep).sum())
        train_idx = train_idx[keep]
    torch.manual_seed(cfg.seed)
    state_dict = None
    if cfg.init:
        from safetensors.torch import load_file
        from ..model.rt1 import tile_action_queries
        state_dict = tile_action_queries(load_file(cfg.init), cfg.chunk)
    model = build_policy(model_cfg, state_dict=state_dict).train().to(device)
    if device.type == 'cpu':
        model = model.to(memory_format=torch.channels_last)
    head = (TargetHead(model, device, goal=cfg.aux_goal) if cfg.aux_target_weight > 0.0
            else None)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    if head is not None:
        decay.append(head.linear.weight)
        no_decay.append(head.linear.bias)
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': cfg.weight_decay},
                             {'params': no_decay, 'weight_decay': 0.0}], lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    last = os.path.join(out, 'last.pt')
    run_info = {'train_config': dataclasses.asdict(cfg), 'model_config': model_cfg.to_dict(),
                'datasets': data.identity, 'action_space': space,
                'frames': {'train': int(len(train_idx)), 'validation': int(len(val_idx)),
                           'idle_dropped': dropped},
                'episodes': {'train': int((~val_ep).sum()), 'validation': int(val_ep.sum())}}
    if os.path.exists(last):
        ckpt = torch.load(last, map_location=device, weights_only=False)
        # Settings added since the checkpoint was written count at their defaults.
        saved = {**dataclasses.asdict(TrainConfig()), **ckpt['run_info']['train_config']}
        if ckpt['run_info']['datasets'] != data.identity or saved != dataclasses.asdict(cfg):
            raise ValueError(f'{last} was written with other data or settings; use a new '
                             '--out folder or the same arguments')
        model.load_state_dict(ckpt['model'])
        if head is not None:
            head.linear.load_state_dict(ckpt['target_head'])
        opt.load_state_dict(ckpt['optimizer'])
        step = int(ckpt['step'])
        rng.bit_generator.state = ckpt['numpy_rng']
        torch.set_rng_state(ckpt['torch_rng'])
        print(f'resuming {out} at step {step}', file=sys.stderr)
    with open(os.path.join(out, 'run.json'), 'w', encoding='utf-8') as stream:
        json.dump(run_info, stream, indent=2, sort_keys=True)
    bf16 = _use_bf16(cfg, device)
    metrics_path = os.path.join(out, 'metrics.csv')
    fields = ['step', 'seconds', 'lr', 'train_loss', 'samples_per_s', 'val_loss'] + [
        f'{k}_{n}' for n in DIM_NAMES for k in ('acc', 'acc1')]
    if head is not None:
        fields += ['train_target_loss', 'val_target_cm'] + (['val_goal_cm'] if head.goal
                                                            else [])
    new_file = not os.path.exists(metrics_path)
    metrics = open(metrics_path, 'a', newline='', encoding='utf-8')
    writer = csv.DictWriter(metrics, fieldnames=fields)
    if new_file:
        writer.writeheader()
    progress = Progress(cfg.steps, 'train', quiet=quiet)
    progress.count = step
    start = time.monotonic()
    window, window_t, window_n, aux_window = [], time.monotonic(), 0, []

    def save():
        extra = {'target_head': head.linear.state_dict()} if head is not None else {}
        torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'step': step,
                    'numpy_rng': rng.bit_generator.state, 'torch_rng': torch.get_rng_state(),
                    'run_info': run_info, **extra}, last + '.tmp')
        os.replace(last + '.tmp', last)

    while step < cfg.steps:
        if minutes is not None and time.monotonic() - start > minutes * 60:
            break
        for group in opt.param_groups:
            group['lr'] = _lr(cfg, step)
        idx = rng.choice(train_idx, size=cfg.batch_size, replace=len(train_idx) < cfg.batch_size)
        img, emb, mask, state, tok = _batch(data, idx, text, rng, cfg.shift, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, vision = _forward(model, head, img, emb, mask, state)
        logp = torch.log_softmax(logits.float(), dim=-1)
        target = smooth_targets(tok, cfg.label_smoothing_bins)
        per_token = -(target * logp).sum(-1)                      # [B, 11 k]
        learner = data.learner[idx] if data.learner is not None else np.zeros(len(idx), bool)
        keep = token_weights(learner, per_token.shape[1], cfg.learner_chunk_steps)
        if keep is None:
            loss = per_token.mean()
        else:
            keep = torch.from_numpy(keep).to(device)
            loss = (per_token * keep).sum() / keep.sum()
        total = loss
        if head is not None:
            aux = head.loss(vision, torch.from_numpy(data.target[idx]).to(device),
                            torch.from_numpy(data.target_slot[idx]).to(device),
                            torch.from_numpy(data.goal[idx]).to(device)
                            if data.goal is not None else None)
            total = loss + cfg.aux_target_weight * aux
            aux_window.append(aux.item())
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group['params']],
                                       1.0)
        opt.step()
        step += 1
        window.append(loss.item())
        window_n += cfg.batch_size
        progress.step()
        if step % 50 == 0:
            progress.note(f'loss {np.mean(window[-50:]):.3f}')
        if step % cfg.val_every == 0 or step == cfg.steps:
            now = time.monotonic()
            row = {'step': step, 'seconds': round(now - start, 1), 'lr': _lr(cfg, step),
                   'train_loss': float(np.mean(window)),
                   'samples_per_s': round(window_n / max(1e-9, now - window_t), 1)}
            if head is not None and aux_window:
                row['train_target_loss'] = float(np.mean(aux_window))
            if len(val_idx):
                row.update(evaluate_offline(model, data, val_idx, text, device, bf16,
                                            head=head))
            writer.writerow(row)
            metrics.flush()
            window, window_t, window_n, aux_window = [], time.monotonic(), 0, []
            save()
        if step % cfg.snapshot_every == 0 or step == cfg.steps:
            weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(weights, os.path.join(out, f'weights_step{step:06d}.safetensors'),
                      metadata={'step': str(step), 'config': cfg.model})
    save()
    metrics.close()
    progress.close()
    plot(metrics_path, os.path.join(out, 'curves.png'))
    return {'step': step, 'out': out, 'seconds': round(time.monotonic() - start, 1)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vla-ros train``."""
    parser = argparse.ArgumentParser(prog='vla-ros train', description=__doc__.split('\n')[1])
    parser.add_argument('--data', nargs='+', required=True, help='dataset folder(s)')
    parser.add_argument('--out', required=True, help='run folder (resumed when it exists)')
    parser.add_argument('--minutes', type=float, default=None,
                        help='stop after this much wall time (resume later)')
    parser.add_argument('--quiet', action='store_true')
    parser.add_argument('--text-embeddings', default=None, metavar='FILE',
                        help='read the instruction embeddings from FILE (written there, for '
                        'every training phrasing, when it does not exist)')
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = '--' + field.name.replace('_', '-')
        if isinstance(field.default, bool):  # a switch: --drop-idle
            parser.add_argument(flag, action='store_true', default=field.default)
        else:
            parser.add_argument(flag, type=type(field.default),
                                default=getattr(defaults, field.name))
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    from ..verbs import guarded
    summary = guarded('train', lambda: train(args.data, args.out, cfg, args.minutes,
                                             args.quiet, args.text_embeddings))
    if summary is not None:
        print(f'trained {summary}')
    return 0 if summary is not None else 2


if __name__ == '__main__':
    sys.exit(main())
