"""The vector index: Qdrant collections and points, their payloads, search over them, and whether they are whole."""
