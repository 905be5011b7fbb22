"""gRPC servicers, interceptors, server wiring, metrics and health: the only gRPC-aware layer."""
