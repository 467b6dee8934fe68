"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP/REST API), the service's second protocol.

`codec`: the wire form of inference requests and responses, binary tensor data included (no HTTP);
`endpoints`: the adapter onto the prediction core (inputs to frames, typed answers to outputs, the
metadata); `routes`: health, metadata and readiness, and the declared infer routes.
"""
