"""Model definitions (PyTorch): RT-1 policy, MiniLM text encoder, configs, FLOP counts."""
