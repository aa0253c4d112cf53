"""
The remote policy server (``vla-ros serve``) and its wire protocol.

``protocol`` is what both ends share (method table, frame codecs, model identity);
``server`` the gRPC service; ``cli`` the command. The robot's side is
``vla_ros.runtime.remote`` (inference_node with ``backend: remote``).
"""
