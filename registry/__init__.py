"""Formats and storage: digests, references, OCI objects, the layer codec, repositories and the copy routine.\n\nImports nothing from builder, runtime, srepo_server or cocker."""
