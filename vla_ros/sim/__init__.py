"""MuJoCo simulation of the vla_ros robot: physics, tasks, IK and a scripted expert."""
