"""fusion-worker: fuse the predictions of many models per request from Kafka."""

from worker._version import __version__

__all__ = ["__version__"]
