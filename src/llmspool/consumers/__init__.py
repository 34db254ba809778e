"""The worker runtime and the backends that run jobs on inference engines."""
