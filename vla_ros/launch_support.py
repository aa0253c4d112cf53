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
    return [
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'vla_ros.yaml'),
                              description='Parameters file (one /**/<node> key per node).'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace for all nodes.'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock (simulation or bag replay).'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='Log level for all nodes.'),
        DeclareLaunchArgument('model_file_path', default_value='',
                              description='Exported policy ONNX for inference_node; empty: '
                                          'the params file, else share/vla_ros/models/'
                                          'rt1_nano.'),
        DeclareLaunchArgument('dds_profile', default_value='true',
                              description='Give the nodes config/fastdds_large_shm.xml (Fast '
                                          'DDS shared memory large enough for camera frames) '
                                          'unless FASTRTPS_DEFAULT_PROFILES_FILE is set; '
                                          'export it for the camera driver too.'),
        DeclareLaunchArgument('respawn', default_value='false',
                              description='Restart a node that exits (lifecycle_manager '
                                          'brings a restarted managed node up again).'),
        DeclareLaunchArgument('respawn_delay', default_value='2.0',
                              description='Seconds before a node is restarted.'),
        DeclareLaunchArgument('expert', default_value='false',
                              description='vla_sim.launch.py only: the scripted expert '
                                          '(expert_node, from sim/state) in place of '
                                          'inference_node.'),
    ] + [DeclareLaunchArgument(arg, default_value=topic,
                               description=f'Name of the robot topic {topic} (remapped in '
                                           'every node).')
         for arg, topic in ROBOT_TOPICS.items()]


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
