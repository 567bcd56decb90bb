"""Triton I/O: the pool of gRPC streams, request and response codec, the dispatcher
(deadline, retry, bisect), the model contract checked at start, error classification."""
