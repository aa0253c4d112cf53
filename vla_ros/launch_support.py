"""
launch_ros helpers shared by launch/vla_pipeline.launch.py and launch/vla_sim.launch.py.

Imported only by launch files (it needs launch and launch_ros, which a robot has and this
workplace cannot install); the node list itself is data in vla_ros.graph.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from .graph import dds_profile_env, pipeline_nodes, ROBOT_TOPICS, topic_remappings


def launch_arguments():
    """Return the declared arguments shared by the pipeline and simulation launches."""
    share = get_package_share_directory('vla_ros')
    arguments = (  # (name, default, description)
        ('params_file', os.path.join(share, 'config', 'vla_ros.yaml'),
         'Parameters file (one /**/<node> key per node).'),
        ('namespace', '', 'Namespace for all nodes.'),
        ('use_sim_time', 'false', 'Use /clock (simulation or bag replay).'),
        ('log_level', 'info', 'Log level for all nodes.'),
        ('model_file_path', '', 'Exported policy ONNX for inference_node; empty: the params '
         'file, else share/vla_ros/models/rt1_nano.'),
        ('dds_profile', 'true', 'Give the nodes config/fastdds_large_shm.xml (Fast DDS shared '
         'memory large enough for camera frames) unless FASTRTPS_DEFAULT_PROFILES_FILE is '
         'set; export it for the camera driver too.'),
        ('respawn', 'false', 'Restart a node that exits (lifecycle_manager brings a '
         'restarted managed node up again).'),
        ('respawn_delay', '2.0', 'Seconds before a node is restarted.'),
        ('expert', 'false', 'vla_sim.launch.py only: the scripted expert (expert_node, from '
         'sim/state) in place of inference_node.'),
    ) + tuple((arg, topic, f'Name of the robot topic {topic} (remapped in every node).')
              for arg, topic in ROBOT_TOPICS.items())
    return [DeclareLaunchArgument(name, default_value=default, description=description)
            for name, default, description in arguments]


def node_actions(context, with_sim=False):
    """Build one Node action per graph node from the resolved launch arguments."""
    params_file = LaunchConfiguration('params_file').perform(context)
    namespace = LaunchConfiguration('namespace').perform(context)
    use_sim_time = LaunchConfiguration('use_sim_time').perform(context).lower() == 'true'
    log_level = LaunchConfiguration('log_level').perform(context)
    model_file_path = LaunchConfiguration('model_file_path').perform(context)
    dds = LaunchConfiguration('dds_profile').perform(context).lower() == 'true'
    env = dds_profile_env(os.environ, dds)
    respawn = LaunchConfiguration('respawn').perform(context).lower() == 'true'
    respawn_delay = float(LaunchConfiguration('respawn_delay').perform(context))
    remaps = topic_remappings({arg: LaunchConfiguration(arg).perform(context)
                               for arg in ROBOT_TOPICS})
    expert = with_sim and LaunchConfiguration('expert').perform(context).lower() == 'true'
    actions = []
    for spec in pipeline_nodes(with_sim=with_sim, remappings=remaps, expert=expert):
        parameters = [params_file, {'use_sim_time': use_sim_time or with_sim}]
        # Only an explicit argument overrides a model path set in the params file.
        if spec.name == 'inference_node' and model_file_path:
            parameters.append({'model_file_path': model_file_path})
        if spec.parameters:  # lifecycle_manager: the managed nodes of this graph
            parameters.append(dict(spec.parameters))
        actions.append(Node(
            package='vla_ros', executable=spec.executable, name=spec.name,
            namespace=namespace, output='screen', parameters=parameters,
            remappings=list(spec.remappings), additional_env=env, respawn=respawn,
            respawn_delay=respawn_delay,
            arguments=['--ros-args', '--log-level', log_level]))
    return actions
