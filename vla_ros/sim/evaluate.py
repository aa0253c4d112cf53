"""
Evaluate the scripted expert (or any action source) on the simulated tasks.

Runs, in one process, the same chain the ROS graph runs (``sim/pipeline.py``):

    expert action (11-D) → ActionTokenizer.tokenize → uint8 tokens (what inference_node
    publishes) → ActionTokenizer.detokenize (detokenizer_node) → ControlLoop at 20 Hz
    (interpolation_node, parameters from config/vla_ros.yaml) → simulated controllers.

Usage::

    python -m vla_ros.sim.evaluate --episodes 20
    python -m vla_ros.sim.evaluate --tasks pick_block push_block --episodes 5 --json out.json
"""

import argparse
import json
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from vla_ros.core.action_space import ActionSpace, ActionTokenizer
from vla_ros.paths import share_file
from vla_ros.sim.expert import ExpertDecider
from vla_ros.sim.pipeline import Pipeline
from vla_ros.sim.tasks import TASK_NAMES


def evaluate(tasks: Sequence[str], episodes: int, first_seed: int = 0,
             params_file: Optional[str] = None, action_space_file: Optional[str] = None,
             progress: Callable[[str], None] = None) -> Dict:
    """Run the expert over ``episodes`` seeds per task; returns per-task results."""
    space = ActionSpace.from_yaml(action_space_file
                                  or share_file('config', 'action_space.yaml'))
    tokenizer = ActionTokenizer(space)
    pipeline = Pipeline.from_params(tokenizer, params_file)
    env = pipeline.env
    robot = env.robot
    expert = ExpertDecider(robot, tokenizer, pipeline.config.inference_period)
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
