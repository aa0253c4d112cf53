"""
``vla-ros collect``: demonstrations (and DAgger data) from the simulated robot.

The scripted expert — or, with ``--policy``, an exported policy whose visited states the
expert labels (DAgger) — runs through the chain the nodes run: tokens → detokenize →
compose with the previous commanded target → ControlLoop at 20 Hz → MuJoCo. At every
policy tick the frame inference_node would see (300x300 rgb8), the instruction, the
previous commanded target (the policy's state input), the measured joints, the expert's
action values and tokens are recorded into a LeRobotDataset v3 folder (``dataset.py``),
with the position of the object the instruction names in the base frame
(``observation.environment_state``: a training target for the auxiliary loss of
``vla-ros train``, which the policy never receives as an input).

Demonstrations that teach recovery (``--arm-noise SIGMA``, DART-style noise injection):
at every policy tick the expert's clean arm delta is the recorded label, but the delta
*executed* is that label plus Gaussian noise, N(0, SIGMA) rad independently per arm joint
(in a tool-delta space: N(0, SIGMA) metres on dx, dy, dz, the rotation clean), clipped to
the action space's bounds. At the next tick the expert re-plans from the target
that was actually commanded (``ScriptedExpert.anchor``), so the recorded states leave the
expert's path and the labels say how to get back. Spared (executed clean): the tick where
the expert's gripper command changes and the ``NOISE_SPARE_TICKS`` ticks after it, so a
grasp or release is never shaken loose, and the expert's precision phases
(``NOISE_SPARED_PHASES``: the final descent to a grasp, the lowering before a release or a
push), whose end the expert decides on the measured tool reaching its goal within
millimetres: noise there keeps the tool from settling, the phase then ends on its time-out
instead, and the recorded data would teach the policy to hover by the block (measured:
descent 7 → 18 policy steps at 0.03 rad). ``--arm-noise-phases`` narrows the noise to some
of the other phases (``NOISE_PHASES``; e.g. ``lift,carry``: the place carry only, where the
learner's carries go astray; recorded as ``vla_ros.arm_noise_phases``). Base and gripper
dimensions are never perturbed.
An episode the perturbed expert fails is dropped (counted as ``expert_failures``), as clean
ones are. The noise is drawn from a generator seeded by (seed, task), so a perturbed
collection is as deterministic as a clean one.

The labelling expert (``--expert``): the phase machine (``sim.expert.ScriptedExpert``, the
recorded datasets') or ``reactive`` (``ReactiveExpert``: pick, place and push decided from
the state alone, so a DAgger label does not depend on the expert's own history). The
dataset's ``meta/info.json`` records which (``vla_ros.expert``). ``--release-xy`` widens the
reactive expert's release zone for DAgger labels (recorded as ``vla_ros.release_xy`` with
the reactive expert; resuming a folder with another zone is refused): with
the default 8 mm, a learner that aims within a few centimetres is told "closer" forever and
never shown the lowering. ``--place-carry low`` makes the reactive expert carry the block at
the release height and open it as soon as it is over the bowl, with no lowering;
``--place-carry axes`` keeps the high carry with its step limited per axis, not along the
line to the bowl (recorded as ``vla_ros.place_carry``; a resume with another carry is
refused).

Demonstrations that teach a second attempt (``--place-miss FRACTION``, reactive expert):
in that fraction of the place episodes the arm is *driven* by a misled copy of the expert,
which believes the bowl is ``MISS_DISTANCE`` (8-22 cm, in a random direction, the aim kept
in ``MISS_AREA`` and 10 cm from the block's start) from where it is: it picks the block,
carries it there, lowers it and opens, and runs ``MISS_AFTER_OPEN`` ticks more while the
block falls and the tool rises. From then on the clean expert drives: it picks the block
up where it fell and puts it in the bowl. Only that second attempt is recorded: the
episode starts with the block beside the bowl, the fingers open, the tool rising (a policy
trained on clean demonstrations, once it has let go of the block beside the bowl, never
tries again). The misled attempt is not recorded: labelled by the clean expert, its frames
taught worse carries (docs/model-card.md). The draws depend on (seed, task) only; an
episode whose second attempt fails, or whose misled attempt lands in the bowl, is dropped
(``expert_failures``) like a failed one; ``misled_episodes`` counts those kept.
Recorded as ``vla_ros.place_miss`` (a resume with another fraction is refused).

Deterministic by seed: episode k of task T uses seed ``seed_start + k`` (seeds whose
(task, colour) is held out for evaluation are skipped). Resumable: episodes already in the
folder are skipped; data is flushed every ``--flush-every`` episodes.

Collection seeds are below ``EVAL_SEED_START``; ``vla-ros eval`` uses seeds from there on.
"""

import argparse
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import dataset as ds, instructions
from .learner import LearnerDecider
from .progress import Progress
from .train_data import pool_image, write_cache
from ..core.action_space import ActionSpace, ActionTokenizer
from ..paths import default_action_space_file
from ..sim.expert import EXPERT_KINDS, ExpertDecider, PLACE_CARRIES
from ..sim.pipeline import Observation, Pipeline
from ..sim.tasks import TASK_NAMES
from ..verbs import guarded

EVAL_SEED_START = 100_000
DEFAULT_EPISODES = {'pick_block': 500, 'place_in_bowl': 400, 'push_block': 400,
                    'drive_to_marker': 300, 'gripper': 100}
# Seconds recorded after the success check first passes (the policy learns to finish).
AFTER_SUCCESS = 1.0
# Policy ticks after a gripper event executed without arm noise.
NOISE_SPARE_TICKS = 2
# Expert phases executed without arm noise (see the module docstring).
NOISE_SPARED_PHASES = frozenset({'descend', 'close', 'lower', 'release'})
# The experts' other arm phases: what ``--arm-noise-phases`` may name.
NOISE_PHASES = frozenset({'start', 'pregrasp', 'open', 'lift', 'carry', 'retreat', 'above',
                          'push'})


class ArmNoise:
    """DART-style noise on the executed arm delta (module docstring); labels stay clean."""

    def __init__(self, sigma: float, space: ActionSpace, tokenizer: ActionTokenizer,
                 phases: Optional[Sequence[str]] = None):
        """
        Perturb the executed arm delta by ``sigma``.

        ``phases``: perturb only in these expert phases (None: every phase but
        ``NOISE_SPARED_PHASES``, which are never perturbed).
        """
        if sigma < 0.0 or not np.isfinite(sigma):
            raise ValueError(f'--arm-noise must be a finite value >= 0, got {sigma}')
        if sigma > 0.0 and not space.relative_arm:
            raise ValueError('--arm-noise needs a relative arm action space (joint or tool '
                             'deltas)')
        if phases is not None:
            phases = frozenset(phases)
            bad = sorted(phases - NOISE_PHASES)
            if bad or not phases:
                raise ValueError(f'--arm-noise-phases must name some of '
                                 f'{", ".join(sorted(NOISE_PHASES))}, got '
                                 f'{", ".join(sorted(phases)) or "none"}')
            if sigma == 0.0:
                raise ValueError('--arm-noise-phases needs --arm-noise > 0')
        self.sigma = float(sigma)
        self.phases = phases
        self.space = space
        self.tokenizer = tokenizer
        self.rng = np.random.default_rng(0)
        self.last_grip: Optional[float] = None
        self.quiet_until = -1
        self.tick = 0

    def reset(self, task: str, seed: int):
        """Start an episode: the draws depend on (seed, task) only."""
        self.rng = np.random.default_rng([int(seed), TASK_NAMES.index(task), 0xDA47])
        self.last_grip = None
        self.quiet_until = -1
        self.tick = 0

    def __call__(self, values: np.ndarray, labels: np.ndarray,
                 phase: Optional[str] = None) -> np.ndarray:
        """Tokens to execute for the clean action ``values`` (tokens ``labels``)."""
        tick, self.tick = self.tick, self.tick + 1
        grip = float(values[10])
        if self.last_grip is not None and grip != self.last_grip:
            self.quiet_until = tick + NOISE_SPARE_TICKS
        self.last_grip = grip
        # Draw every tick (spared or not) so one episode's draws never depend on its events.
        noise = self.rng.normal(0.0, self.sigma, 7) if self.sigma > 0.0 else np.zeros(7)
        if self.space.tool_arm:
            noise[3:] = 0.0  # tool deltas: metres on dx, dy, dz; the tool's turn stays clean
        if (self.sigma == 0.0 or tick <= self.quiet_until or phase in NOISE_SPARED_PHASES
                or (self.phases is not None and phase not in self.phases)):
            return labels
        executed = np.array(values, dtype=np.float64)
        executed[:7] = np.clip(executed[:7] + noise, self.space.low[:7], self.space.high[:7])
        return self.tokenizer.tokenize(executed)


# --place-miss: how far from the bowl's centre the misled attempt aims (m); the area its aim
# stays in (world x and y ranges, m: where blocks and bowls are drawn, so the arm reaches a
# block that falls there); how far from the block's start (m: the misled expert would take
# a block there as placed); how many policy ticks it drives after it opens the fingers (the
# block falls, the tool starts to rise).
MISS_DISTANCE = (0.08, 0.22)
MISS_AREA = ((0.48, 0.68), (-0.22, 0.22))
MISS_FROM_BLOCK = 0.10
MISS_AFTER_OPEN = 5


class PlaceMiss:
    """A first place attempt aimed off the bowl (module docstring), driven, not recorded."""

    def __init__(self, fraction: float, robot, tokenizer: ActionTokenizer,
                 period: float, expert_kind: str, release_xy: Optional[float],
                 place_carry: str):
        if not 0.0 <= fraction <= 1.0:  # NaN fails too
            raise ValueError(f'--place-miss must be a fraction in [0, 1], got {fraction}')
        if fraction > 0.0 and expert_kind != 'reactive':
            raise ValueError('--place-miss needs --expert reactive (the misled attempt is '
                             'the reactive expert aiming at the wrong place)')
        self.fraction = float(fraction)
        self.misled = (ExpertDecider(robot, tokenizer, period, kind='reactive',
                                     release_xy=release_xy, place_carry=place_carry)
                       if fraction > 0.0 else None)
        self.robot = robot
        self.active = False
        self.opened_at: Optional[int] = None
        self.tick = 0

    def reset(self, episode, seed: int) -> bool:
        """Start an episode; return whether its first attempt is misled."""
        self.active, self.opened_at, self.tick = False, None, 0
        if self.misled is None or episode.task != 'place_in_bowl':
            return False
        rng = np.random.default_rng([int(seed), TASK_NAMES.index(episode.task), 0x3155])
        misled = rng.random() < self.fraction
        bowl = self.robot.body_position('bowl')
        block = self.robot.body_position(f'block_{episode.params["colour"]}')
        for _ in range(64):  # an aim in the area; every layout has one within a few draws
            distance = rng.uniform(*MISS_DISTANCE)
            angle = rng.uniform(-np.pi, np.pi)
            offset = distance * np.array([np.cos(angle), np.sin(angle), 0.0])
            aim = bowl[:2] + offset[:2]
            if (all(lo <= v <= hi for v, (lo, hi) in zip(aim, MISS_AREA))
                    and np.linalg.norm(aim - block[:2]) >= MISS_FROM_BLOCK):
                break
        else:
            return False
        self.misled.reset(episode)
        self.misled.expert.bowl_offset = offset
        self.active = misled
        return misled

    def __call__(self, obs: Observation, labels: np.ndarray) -> np.ndarray:
        """Tokens to execute: the misled expert's until its release is over, then ``labels``."""
        if not self.active:
            return labels
        tick, self.tick = self.tick, self.tick + 1
        tokens = self.misled(obs)
        expert = self.misled.expert
        if self.opened_at is None and expert.phase == 'release' and not expert.gripper:
            self.opened_at = tick
        if self.opened_at is None:
            return tokens
        if tick >= self.opened_at + MISS_AFTER_OPEN:
            self.active = False
            return labels
        # Opened: the fingers stay open (the misled expert would close them again on a block
        # still between them), the arm does what the misled expert says.
        values = np.array(self.misled.last_values, dtype=np.float64)
        values[10] = 0.0
        return self.misled.tokenizer.tokenize(values)


def parse_noise_phases(text: Optional[str]) -> Optional[List[str]]:
    """Parse ``--arm-noise-phases`` (``lift,carry``); None stays None (every phase)."""
    return None if text is None else [p.strip() for p in text.split(',') if p.strip()]


def parse_episodes(text: str) -> Dict[str, int]:
    """Parse ``pick_block=500,gripper=100`` (or one number for every task)."""
    if text.strip().isdigit():
        return {t: int(text) for t in TASK_NAMES}
    out = {}
    for part in text.split(','):
        task, _, n = part.partition('=')
        if task not in TASK_NAMES or not n.strip().isdigit():
            raise ValueError(f'bad --episodes entry {part!r}; expected task=N with task in '
                             f'{TASK_NAMES}')
        out[task] = int(n)
    return out


def collect(out: str, episodes: Dict[str, int], seed_start: int = 0,
            action_space_file: Optional[str] = None, params_file: Optional[str] = None,
            policy_dir: Optional[str] = None, flush_every: int = 50,
            quiet: bool = False, arm_noise: float = 0.0,
            cache_factors: Sequence[int] = (), expert_kind: str = 'phases',
            release_xy: Optional[float] = None, place_carry: str = 'high',
            place_miss: float = 0.0, arm_noise_phases: Optional[Sequence[str]] = None) -> Dict:
    """
    Collect episodes into ``out``; returns counts. See the module docstring.

    ``expert_kind``: the labelling expert (``sim.expert.EXPERT_KINDS``); ``release_xy``:
    the reactive expert's release zone (m; None: its default); ``place_carry``: its place
    carry (``PLACE_CARRIES``); ``place_miss``: the fraction of place episodes whose first
    attempt is misled; ``arm_noise_phases``: the expert phases ``arm_noise`` perturbs
    (None: all but the precision phases; module docstring).

    ``cache_factors``: also write the training image cache at these pooling factors
    (what ``vla-ros train`` would otherwise decode from the videos) when the run ends; a
    new folder only, and frames are held in memory until then.
    """
    space_file = action_space_file or default_action_space_file()
    space = ActionSpace.from_yaml(space_file)
    tokenizer = ActionTokenizer(space)
    pipeline = Pipeline.from_params(tokenizer, params_file)
    env = pipeline.env
    robot = env.robot
    expert = ExpertDecider(robot, tokenizer, pipeline.config.inference_period,
                           kind=expert_kind, release_xy=release_xy,
                           place_carry=place_carry)
    learner = LearnerDecider(policy_dir, space) if policy_dir else None
    noise = ArmNoise(arm_noise, space, tokenizer, arm_noise_phases)
    miss = PlaceMiss(place_miss, robot, tokenizer, pipeline.config.inference_period,
                     expert_kind, release_xy, place_carry)
    if miss.fraction > 0.0 and learner is not None:
        raise ValueError('--place-miss applies to demonstrations, not to DAgger (--policy)')
    fps = int(round(pipeline.config.inference_frequency))
    meta = {'vla_ros.action_space': space.to_dict(), 'vla_ros.source': (
        'dagger' if learner else 'expert'), 'vla_ros.arm_noise': float(arm_noise),
        'vla_ros.expert': expert_kind}
    if noise.phases is not None:  # absent otherwise: earlier folders keep their identity
        meta['vla_ros.arm_noise_phases'] = sorted(noise.phases)
    if expert_kind == 'reactive':  # a resumed folder must have the same zone
        meta['vla_ros.release_xy'] = float(expert.expert.release_xy)
        meta['vla_ros.place_carry'] = expert.expert.place_carry
        if miss.fraction > 0.0:  # absent otherwise: earlier folders keep their identity
            meta['vla_ros.place_miss'] = miss.fraction
    writer = ds.DatasetWriter(out, fps, meta)
    done = {(e['task'], e['seed']) for e in writer.episodes}
    if cache_factors and writer.episodes:
        raise ValueError(f'--cache needs a new folder; {out} already holds episodes')
    pooled: Dict[int, List[np.ndarray]] = {int(f): [] for f in cache_factors}
    plan = []
    for task, count in episodes.items():
        seed, planned = seed_start, 0
        while planned < count:
            if seed >= EVAL_SEED_START:
                raise ValueError(f'collection seeds must stay below {EVAL_SEED_START} '
                                 '(evaluation seeds)')
            plan.append((task, seed))
            seed += 1
            planned += 1
    total = len(plan)
    progress = Progress(total, 'collect', quiet=quiet)
    stats = {'episodes': 0, 'frames': 0, 'skipped_held_out': 0, 'expert_failures': 0,
             'resumed': 0, 'misled_episodes': 0}
    start = time.monotonic()
    for task, seed in plan:
        progress.step()
        if (task, seed) in done:
            stats['resumed'] += 1
            continue
        episode = env.reset(task, seed)
        if instructions.is_held_out(task, episode.params):
            stats['skipped_held_out'] += 1
            continue
        expert.reset(episode)
        noise.reset(task, seed)
        misled = miss.reset(episode, seed)
        if learner is not None:
            learner.reset()
        frames: List[ds.Frame] = []

        landed = []  # the misled attempt put the block in the bowl: not a second attempt

        def decide(obs: Observation) -> np.ndarray:
            if learner is not None or noise.sigma > 0.0 or misled:
                # The learner (the noise, the misled attempt) moved the arm: the expert
                # continues from the target that was really commanded.
                expert.expert.anchor(obs.state[:7])
            labels = expert(obs)
            if learner is not None:
                executed = learner(obs)
            elif miss.active:
                executed = miss(obs, labels)
                if miss.active:  # the misled attempt is driven, not recorded
                    if env.episode.success:
                        landed.append(obs.now)
                    return executed
            else:
                executed = noise(expert.last_values, labels, expert.expert.phase)
            frames.append(ds.Frame(image=obs.image, state=obs.state,
                                   joint_state=obs.joint_state,
                                   action=expert.last_values, tokens=labels,
                                   target=env.target_in_base()))
            return executed

        status = pipeline.run_episode(decide, render=True, extra_time=AFTER_SUCCESS)
        if (not status['success'] or not frames or landed) and learner is None:
            stats['expert_failures'] += 1
            continue
        for frame in frames:
            frame.success = False
        frames[-1].success = bool(status['success'])
        writer.add_episode(frames, episode.instruction, {
            'task': task, 'seed': int(seed), 'success': bool(status['success']),
            'colour': episode.params.get('colour', ''),
            'direction': episode.params.get('direction', ''),
            'close': bool(episode.params.get('close', False)),
            'source': 'dagger' if learner else 'expert', 'arm_noise': float(arm_noise)})
        for factor, kept in pooled.items():
            kept.extend(pool_image(f.image, factor) for f in frames)
        stats['episodes'] += 1
        stats['misled_episodes'] += int(misled)
        stats['frames'] += len(frames)
        progress.note(f'{stats["frames"]} frames, '
                      f'{stats["frames"] / max(1e-9, time.monotonic() - start):.0f} frames/s')
        if stats['episodes'] % flush_every == 0:
            writer.close()
            writer = ds.DatasetWriter(out, fps, meta)
    writer.close()
    progress.close()
    robot.close()
    for factor, kept in pooled.items():
        if kept:
            write_cache(out, factor, np.stack(kept))
    stats['seconds'] = round(time.monotonic() - start, 1)
    return stats


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vla-ros collect``."""
    parser = argparse.ArgumentParser(
        prog='vla-ros collect', description='Record expert (or DAgger) demonstrations from '
        'the simulated robot into a LeRobotDataset v3 folder.')
    parser.add_argument('--out', required=True, help='dataset folder (created or resumed)')
    parser.add_argument('--episodes', default=','.join(f'{k}={v}' for k, v in
                                                       DEFAULT_EPISODES.items()),
                        help='episodes per task: N for all, or task=N,... '
                        '(default %(default)s)')
    parser.add_argument('--seed-start', type=int, default=0,
                        help=f'first seed (collection seeds stay below {EVAL_SEED_START})')
    parser.add_argument('--action-space', default=None,
                        help='action space YAML (default: config/action_space.yaml)')
    parser.add_argument('--params-file', default=None, help='parameters YAML (control loop)')
    parser.add_argument('--policy', default=None, metavar='MODEL_DIR',
                        help='DAgger: run this exported policy, label with the expert')
    parser.add_argument('--arm-noise', type=float, default=0.0, metavar='SIGMA',
                        help='DART: execute the expert arm delta plus N(0, SIGMA) rad per joint '
                        '(metres on dx, dy, dz in a tool-delta space), '
                        'record the clean label (default 0: clean demonstrations)')
    parser.add_argument('--arm-noise-phases', default=None, metavar='PHASES',
                        help='perturb only in these expert phases (comma-separated, e.g. '
                        'lift,carry; default: every phase but the final descent, the grasp, '
                        'the lowering and the release)')
    parser.add_argument('--expert', choices=EXPERT_KINDS, default='phases',
                        help='the labelling expert: the phase machine or the reactive one, '
                        'whose label depends on the state only (sim/expert.py; default '
                        '%(default)s)')
    parser.add_argument('--release-xy', type=float, default=None, metavar='METRES',
                        help='reactive expert only: start the lowering to the release within '
                        'this of the point over the bowl (default 0.008); a wider zone '
                        'labels DAgger states a learner can reach')
    parser.add_argument('--place-carry', choices=PLACE_CARRIES, default='high',
                        help='reactive expert only: high carries the block at 58 cm and lowers '
                        'it over the bowl (default); low carries it at the release height and '
                        'opens as soon as it is over the bowl; axes is high with its '
                        'step limited per axis')
    parser.add_argument('--place-miss', type=float, default=0.0, metavar='FRACTION',
                        help='reactive expert only: in this fraction of the place episodes a '
                        'misled expert releases the block 8-22 cm from the bowl, then the '
                        'clean one picks it up again and places it; only that second attempt '
                        'is recorded (default 0)')
    parser.add_argument('--flush-every', type=int, default=50)
    parser.add_argument('--cache', default='', metavar='FACTORS',
                        help='also write the training image cache at these pooling factors '
                        '(comma-separated, e.g. 1,2,3 for 300/150/100 px) at the end, so '
                        'training skips decoding the videos; a new folder only')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args(argv)
    stats = guarded('collect', lambda: collect(
        args.out, parse_episodes(args.episodes), args.seed_start, args.action_space,
        args.params_file, args.policy, args.flush_every, args.quiet, args.arm_noise,
        [int(f) for f in args.cache.split(',') if f.strip()], args.expert,
        args.release_xy, args.place_carry, args.place_miss,
        parse_noise_phases(args.arm_noise_phases)))
    if stats is not None:
        print(f'collected {stats}')
    return 0 if stats is not None else 2


if __name__ == '__main__':
    sys.exit(main())
