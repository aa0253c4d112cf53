"""
``vla-ros oracle``: the same behaviour cloning with perception taken out.

A small policy (an MLP over a privileged state vector in place of the image and the
instruction) is trained on the scripted expert's labels, in the same action space, through
the same in-process chain the nodes run (tokens → detokenize → compose → 20 Hz control loop
→ MuJoCo, ``sim/pipeline.Pipeline``), and evaluated closed loop on unseen seeds. Nothing is
rendered, so a whole run takes minutes on a CPU.

What it tells a user: if the oracle solves a task with a recipe (demonstrations, noise,
action space) and the image policy trained on the same recipe does not, the failure is
perception; if the oracle fails too, it is control / the demonstrations.

The privileged state (``privileged_state``, 52-D): measured arm joints (7) and gripper
closure (1); the previous commanded 11-D target (the image policy's ``state`` input); the
tool centre point's position (3) and yaw (sin, cos); the named object's position relative
to the tool (3) and its yaw with the block's 4-fold symmetry (sin 4θ, cos 4θ); the bowl
relative to the tool (3); the named marker relative to the base, in the base frame (2); the
base's odometry (x, y, sin yaw, cos yaw); the block's start position (3); the task (one-hot,
5), the push sign (1), the gripper goal (1), the object colour (one-hot, 3) and its lift
above the table (1) — 52 values, documented so a reader can check what the oracle knows.

The data mirrors the image recipe: two shards of ``--episodes`` each, a clean one from
``--seed-start`` and one from ``--seed-start + 50000`` collected with ``--arm-noise`` (DART,
as ``vla-ros collect``; 0 makes both shards clean, the same data budget). The action space
is ``--action-space``. Evaluation seeds start at 100 000.

``--expert reactive`` labels with ``sim.expert.ReactiveExpert`` (the action a function of the
state) instead of the phase machine. ``--dagger-rounds N``: after the first policy, N rounds
in which the last policy drives ``--dagger-episodes`` episodes (all kept), the expert labels
every state reached, and a new policy is trained from scratch on everything so far; each
round's policy is evaluated (``rounds`` in the JSON).
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import instructions
from .chunks import chunk_labels, ChunkRunner
from .collect import ArmNoise, EVAL_SEED_START, parse_episodes, parse_noise_phases
from .evaluate import wilson
from .train_data import idle_labels
from ..core.action_space import ActionSpace, ActionTokenizer
from ..paths import default_action_space_file
from ..sim.expert import EXPERT_KINDS, ExpertDecider, PLACE_CARRIES
from ..sim.pipeline import Observation, Pipeline
from ..sim.robot import Robot
from ..sim.tasks import BLOCK_COLOURS, TABLE_TOP, TASK_NAMES

STATE_DIM = 52
# DAgger round r collects from --seed-start + DAGGER_SEED_OFFSET + r * DAGGER_SEED_STRIDE
# (clear of the clean shard's and the second shard's seeds, below the evaluation seeds).
DAGGER_SEED_OFFSET = 10_000
DAGGER_SEED_STRIDE = 2_000
# Where the previous commanded target's gripper value sits in the privileged state.
PREVIOUS_GRIPPER = 18


def privileged_state(robot: Robot, episode, obs: Observation) -> np.ndarray:
    """Return the oracle's 52-D input (module docstring)."""
    params = episode.params
    tcp, rot = robot.tcp_pose()
    tcp_yaw = math.atan2(rot[1, 0], rot[0, 0])
    odom = robot.odometry()
    colour = params.get('colour', '')
    task = episode.task
    obj = np.zeros(3)
    obj_yaw = 0.0
    lift = 0.0
    marker = np.zeros(2)
    if colour in BLOCK_COLOURS:
        obj = robot.body_position(f'block_{colour}')
        xmat = robot.data.body(f'block_{colour}').xmat
        obj_yaw = math.atan2(xmat[3], xmat[0])
        lift = obj[2] - TABLE_TOP
    elif colour:
        m = robot.body_position(f'marker_{colour}')
        dx, dy = m[0] - odom.x, m[1] - odom.y
        c, s = math.cos(odom.yaw), math.sin(odom.yaw)
        marker = np.array([c * dx + s * dy, -s * dx + c * dy])
    bowl = robot.body_position('bowl')
    onehot_task = np.eye(len(TASK_NAMES))[TASK_NAMES.index(task)]
    onehot_colour = np.array([float(colour == c) for c in BLOCK_COLOURS])
    start = np.asarray(params.get('block_start', np.zeros(3)), dtype=np.float64)
    parts = [obs.joint_state, obs.state, tcp, [math.sin(tcp_yaw), math.cos(tcp_yaw)],
             (obj - tcp) if colour in BLOCK_COLOURS else np.zeros(3),
             [math.sin(4 * obj_yaw), math.cos(4 * obj_yaw)], bowl - tcp, marker,
             [odom.x, odom.y, math.sin(odom.yaw), math.cos(odom.yaw)], start,
             onehot_task, [float(params.get('sign', 0.0))],
             [float(bool(params.get('close', False)))], onehot_colour, [lift]]
    out = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts])
    assert out.shape == (STATE_DIM,), out.shape
    return out


class Scene:
    """The in-process chain, the expert and the noise, built once."""

    def __init__(self, action_space_file: Optional[str], params_file: Optional[str],
                 arm_noise: float = 0.0, settle: bool = True, expert: str = 'phases',
                 release_xy: Optional[float] = None, place_carry: str = 'high',
                 arm_noise_phases: Optional[Sequence[str]] = None):
        self.space = ActionSpace.from_yaml(action_space_file or default_action_space_file())
        self.tokenizer = ActionTokenizer(self.space)
        self.pipeline = Pipeline.from_params(self.tokenizer, params_file)
        self.env = self.pipeline.env
        self.robot = self.env.robot
        self.expert = ExpertDecider(self.robot, self.tokenizer,
                                    self.pipeline.config.inference_period, settle=settle,
                                    kind=expert, release_xy=release_xy,
                                    place_carry=place_carry)
        self.noise = ArmNoise(arm_noise, self.space, self.tokenizer, arm_noise_phases)

    def close(self):
        self.robot.close()


def collect_states(scene: Scene, episodes: Dict[str, int], seed_start: int):
    """Expert episodes (perturbed by the scene's noise) → (states, labels, episode ids, stats)."""
    xs: List[np.ndarray] = []
    ys: List[np.ndarray] = []
    eps: List[int] = []
    stats = {'episodes': 0, 'expert_failures': 0, 'skipped_held_out': 0}
    for task, count in episodes.items():
        for seed in range(seed_start, seed_start + count):
            episode = scene.env.reset(task, seed)
            if instructions.is_held_out(task, episode.params):
                stats['skipped_held_out'] += 1
                continue
            scene.expert.reset(episode)
            scene.noise.reset(task, seed)
            ex, ey = [], []

            def decide(obs: Observation) -> np.ndarray:
                if scene.noise.sigma > 0.0:
                    scene.expert.expert.anchor(obs.state[:7])
                labels = scene.expert(obs)
                ex.append(privileged_state(scene.robot, episode, obs))
                ey.append(labels)
                return scene.noise(scene.expert.last_values, labels,
                                   scene.expert.expert.phase)

            status = scene.pipeline.run_episode(decide, extra_time=1.0)
            if not status['success']:
                stats['expert_failures'] += 1
                continue
            xs += ex
            ys += ey
            eps += [stats['episodes']] * len(ex)
            stats['episodes'] += 1
    return np.stack(xs), np.stack(ys).astype(np.int64), np.asarray(eps, np.int64), stats


def collect_dagger(scene: Scene, policy, episodes: Dict[str, int], seed_start: int):
    """
    Let the policy drive and the expert label every state it reaches; keep all episodes.

    Returns (states, labels, episode ids from 0).
    """
    xs: List[np.ndarray] = []
    ys: List[np.ndarray] = []
    eps: List[int] = []
    reset = getattr(policy, 'reset', lambda: None)
    for task, count in episodes.items():
        for seed in range(seed_start, seed_start + count):
            episode = scene.env.reset(task, seed)
            if instructions.is_held_out(task, episode.params):
                continue
            scene.expert.reset(episode)
            reset()

            def decide(obs: Observation) -> np.ndarray:
                scene.expert.expert.anchor(obs.state[:7])  # the learner moved the arm
                ys.append(scene.expert(obs))
                xs.append(privileged_state(scene.robot, episode, obs))
                eps.append(number)
                return policy(xs[-1])

            number = eps[-1] + 1 if eps else 0
            scene.pipeline.run_episode(decide)
    return np.stack(xs), np.stack(ys).astype(np.int64), np.asarray(eps, np.int64)


def without_idle(x: np.ndarray, y: np.ndarray, labels: np.ndarray, space):
    """
    Leave out the rows whose label is idle, as ``vla-ros train --drop-idle`` does.

    ``y`` holds each row's own label (step now), ``labels`` what is trained (``y`` or its
    chunk); returns the kept states, the kept labels and how many rows were dropped.
    """
    keep = ~idle_labels(y, x[:, PREVIOUS_GRIPPER], space)
    return x[keep], labels[keep], int((~keep).sum())


def train_mlp(x: np.ndarray, y: np.ndarray, steps: int = 6000, batch: int = 256,
              seed: int = 0, hidden: int = 256):
    """Train a 2 x ``hidden`` MLP with 11 heads of 256 bins, cross-entropy (RT-1's loss)."""
    import torch
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, y.shape[1] * 256))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-5)
    xt = torch.as_tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.as_tensor(y)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(0, len(xt), batch))
        logits = net(xt[idx]).view(batch, y.shape[1], 256)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), yt[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()

    def policy(state: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = torch.as_tensor((state - mean) / std, dtype=torch.float32)[None]
            return net(z).view(y.shape[1], 256).argmax(-1).numpy().astype(np.uint8)
    return policy, float(loss.item())


def evaluate_policy(scene: Scene, policy, tasks: Sequence[str], episodes: int) -> Dict:
    """Closed-loop success of the oracle on seeds from EVAL_SEED_START."""
    reset = getattr(policy, 'reset', lambda: None)
    results = {}
    for task in tasks:
        ok = n = 0
        seed = EVAL_SEED_START
        while n < episodes:
            episode = scene.env.reset(task, seed)
            seed += 1
            if instructions.is_held_out(task, episode.params):
                continue
            reset()
            status = scene.pipeline.run_episode(
                lambda obs: policy(privileged_state(scene.robot, episode, obs)))
            ok += bool(status['success'])
            n += 1
        low, high = wilson(ok, n)
        results[task] = {'successes': ok, 'episodes': n, 'rate': ok / n,
                         'interval': [round(low, 3), round(high, 3)]}
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vla-ros oracle``."""
    parser = argparse.ArgumentParser(
        prog='vla-ros oracle', description='Behaviour cloning on privileged state (no '
        'image): tells whether a recipe fails at control or at perception.')
    parser.add_argument('--episodes', default='pick_block=300,place_in_bowl=250,'
                        'push_block=250', help='training episodes per task (task=N,...)')
    parser.add_argument('--seed-start', type=int, default=0)
    parser.add_argument('--arm-noise', type=float, default=0.0, metavar='SIGMA',
                        help='DART noise on the executed arm delta (as vla-ros collect)')
    parser.add_argument('--arm-noise-phases', default=None, metavar='PHASES',
                        help='perturb only in these expert phases (as vla-ros collect)')
    parser.add_argument('--action-space', default=None)
    parser.add_argument('--params-file', default=None)
    parser.add_argument('--steps', type=int, default=6000, help='training steps')
    parser.add_argument('--seed', type=int, default=0, help='training seed')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--eval-episodes', type=int, default=50, help='unseen seeds per task')
    parser.add_argument('--chunk', type=int, default=1, metavar='K',
                        help='predict the next K steps per decision (action chunks; 1: '
                        'single-step, the node contract)')
    parser.add_argument('--chunk-execute', type=int, default=0, metavar='M',
                        help='steps of each chunk executed before the next prediction '
                        '(0: all K)')
    parser.add_argument('--no-settle', action='store_true',
                        help="the expert's place and push phases end when the waypoint "
                             'arrives, without waiting for the arm (sim/expert.py)')
    parser.add_argument('--drop-idle', action='store_true',
                        help='leave the frames where the expert waits out of training '
                             '(as vla-ros train --drop-idle)')
    parser.add_argument('--expert', choices=EXPERT_KINDS, default='phases',
                        help='the labelling expert: the phase machine (the recorded '
                             "datasets') or the reactive one (sim/expert.py)")
    parser.add_argument('--release-xy', type=float, default=None, metavar='METRES',
                        help="reactive expert: its release zone (vla-ros collect's)")
    parser.add_argument('--place-carry', choices=PLACE_CARRIES, default='high',
                        help="reactive expert: its place carry (vla-ros collect's)")
    parser.add_argument('--dagger-rounds', type=int, default=0, metavar='N',
                        help='after the first policy, N DAgger rounds: the policy drives, '
                             'the expert labels, all data so far trains the next policy '
                             '(evaluated after each round)')
    parser.add_argument('--dagger-episodes', default='pick_block=100,place_in_bowl=150,'
                        'push_block=150', help='DAgger episodes per task and round')
    parser.add_argument('--json', default=None, help='also write the results here')
    parser.add_argument('--cache', default=None, metavar='NPZ',
                        help='keep the collected states here and reuse them when present '
                        '(same --episodes, --seed-start, --arm-noise)')
    args = parser.parse_args(argv)
    execute = args.chunk_execute or args.chunk
    if args.chunk < 1 or not 1 <= execute <= args.chunk:
        print(f'vla-ros oracle: need --chunk >= 1 and 1 <= --chunk-execute <= --chunk, got '
              f'{args.chunk} and {args.chunk_execute}', file=sys.stderr)
        return 2
    if args.dagger_rounds < 0:
        print(f'vla-ros oracle: --dagger-rounds must be >= 0, got {args.dagger_rounds}',
              file=sys.stderr)
        return 2
    noise_phases = parse_noise_phases(args.arm_noise_phases)
    try:
        plan = parse_episodes(args.episodes)
        dagger_plan = parse_episodes(args.dagger_episodes)
        scene = Scene(args.action_space, args.params_file, args.arm_noise,
                      settle=not args.no_settle, expert=args.expert,
                      release_xy=args.release_xy, place_carry=args.place_carry,
                      arm_noise_phases=noise_phases)
    except ValueError as exc:
        print(f'vla-ros oracle: {exc}', file=sys.stderr)
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    key = [plan, args.seed_start, args.arm_noise, scene.space.to_dict()]
    if noise_phases is not None:
        key.append(sorted(scene.noise.phases))
    # (the key of the phase machine's settling expert's cache is what it always was)
    if args.no_settle:
        key.append('no-settle')
    if args.expert != 'phases':
        key.append(args.expert)
    if args.release_xy is not None or args.place_carry != 'high':
        key.append([args.release_xy, args.place_carry])
    key = json.dumps(key, sort_keys=True)
    cached = None
    if args.cache and os.path.exists(args.cache):
        cached = np.load(args.cache, allow_pickle=False)
        if str(cached['key']) != key or 'episode' not in cached:
            print(f'vla-ros oracle: {args.cache} holds other data; collecting anew',
                  file=sys.stderr)
            cached = None
    if cached is not None:
        x, y, episode = cached['x'], cached['y'], cached['episode']
        stats = json.loads(str(cached['stats']))
    else:
        sigma, scene.noise.sigma = scene.noise.sigma, 0.0
        x, y, episode, stats = collect_states(scene, plan, args.seed_start)
        scene.noise.sigma = sigma
        x2, y2, episode2, stats2 = collect_states(scene, plan, args.seed_start + 50_000)
        x, y = np.concatenate([x, x2]), np.concatenate([y, y2])
        episode = np.concatenate([episode, episode2 + stats['episodes']])
        stats = {'clean': stats, 'second': stats2}
        if args.cache:
            np.savez(args.cache, x=x, y=y, episode=episode, key=key, stats=json.dumps(stats))
    collected = time.monotonic()
    rounds = []
    policy = None
    seconds = {'collect': round(collected - start, 1), 'train': 0.0, 'eval': 0.0,
               'dagger_collect': 0.0}
    for round_index in range(args.dagger_rounds + 1):
        if round_index:  # the last policy drives; its states join the data
            began = time.monotonic()
            x2, y2, episode2 = collect_dagger(
                scene, policy, dagger_plan,
                args.seed_start + DAGGER_SEED_OFFSET + DAGGER_SEED_STRIDE * round_index)
            x, y = np.concatenate([x, x2]), np.concatenate([y, y2])
            episode = np.concatenate([episode, episode2 + episode.max() + 1])
            seconds['dagger_collect'] += round(time.monotonic() - began, 1)
        began = time.monotonic()
        labels = chunk_labels(y, episode, args.chunk)
        train_x, dropped = x, 0
        if args.drop_idle:
            train_x, labels, dropped = without_idle(x, y, labels, scene.space)
        policy, loss = train_mlp(train_x, labels, args.steps, seed=args.seed)
        if args.chunk > 1:
            policy = ChunkRunner(policy, args.chunk, execute, y.shape[1])
        seconds['train'] += round(time.monotonic() - began, 1)
        began = time.monotonic()
        results = evaluate_policy(scene, policy, list(plan), args.eval_episodes)
        seconds['eval'] += round(time.monotonic() - began, 1)
        rounds.append({'round': round_index, 'frames': int(len(train_x)),
                       'idle_dropped': dropped, 'final_loss': round(loss, 4),
                       'results': results})
        if args.dagger_rounds:
            print(f'round {round_index}: ' + ', '.join(
                f'{task} {r["successes"]}/{r["episodes"]}' for task, r in results.items()),
                flush=True)
    scene.close()
    summary = {'arm_noise': args.arm_noise, 'arm_noise_phases': noise_phases,
               'settle': not args.no_settle,
               'expert': args.expert, 'chunk': args.chunk, 'chunk_execute': execute,
               'action_space': scene.space.to_dict(),
               'frames': rounds[-1]['frames'], 'idle_dropped': rounds[-1]['idle_dropped'],
               'collection': stats, 'final_loss': rounds[-1]['final_loss'],
               'seconds': seconds, 'results': results, 'rounds': rounds}
    for task, r in results.items():
        print(f'{task:16s} {r["successes"]:3d}/{r["episodes"]:<3d} {100 * r["rate"]:5.1f} % '
              f'[{100 * r["interval"][0]:.1f}, {100 * r["interval"][1]:.1f}]')
    print(f'frames {summary["frames"]} (idle dropped {summary["idle_dropped"]}), '
          f'collection {stats}, seconds {seconds}')
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w', encoding='utf-8') as stream:
            json.dump(summary, stream, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
