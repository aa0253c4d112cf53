"""
rosbag2 recording, playback and reading for the vla_ros graph (docs/bags.md).

``ros2 bag`` is what a robot uses; this package gives the same bags on machines without
rosbag2 (``vla-ros record``, ``vla-ros play``) through the ``rosbags`` library, and feeds
``vla-ros dataset from-bag``. Bags are ordinary rosbag2 folders (MCAP or sqlite3, CDR
messages, message definitions and type description hashes), so either tool opens the
other's bags.
"""
