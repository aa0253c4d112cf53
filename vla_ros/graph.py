"""
The pipeline graph as data: one definition for `ros2 launch` and for `vla-ros up`.

Both launchers read ``pipeline_nodes``: the executable names, the parameters file and the
remappings. Keeping them here means a robot launch and a local run cannot drift apart.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

from .paths import default_dds_profile, default_params_file

# (executable, node name). Start order does not order DDS discovery; the managed nodes
# (lifecycle) start unconfigured and holding, and lifecycle_manager brings them up once
# every one of them is reachable.
PIPELINE = (
    ('interpolation_node', 'interpolation_node'),
    ('detokenizer_node', 'detokenizer_node'),
    ('inference_node', 'inference_node'),
    ('camera_node', 'camera_node'),
)
SIM = ('sim_node', 'sim_node')
# The scripted expert: decides from sim_node's ground truth (sim/state) in place of the
# policy (inference_node), for demonstrations and for tests of the graph below the policy.
EXPERT = ('expert_node', 'expert_node')
# Managed (lifecycle) nodes, in bring-up order, and the node that manages them.
MANAGED = ('interpolation_node', 'inference_node')
MANAGER = ('lifecycle_manager', 'lifecycle_manager')

# Remappings shared by every node; topic names in code are relative and by content.
DEFAULT_REMAPPINGS: Tuple[Tuple[str, str], ...] = ()
# The robot-facing topics, each renamed by a launch argument (`ros2 launch ...
# camera_topic:=/head_camera/color/image_raw`) or `vla-ros up --remap`: the remapping is
# given to every node, so no code or file changes to fit a robot.
ROBOT_TOPICS: Dict[str, str] = {
    'camera_topic': 'camera/image_raw',
    'joint_states_topic': 'joint_states',
    'arm_commands_topic': 'arm_controller/commands',
    'arm_trajectory_topic': 'arm_controller/joint_trajectory',
    'cmd_vel_topic': 'cmd_vel',
    'gripper_commands_topic': 'gripper_controller/commands',
}


def topic_remappings(values: Mapping[str, str]) -> Tuple[Tuple[str, str], ...]:
    """Return (from, to) for every robot topic argument in ``values`` that renames it."""
    return tuple((ROBOT_TOPICS[arg], value) for arg, value in values.items()
                 if arg in ROBOT_TOPICS and value and value != ROBOT_TOPICS[arg])


# The transport every launcher gives the nodes (config/fastdds_large_shm.xml): Fast DDS's
# default shared-memory segment is smaller than one 640x480 rgb8 frame, so such frames fall
# back to fragmented UDP and most of them are lost (README, "Fast DDS"). Off switch:
# VLA_ROS_DDS_PROFILE=0, `--no-dds-profile`, or the launch argument dds_profile:=false.
DDS_PROFILE_SWITCH = 'VLA_ROS_DDS_PROFILE'
DDS_PROFILE_VARS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')
FAST_DDS_RMWS = ('rmw_fastrtps_cpp', 'rmw_fastrtps_dynamic_cpp')


def dds_profile_env(env: Mapping[str, str], enabled: bool = True) -> Dict[str, str]:
    """
    Return the variables to add to a node's environment for the shipped Fast DDS profile.

    Empty when switched off (``enabled`` false or ``VLA_ROS_DDS_PROFILE`` 0/false/off/no),
    when the user already chose a Fast DDS profile file, or when the RMW is not Fast DDS
    (Jazzy's and Humble's default is).
    """
    switch = env.get(DDS_PROFILE_SWITCH, '').strip().lower()
    if not enabled or switch in ('0', 'false', 'off', 'no'):
        return {}
    if any(env.get(name) for name in DDS_PROFILE_VARS):
        return {}
    if (env.get('RMW_IMPLEMENTATION') or FAST_DDS_RMWS[0]) not in FAST_DDS_RMWS:
        return {}
    # UDP stays on loopback only while discovery is local. Unset, the range is the RMW's
    # default (SUBNET on Jazzy; on Humble, ROS_LOCALHOST_ONLY=1 means local): a robot
    # launched without it must stay visible to other machines.
    scope = env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '').strip().upper()
    local = scope == 'LOCALHOST' or (not scope and env.get('ROS_LOCALHOST_ONLY', '') == '1')
    return {DDS_PROFILE_VARS[0]: default_dds_profile(network=not local)}


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph."""

    executable: str
    name: str
    remappings: Tuple[Tuple[str, str], ...] = DEFAULT_REMAPPINGS
    parameters: Dict[str, object] = field(default_factory=dict)


def pipeline_nodes(with_sim: bool = False, overrides: Dict[str, Dict[str, object]] = None,
                   without: Sequence[str] = (),
                   remappings: Sequence[Tuple[str, str]] = (),
                   expert: bool = False) -> List[NodeSpec]:
    """
    Return the nodes to start, lifecycle_manager included for the managed ones.

    ``overrides`` adds parameters per node name; ``without`` leaves nodes out (the manager
    then manages only those that remain); ``remappings`` go to every node. ``expert``
    (simulation only) replaces inference_node by expert_node and has sim_node publish the
    ground truth it decides from.
    """
    overrides = dict(overrides or {})
    specs = [SIM] + list(PIPELINE) if with_sim else list(PIPELINE)
    if expert:
        if not with_sim:
            raise ValueError('the scripted expert needs the simulator (with_sim)')
        specs = [EXPERT if spec[1] == 'inference_node' else spec for spec in specs]
        overrides[SIM[1]] = {**overrides.get(SIM[1], {}), 'publish_sim_state': True}
    remaps = DEFAULT_REMAPPINGS + tuple(remappings)
    nodes = [NodeSpec(exe, name, remaps, dict(overrides.get(name, {})))
             for exe, name in specs if name not in without]
    return with_manager(nodes, overrides.get(MANAGER[1]))


def with_manager(nodes: List[NodeSpec], parameters: Dict[str, object] = None
                 ) -> List[NodeSpec]:
    """Add lifecycle_manager for the managed nodes among ``nodes`` (none: unchanged)."""
    names = [n.name for n in nodes]
    managed = [name for name in MANAGED if name in names]
    if not managed or MANAGER[1] in names:
        return list(nodes)
    params = {'node_names': managed, **(parameters or {})}
    return list(nodes) + [NodeSpec(MANAGER[0], MANAGER[1], parameters=params)]


def ros_args(spec: NodeSpec, params_file: str, namespace: str = '', use_sim_time: bool = False,
             log_level: str = 'info') -> List[str]:
    """Command-line ``--ros-args`` for one node (what launch_ros would generate)."""
    args = ['--ros-args', '-r', f'__node:={spec.name}', '--log-level', log_level]
    if namespace:
        args += ['-r', f'__ns:={namespace}']
    if params_file:
        args += ['--params-file', params_file]
    if use_sim_time:
        args += ['-p', f'{spec.name}:use_sim_time:=true']
    # Node-qualified: a plain `-p key:=value` counts as `/**` and loses to the parameters
    # file's `/**/<node>` section.
    for key, value in spec.parameters.items():
        args += ['-p', f'{spec.name}:{key}:={_param_text(value)}']
    for src, dst in spec.remappings:
        args += ['-r', f'{src}:={dst}']
    return args


def _param_text(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(_param_text(v) for v in value) + ']'
    return str(value)


def node_params(params_file: str, node: str) -> Dict[str, object]:
    """
    Return the ``ros__parameters`` of one node from a parameters file.

    Accepts the key forms rcl accepts for a node in any namespace: ``/**/<node>``,
    ``<node>`` and ``/**`` (parameters for every node, overridden by the node's own).
    """
    import yaml
    if not params_file:
        params_file = default_params_file()
    with open(params_file, 'r', encoding='utf-8') as stream:
        data = yaml.safe_load(stream) or {}
    out: Dict[str, object] = {}
    for key in ('/**', node, f'/{node}', f'/**/{node}'):
        section = data.get(key) or {}
        out.update(section.get('ros__parameters') or {})
    return out
