"""Pure logic of vla_ros: numpy only, no rclpy, no message types."""
