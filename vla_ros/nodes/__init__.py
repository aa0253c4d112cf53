"""One thin rclpy node per module, each with main()."""
