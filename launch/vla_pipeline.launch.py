"""
Launch the vla_ros pipeline on a robot: `ros2 launch vla_ros vla_pipeline.launch.py`.

The node list and remappings come from vla_ros.graph, the same data `vla-ros up` uses.
"""

from launch import LaunchDescription
from launch.actions import OpaqueFunction
from vla_ros.launch_support import launch_arguments, node_actions


def generate_launch_description():
    """Declare the arguments, then the pipeline nodes."""
    return LaunchDescription(launch_arguments() + [OpaqueFunction(function=node_actions)])
