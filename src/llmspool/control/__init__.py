"""The control plane: process supervision, the embedded Redis, and the command line."""
