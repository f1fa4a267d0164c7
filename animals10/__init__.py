"""Animals-10 image classification on Ray: train (Ray Train), classify buckets (Ray Data), serve (Ray Serve)."""

__version__ = "0.1.0"
