"""Load tests and the throughput benchmark of the inspection service.

- `locustfile.py` + `locust.conf`: the service's users (line cameras, QA engineers), run headless with
  `locust --config loadtests/locust.conf` against `make serve`; the run exits non-zero on any failed
  request or when p99 passes the configured bound.
- `benchmark.py`: `python -m loadtests.benchmark`: bare in-process pipeline vs the served service,
  on the same model and the same frames; prints a markdown table and writes JSON.

Neither needs torch: frames come from `export.synthetic`.
"""
