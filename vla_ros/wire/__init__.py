"""
The remote policy's wire protocol, shared by both ends.

``protocol`` holds the method table, the frame codecs and the model identity;
``_proto`` the versioned ``.proto`` and its generated message code. The server
(``vla_ros.serve``) and the robot's client (``vla_ros.runtime.remote``) both sit above
this package and neither imports the other.
"""
