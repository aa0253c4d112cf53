"""
Launch the MuJoCo robot and the pipeline on sim time: `ros2 launch vla_ros vla_sim.launch.py`.

Same arguments as vla_pipeline.launch.py, plus ``expert:=true`` (the scripted expert,
expert_node, in place of inference_node); motion starts after
`ros2 service call /vla/enable std_srvs/srv/SetBool "{data: true}"`.
"""

from launch import LaunchDescription
from launch.actions import OpaqueFunction
from vla_ros.launch_support import launch_arguments, node_actions


def with_sim(context):
    """Build sim_node plus the pipeline nodes."""
    return node_actions(context, with_sim=True)


def generate_launch_description():
    """Declare the arguments, then sim_node and the pipeline nodes."""
    return LaunchDescription(launch_arguments() + [OpaqueFunction(function=with_sim)])
