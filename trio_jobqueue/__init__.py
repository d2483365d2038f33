"""trio-jobqueue: a reliable job queue for trio applications."""
