"""Networks (``nn.Module``s) and architecture codecs; the search spaces built on them are in ``spaces/``."""
