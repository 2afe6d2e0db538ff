"""Data: from a source (hub, audiofolder, manifest) to prepared sets on disk and batches for the model."""
