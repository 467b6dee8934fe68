"""One image's path through a model, in data-flow order: decode, geometry, preprocess, batching,
the onnxruntime session (runtime, providers), post-processing, and the predictor that runs them."""
