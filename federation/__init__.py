"""nats-federation: share CPU cores, memory and GPUs across regions over NATS."""

__version__ = "0.1.0"
