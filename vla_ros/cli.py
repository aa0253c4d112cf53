"""Command line entry point: one verb per job, each implemented in vla_ros.tools."""

import importlib
import os
import sys
from typing import Sequence

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# MuJoCo renders headless through EGL unless told otherwise (eval, collect, sim_node).
os.environ.setdefault('MUJOCO_GL', 'egl')

VERBS = {
    'up': ('vla_ros.tools.up', 'start the pipeline nodes as processes (--sim adds MuJoCo)'),
    'serve': ('vla_ros.serve.cli', 'serve a policy over gRPC to remote robots (TLS + auth)'),
    'demo': ('vla_ros.tools.demo', 'closed-loop demo in simulation; writes a run folder'),
    'export': ('vla_ros.tools.export', 'export an RT-1 configuration + text encoder to ONNX'),
    'collect': ('vla_ros.learning.collect', 'record expert / DAgger demonstrations (sim)'),
    'train': ('vla_ros.learning.train', 'behaviour cloning of RT-1 on datasets'),
    'eval': ('vla_ros.learning.evaluate', 'closed-loop success of an exported policy'),
    'oracle': ('vla_ros.learning.oracle', 'the recipe on privileged state: control or vision?'),
    'probe-block': ('vla_ros.learning.block_probe', 'named block position error (cm), images'),
    'record': ('vla_ros.bag.record', 'record the graph topics into a rosbag2 bag'),
    'play': ('vla_ros.bag.play', 'publish a rosbag2 bag at its recorded timing'),
    'dataset': ('vla_ros.learning.from_bag', '`dataset from-bag`: bags → LeRobotDataset v3'),
    'golden': ('vla_ros.testing.golden', 'golden replay of a bag through the nodes (tests)'),
    'bench': (None, 'benchmarks: `bench pipeline`, `bench model`, `bench remote`, '
                    '`bench remote-loop` or `bench sim`'),
    'test-model': ('vla_ros.testing.known_model', 'write the known-function test policy'),
}
BENCHES = {'pipeline': 'vla_ros.tools.bench_pipeline', 'model': 'vla_ros.tools.bench_model',
           'remote': 'vla_ros.tools.bench_remote',
           'remote-loop': 'vla_ros.tools.bench_remote_loop', 'sim': 'vla_ros.tools.bench_sim'}


def _usage() -> str:
    lines = ['usage: vla-ros <verb> [options]', '', 'verbs:']
    lines += [f'  {verb:<11} {text}' for verb, (_, text) in VERBS.items()]
    return '\n'.join(lines)


def main(argv: Sequence[str] = None) -> int:
    """Run one verb by handing the remaining arguments to its module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f'vla-ros: unknown verb {verb!r}\n\n{_usage()}', file=sys.stderr)
        return 2
    module = VERBS[verb][0]
    if verb == 'bench':
        if not rest or rest[0] not in BENCHES:
            print(f'usage: vla-ros bench {{{"|".join(BENCHES)}}} [options]', file=sys.stderr)
            return 2
        module, rest = BENCHES[rest[0]], rest[1:]
    code = importlib.import_module(module).main(rest)
    return int(code or 0)


if __name__ == '__main__':
    sys.exit(main())
