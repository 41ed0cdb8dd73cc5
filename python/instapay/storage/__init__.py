"""Durable storage: the write-ahead log, snapshot files, the data directory (its lock and
permissions). The lowest layer: it imports nothing of the engine."""
