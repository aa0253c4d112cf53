"""
The remote policy server (``vla-ros serve``).

``server`` is the gRPC service, ``cli`` the command, ``devcerts`` the test PKI. The wire
protocol both ends share is ``vla_ros.wire``; the robot's side is
``vla_ros.runtime.remote`` (inference_node with ``backend: remote``).
"""
