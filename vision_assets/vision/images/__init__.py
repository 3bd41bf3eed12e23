"""Images: what a file really is, whether it is usable, the canonical RGB copy every stage reads, and the small
pictures a reviewer sees."""
