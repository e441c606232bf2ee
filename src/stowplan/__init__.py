"""stowplan: pack inference models onto a GPU fleet within their latency SLOs."""

__version__ = "0.1.0"
