"""
Launch the vla_ros pipeline on a robot: `ros2 launch vla_ros vla_pipeline.launch.py`.

The node list and remappings come from vla_ros.graph, the same data `vla-ros up` uses.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from vla_ros.graph import pipeline_nodes


def generate_launch_description():
    """Declare arguments, then one Node action per pipeline node."""
    share = get_package_share_directory('vla_ros')
    params_file = LaunchConfiguration('params_file')
    namespace = LaunchConfiguration('namespace')
    use_sim_time = LaunchConfiguration('use_sim_time')
    log_level = LaunchConfiguration('log_level')
    model_file_path = LaunchConfiguration('model_file_path')

    args = [
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'vla_ros.yaml'),
                              description='Parameters file (one key per node).'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace for all pipeline nodes.'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock (simulation or bag replay).'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='Log level for all nodes.'),
        DeclareLaunchArgument('model_file_path',
                              default_value=os.path.join(share, 'models', 'rt1_tiny',
                                                         'policy.onnx'),
                              description='Exported policy ONNX for inference_node.'),
    ]
    sim_time = ParameterValue(use_sim_time, value_type=bool)
    nodes = []
    for spec in pipeline_nodes():
        parameters = [params_file, {'use_sim_time': sim_time}]
        if spec.name == 'inference_node':
            parameters.append({'model_file_path': model_file_path})
        nodes.append(Node(
            package='vla_ros', executable=spec.executable, name=spec.name,
            namespace=namespace, output='screen', parameters=parameters,
            remappings=list(spec.remappings),
            arguments=['--ros-args', '--log-level', log_level]))
    return LaunchDescription(args + nodes)
