"""Locust profiles of the inspection service's users.

- `LineCamera`: one camera on the production line. It posts one JPEG frame per part to the model of
  its station at a fixed rate (`--camera-fps`) and checks every answer: HTTP 200, its task's answer
  schema, the model it asked, the frame's size, and a decision that agrees with the defects found.
  Any other answer is a failed request.
- `QAEngineer` (always exactly one): reads the model list, model descriptions and thresholds; now and
  then changes a threshold, when the service has the thresholds write API and `LOCUST_ADMIN_TOKEN`
  holds its token (otherwise it only reads).

Frames are generated once at start-up with fixed seeds (one frame per class and frame size), so
every run sends the same images. Stations are `MODEL@WIDTHxHEIGHT`, given to cameras in turn.

Headless, configured by `locust.conf`, against `make serve`, from the repository root:

    locust --config loadtests/locust.conf

The run exits 1 when any request failed, when no request was made, or when p99 over all requests
passes `--max-p99-ms`.
"""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass

import gevent
import requests
from locust import FastHttpUser, between, constant_throughput, events, task
from locust.env import Environment
from pydantic import ValidationError

from loadtests.frames import Station, line_frames
from service.api.schemas import ModelDescription, ModelList
from service.tasks import ANSWERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThresholdsApi:
    """Which thresholds routes this server has (the write API may not exist yet)."""

    read: bool
    write: bool


def unanswered(response) -> str:
    """Why a request got no usable answer: an HTTP error, or no HTTP answer at all."""
    if response.status_code == 0:
        return f"no answer: {response.error}"
    return f"HTTP {response.status_code}: {(response.text or '')[:300]}"


def prediction_problem(body: bytes, station: Station) -> str | None:
    """What is wrong with a camera's 200 answer, or None when the line can act on it."""
    try:
        answer = ANSWERS.validate_json(body)
    except ValidationError as exc:
        return f"answer does not match its task's answer: {exc.errors()[:3]}"
    if answer.model != station.model:
        return f"answer is from model {answer.model!r}, the camera asked {station.model!r}"
    if (answer.image.width, answer.image.height) != (station.width, station.height):
        reported = f"{answer.image.width}x{answer.image.height}"
        return f"answer reports a {reported} image for a {station.width}x{station.height} frame"
    if (answer.decision == "reject") != bool(answer.defects):
        return f"decision {answer.decision!r} disagrees with defects {answer.defects}"
    return None


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--stations",
        default="weld-classifier@640x480,weld-detector@640x480,weld-segmenter@640x480,weld-classifier@2448x2048",
        help="Comma-separated MODEL@WIDTHxHEIGHT, handed to cameras in turn.",
    )
    parser.add_argument("--camera-fps", type=float, default=2.0, help="Frames per second each camera posts.")
    parser.add_argument(
        "--max-p99-ms",
        type=float,
        default=0.0,
        help="Fail the run when p99 over all requests exceeds this (0: no bound).",
    )
    parser.add_argument(
        "--admin-token",
        env_var="LOCUST_ADMIN_TOKEN",
        default="",
        is_secret=True,
        help="Bearer token for threshold changes; without it the QA engineer only reads.",
    )


@events.init.add_listener
def _prepare_line(environment: Environment, **_) -> None:
    options = environment.parsed_options
    if options is None:
        return
    stations = [Station.parse(text) for text in options.stations.split(",") if text.strip()]
    if not stations:
        raise ValueError("--stations names no station")
    LineCamera.stations = stations
    LineCamera.frames = {(s.width, s.height): line_frames(s.width, s.height) for s in set(stations)}
    LineCamera.fps = options.camera_fps
    # The event loop has not run since start-up and its clock still reads the time before the imports
    # and the frames: left so, the --run-time timer set next would fire that much early.
    gevent.get_hub().loop.update_now()


@events.test_start.add_listener
def _discover_api(environment: Environment, **_) -> None:
    """Which models the QA engineer looks at, and whether the thresholds API is there."""
    host = environment.host
    try:
        models = [m["name"] for m in requests.get(f"{host}/v1/models", timeout=10).json()["models"]]
        probe = f"{host}/v1/models/{models[0]}/thresholds"
        read = requests.get(probe, timeout=10).status_code == 200
        # Without a token an existing write route refuses (401/403); a missing one answers 404/405.
        write = read and requests.put(probe, json={}, timeout=10).status_code in (401, 403)
    except (requests.RequestException, KeyError, IndexError, ValueError) as exc:
        log.error("could not read the served models from %s: %s", host, exc)
        models, read, write = sorted({s.model for s in LineCamera.stations}), False, False
    QAEngineer.models = models
    QAEngineer.thresholds_api = ThresholdsApi(read=read, write=write)
    token = environment.parsed_options.admin_token if environment.parsed_options else ""
    log.info(
        "QA engineer: models %s, thresholds read API %s, write API %s%s",
        models,
        read,
        write,
        "" if token or not write else " (no LOCUST_ADMIN_TOKEN: reads only)",
    )


@events.quitting.add_listener
def _verdict(environment: Environment, **_) -> None:
    total = environment.stats.total
    bound = environment.parsed_options.max_p99_ms if environment.parsed_options else 0.0
    p99 = total.get_response_time_percentile(0.99) if total.num_requests else 0.0
    if total.num_requests == 0:
        reason = "no request was made"
    elif total.num_failures:
        reason = f"{total.num_failures} of {total.num_requests} requests failed"
    elif bound and p99 > bound:
        reason = f"p99 {p99:.0f} ms is over the bound of {bound:.0f} ms"
    else:
        log.info("run passed: %d requests, p99 %.0f ms (bound %s ms)", total.num_requests, p99, bound or "none")
        environment.process_exit_code = 0
        return
    log.error("run failed: %s", reason)
    for error in environment.stats.errors.values():
        log.error("  %d x %s %s: %s", error.occurrences, error.method, error.name, error.error)
    environment.process_exit_code = 1


class LineCamera(FastHttpUser):
    weight = 10
    stations: list[Station] = []
    frames: dict[tuple[int, int], list[bytes]] = {}
    fps = 2.0
    _cameras = itertools.count()

    def on_start(self) -> None:
        index = next(self._cameras)
        self.station = self.stations[index % len(self.stations)]
        frames = self.frames[(self.station.width, self.station.height)]
        # Cameras start at different frames so that they do not post the same bytes in step.
        self.sequence = itertools.islice(itertools.cycle(frames), index % len(frames), None)
        self.pace = constant_throughput(self.fps)

    def wait_time(self) -> float:
        return self.pace(self)

    @task
    def inspect_part(self) -> None:
        station = self.station
        with self.client.post(
            f"/v1/models/{station.model}/predict",
            data=next(self.sequence),
            headers={"Content-Type": "image/jpeg"},
            name=f"predict {station.label}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                problem = unanswered(response)
            else:
                problem = prediction_problem(response.content, station)
            if problem is None:
                response.success()
            else:
                response.failure(problem)


class QAEngineer(FastHttpUser):
    fixed_count = 1
    wait_time = between(2, 6)
    models: list[str] = []
    thresholds_api = ThresholdsApi(read=False, write=False)

    @task(3)
    def review_models(self) -> None:
        with self.client.get("/v1/models", catch_response=True) as response:
            self._check(response, ModelList)

    @task(3)
    def read_thresholds(self) -> None:
        model = random.choice(self.models)
        if self.thresholds_api.read:
            with self.client.get(
                f"/v1/models/{model}/thresholds", name="/v1/models/[model]/thresholds", catch_response=True
            ) as response:
                self._check_thresholds(response)
        else:
            with self.client.get(f"/v1/models/{model}", name="/v1/models/[model]", catch_response=True) as response:
                self._check(response, ModelDescription)

    @task(1)
    def tune_threshold(self) -> None:
        """Move one defect class's threshold by 0.01 towards 0.5: a live change the cameras see."""
        token = self.environment.parsed_options.admin_token
        if not (self.thresholds_api.write and token):
            self.read_thresholds()
            return
        model = random.choice(self.models)
        path = f"/v1/models/{model}/thresholds"
        with self.client.get(path, name="/v1/models/[model]/thresholds", catch_response=True) as response:
            current = self._check_thresholds(response)
        if current is None or not current["thresholds"]:
            return
        defect = random.choice(sorted(current["thresholds"]))
        value = current["thresholds"][defect]
        change = {
            "thresholds": {defect: round(value + (0.01 if value < 0.5 else -0.01), 4)},
            "author": "locust-qa-engineer",
            "reason": "load test: live threshold change",
            "expected_revision": current["revision"],
        }
        with self.client.put(
            path,
            json=change,
            headers={"Authorization": f"Bearer {token}"},
            name="/v1/models/[model]/thresholds",
            catch_response=True,
        ) as response:
            # 409: another writer got there first; the QA engineer re-reads next time. Not a fault.
            if response.status_code in (200, 409):
                response.success()
            else:
                response.failure(unanswered(response))

    def _check(self, response, schema) -> None:
        if response.status_code != 200:
            response.failure(unanswered(response))
            return
        try:
            schema.model_validate_json(response.content)
        except ValidationError as exc:
            response.failure(f"answer does not match {schema.__name__}: {exc.errors()[:3]}")
            return
        response.success()

    def _check_thresholds(self, response) -> dict | None:
        if response.status_code != 200:
            response.failure(unanswered(response))
            return None
        body = response.json()
        if not isinstance(body.get("revision"), int) or not isinstance(body.get("thresholds"), dict):
            response.failure(f"thresholds answer has no integer revision and thresholds: {str(body)[:300]}")
            return None
        response.success()
        return body
