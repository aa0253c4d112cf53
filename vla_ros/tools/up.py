"""
`vla-ros up`: start the graph's nodes as separate processes, the way ros2 launch would.

The same graph as `ros2 launch vla_ros vla_pipeline.launch.py`, for machines without the
launch tools: one process per node (``vla_ros/processes.py``), logs forwarded with the
node name, everything stopped cleanly on Ctrl-C or as soon as one node exits unexpectedly.
"""

import argparse
import sys
import time
from typing import Sequence

from ..graph import pipeline_nodes
from ..paths import default_params_file
from ..processes import ProcessGroup


def main(argv: Sequence[str] = None) -> int:
    """`vla-ros up [--sim] [--params-file F] ...`: run until Ctrl-C or a node dies."""
    parser = argparse.ArgumentParser(prog='vla-ros up', description=__doc__.split('\n')[0])
    parser.add_argument('--params-file', default=default_params_file())
    parser.add_argument('--namespace', default='')
    parser.add_argument('--use-sim-time', action='store_true')
    parser.add_argument('--log-level', default='info')
    parser.add_argument('--sim', action='store_true', help='also start sim_node (MuJoCo)')
    parser.add_argument('--model-file-path', default='', help='policy ONNX for inference_node')
    parser.add_argument('--expert', action='store_true',
                        help='with --sim: the scripted expert (expert_node) in place of '
                             'inference_node')
    parser.add_argument('--dds-profile', action=argparse.BooleanOptionalAction, default=True,
                        help='give the nodes the shipped Fast DDS profile with a large '
                             'shared-memory segment (config/fastdds_large_shm.xml; the '
                             'default, unless FASTRTPS_DEFAULT_PROFILES_FILE is set or '
                             'VLA_ROS_DDS_PROFILE=0); --no-dds-profile: Fast DDS defaults')
    parser.add_argument('--duration', type=float, default=0.0,
                        help='stop after this many seconds (0: run until Ctrl-C)')
    parser.add_argument('--respawn', action='store_true',
                        help='restart a node that exits instead of stopping the graph')
    parser.add_argument('--remap', action='append', default=[], metavar='FROM:=TO',
                        help='remap a topic in every node, e.g. '
                             'camera/image_raw:=/head_camera/color/image_raw (repeatable)')
    args = parser.parse_args(argv)
    if args.expert and not args.sim:
        parser.error("--expert needs --sim (the expert decides from the simulator's state)")
    remaps = []
    for item in args.remap:
        src, sep, dst = item.partition(':=')
        if not (sep and src and dst):
            parser.error(f'--remap needs FROM:=TO, found {item!r}')
        remaps.append((src, dst))
    overrides = {'inference_node': {'model_file_path': args.model_file_path}} \
        if args.model_file_path else {}
    group = ProcessGroup(args.params_file, args.namespace, args.use_sim_time or args.sim,
                         args.log_level, dds_profile=args.dds_profile, respawn=args.respawn)
    group.start_all(pipeline_nodes(with_sim=args.sim, overrides=overrides,
                                   remappings=remaps, expert=args.expert))
    code = 0
    start = time.monotonic()
    try:
        while True:
            problem = group.failed()
            if problem:
                print(f'vla-ros up: {problem}; stopping the graph', file=sys.stderr)
                code = 1
                break
            if args.duration and time.monotonic() - start > args.duration:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    codes = group.stop()
    print(f'vla-ros up: stopped ({", ".join(f"{n}={c}" for n, c in codes.items())})')
    return code
