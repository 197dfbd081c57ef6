"""File IO shared by every stage: crash-safe writes (``atomic``), tar shards (``tar``), the cache folder (``cache``)."""
