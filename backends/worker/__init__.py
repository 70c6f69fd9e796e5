"""Engines in worker processes the gateway supervises (vLLM's V1 engine core is the
model). `WorkerBackend` (backend.py) is the gateway's side: a `Backend` like any
other. The worker (child.py) runs the real engine class and its scheduler; one
message per engine step carries every running sequence's new chunks, and a
cancellation travels back at once. A worker that dies ends only its own requests,
with a clear error, and is started again with backoff."""
