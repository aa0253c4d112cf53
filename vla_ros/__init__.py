"""vla_ros: an RT-1 vision-language-action control stack for ROS 2."""

__version__ = '0.1.0'
