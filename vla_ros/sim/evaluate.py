"""
Evaluate the scripted expert (or any action source) on the simulated tasks.

Runs, in one process, the same chain the ROS graph runs:

    expert action (11-D) → ActionTokenizer.tokenize → uint8 tokens (what inference_node
    publishes) → ActionTokenizer.detokenize (detokenizer_node) → ControlLoop at 20 Hz
    (interpolation_node, parameters from config/vla_ros.yaml) → simulated controllers.

Usage::

    python -m vla_ros.sim.evaluate --episodes 20
    python -m vla_ros.sim.evaluate --tasks pick_block push_block --episodes 5 --json out.json
"""

import argparse
from dataclasses import dataclass
import json
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from vla_ros.core.action_space import ActionSpace, ActionTokenizer
from vla_ros.core.control import ControlConfig, ControlLoop
from vla_ros.core.targets import ComposerConfig, TargetComposer
from vla_ros.graph import node_params
from vla_ros.paths import share_file
from vla_ros.sim.expert import ScriptedExpert
from vla_ros.sim.robot import Robot
from vla_ros.sim.tasks import CONTROL_PERIOD, POLICY_PERIOD, TASK_NAMES, TaskEnv


def _share_file(*parts: str) -> str:
    return share_file(*parts)


def control_config(params_file: Optional[str] = None) -> ControlConfig:
    """Build the interpolation node's ControlConfig from its section of the params file."""
    return ControlConfig.from_params(node_params(params_file, 'interpolation_node'))


@dataclass
class Observation:
    """What the policy gets at one policy tick (and what a dataset frame records)."""

    now: float
    instruction: str
    state: np.ndarray            # previous commanded 11-D target (core/targets.py)
    joint_state: np.ndarray      # measured arm joints (7) + gripper closure
    image: Optional[np.ndarray]  # uint8 [300, 300, 3] when rendering, else None


class Pipeline:
    """Tokens → detokenize → compose → control loop → simulator, stepped in lockstep."""

    def __init__(self, env: TaskEnv, tokenizer: ActionTokenizer, config: ControlConfig,
                 composer: Optional[ComposerConfig] = None):
        if abs(config.control_period - env.control_period) > 1e-12:
            raise ValueError(f'control period {config.control_period} s of the control loop '
                             f'differs from the simulator period {env.control_period} s')
        self.env = env
        self.tokenizer = tokenizer
        self.config = config
        self.ticks_per_target = int(round(config.control_frequency
                                          / config.inference_frequency))
        self.composer = TargetComposer(tokenizer.space, composer)
        self.loop: Optional[ControlLoop] = None

    def start(self):
        """Fresh control loop that takes the measured state, as the node does at start-up."""
        robot = self.env.robot
        self.loop = ControlLoop(self.config)
        now = robot.time
        arm = robot.arm_positions()
        self.loop.start(arm, now, robot.gripper_closure())
        self.loop.set_enabled(True, arm, now)
        self.composer.reset()

    def observe(self, render: bool = False) -> Observation:
        """Return the policy's inputs now (the composer's previous target is the state)."""
        robot = self.env.robot
        now = robot.time
        arm, grip = robot.arm_positions(), robot.gripper_closure()
        return Observation(now=now, instruction=self.env.episode.instruction,
                           state=self.composer.previous(now, arm, grip),
                           joint_state=np.append(arm, grip),
                           image=robot.render() if render else None)

    def run_episode(self, decide: Callable[[Observation], np.ndarray],
                    on_tick: Optional[Callable[[int, np.ndarray], None]] = None,
                    render: bool = False,
                    on_decision: Optional[Callable[[Observation, np.ndarray], None]] = None,
                    extra_time: float = 0.0) -> Dict:
        """
        Run until success (plus ``extra_time`` s) or the time limit.

        ``decide(observation)`` returns the 11 uint8 tokens at the policy rate, as
        inference_node would publish them; they go through the detokenizer's compose rule
        and the interpolation node's control loop to the simulated controllers.
        """
        env = self.env
        self.start()
        tick = 0
        tokens = None
        success_at = None
        while True:
            if env.episode.success and success_at is None:
                success_at = env.robot.time
            if (env.elapsed >= env.episode.time_limit - 1e-9 or (
                    success_at is not None and env.robot.time - success_at >= extra_time - 1e-9)):
                break
            robot = env.robot
            now = robot.time
            arm, grip = robot.arm_positions(), robot.gripper_closure()
            self.loop.on_measured(arm, now)  # as joint_states does
            if tick % self.ticks_per_target == 0:
                obs = self.observe(render)
                tokens = np.asarray(decide(obs), dtype=np.uint8)
                target = self.composer.compose(self.tokenizer.detokenize(tokens), now, arm, grip)
                self.loop.on_target(target[:7], target[7:10], target[10], now)
                if on_decision is not None:
                    on_decision(obs, tokens)
            cmd = self.loop.tick(now)
            env.apply(cmd.arm_positions, cmd.base_velocity, cmd.gripper)
            if on_tick is not None:
                on_tick(tick, tokens)
            env.control_step()
            tick += 1
        status = env.status()
        status['sim_time'] = round(env.elapsed if success_at is None
                                   else success_at - env.episode.start_time, 3)
        return status


class ExpertDecider:
    """The scripted expert as a token source: absolute targets → action-space labels."""

    def __init__(self, robot: Robot, tokenizer: ActionTokenizer, period: float = POLICY_PERIOD,
                 lead_limit: Optional[float] = None):
        """
        Wrap a ScriptedExpert for ``robot``.

        ``lead_limit`` (rad, relative arm spaces only): keep each arm target within this of
        the measured joint, so the previous target never strays far enough from the arm for
        the composer to fall back to the measured arm (core/targets.py). A decider in another
        process than the detokenizer needs it: the two judge that fallback on measurements a
        few milliseconds apart and would otherwise disagree near the threshold.
        """
        space = tokenizer.space
        # Absolute joint targets are snapped to representable bins; deltas need no snapping
        # (they are relative to the exact previous command, quantisation never accumulates).
        self.expert = ScriptedExpert(robot, None if space.relative_arm else tokenizer, period)
        self.tokenizer = tokenizer
        self.lead_limit = lead_limit
        self.last_values: Optional[np.ndarray] = None

    def reset(self, episode):
        """Start on a new episode."""
        self.expert.reset(episode)

    def __call__(self, obs: Observation) -> np.ndarray:
        """Tokens of the expert's next action relative to the observation's state."""
        target = self.expert.act()
        space = self.tokenizer.space
        if self.lead_limit is not None and space.relative_arm:
            measured = np.asarray(obs.joint_state[:7], dtype=np.float64)
            target = target.copy()
            target[:7] = np.clip(target[:7], measured - self.lead_limit,
                                 measured + self.lead_limit)
        # Clipped to the bounds, as tokenize clips: the recorded values are what the
        # tokens mean (a big wrist turn takes several steps of +-0.3 rad).
        self.last_values = np.clip(space.relative_labels(target, obs.state[:7]),
                                   space.low, space.high)
        return self.tokenizer.tokenize(self.last_values)


def evaluate(tasks: Sequence[str], episodes: int, first_seed: int = 0,
             params_file: Optional[str] = None, action_space_file: Optional[str] = None,
             progress: Callable[[str], None] = None) -> Dict:
    """Run the expert over ``episodes`` seeds per task; returns per-task results."""
    space = ActionSpace.from_yaml(action_space_file
                                  or _share_file('config', 'action_space.yaml'))
    tokenizer = ActionTokenizer(space)
    robot = Robot()
    env = TaskEnv(robot, CONTROL_PERIOD)
    pipeline = Pipeline(env, tokenizer, control_config(params_file))
    expert = ExpertDecider(robot, tokenizer, POLICY_PERIOD)
    results: Dict = {}
    for task in tasks:
        runs: List[Dict] = []
        for seed in range(first_seed, first_seed + episodes):
            episode = env.reset(task, seed)
            expert.reset(episode)
            status = pipeline.run_episode(expert)
            runs.append(status)
            if progress is not None:
                progress(f'{task:16s} seed {seed:4d}  {"ok  " if status["success"] else "FAIL"}'
                         f'  {status["sim_time"]:6.2f} s  {episode.instruction}')
        ok = [r for r in runs if r['success']]
        results[task] = {
            'episodes': len(runs), 'successes': len(ok),
            'success_rate': len(ok) / len(runs) if runs else 0.0,
            'mean_time_to_success': (float(np.mean([r['sim_time'] for r in ok]))
                                     if ok else None),
            'failed_seeds': [r['seed'] for r in runs if not r['success']],
        }
    robot.close()
    return results


def format_table(results: Dict) -> str:
    """Plain-text table of per-task success."""
    lines = [f'{"task":16s} {"success":>9s} {"rate":>7s} {"mean t (s)":>11s}  failed seeds']
    for task, r in results.items():
        t = r['mean_time_to_success']
        lines.append(f'{task:16s} {r["successes"]:4d}/{r["episodes"]:<4d} '
                     f'{100 * r["success_rate"]:6.1f}% {("%.2f" % t) if t else "-":>11s}  '
                     f'{r["failed_seeds"] or ""}')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; exit status 1 when a task is below ``--require``."""
    parser = argparse.ArgumentParser(
        prog='python -m vla_ros.sim.evaluate',
        description='Success rate of the scripted expert through tokenizer → control loop → '
                    'MuJoCo, per task, over seeded episodes.')
    parser.add_argument('--episodes', type=int, default=20, help='episodes (seeds) per task')
    parser.add_argument('--first-seed', type=int, default=0)
    parser.add_argument('--tasks', nargs='+', default=TASK_NAMES, choices=TASK_NAMES)
    parser.add_argument('--params-file', default=None,
                        help='parameters YAML (default: config/vla_ros.yaml)')
    parser.add_argument('--action-space', default=None,
                        help='action space YAML (default: config/action_space.yaml)')
    parser.add_argument('--require', type=float, default=0.0,
                        help='minimum success rate per task (0..1) for exit status 0')
    parser.add_argument('--json', default=None, help='also write the results here')
    parser.add_argument('--quiet', action='store_true', help='no per-episode lines')
    args = parser.parse_args(argv)
    start = time.monotonic()
    results = evaluate(args.tasks, args.episodes, args.first_seed, args.params_file,
                       args.action_space, progress=None if args.quiet else print)
    print(format_table(results))
    print(f'wall time {time.monotonic() - start:.1f} s')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as stream:
            json.dump(results, stream, indent=2)
    worst = min(r['success_rate'] for r in results.values())
    return 0 if worst >= args.require else 1


if __name__ == '__main__':
    sys.exit(main())
