import pytest
from fastapi.routing import APIRoute
from starlette.routing import Match

from service.api.app import api_routes, create_app
from service.api.predictions import prediction_model
from service.api.v2.endpoints import infer_target
from service.config import Settings


def _declared_route_takes(path: str) -> str | None:
    app = create_app(Settings(workers=1), lambda: None)  # type: ignore[arg-type, return-value]
    (route,) = [r for r in app.routes if isinstance(r, APIRoute) and r.path == "/v1/models/{model}/predict"]
    match, child = route.matches({"type": "http", "path": path, "method": "POST", "root_path": ""})
    return child["path_params"]["model"] if match is Match.FULL else None


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/models/weld-classifier/predict", "weld-classifier"),
        ("/v1/models/../predict", ".."),  # a name like any other: answered 404 unknown_model
        ("/v1/models/a b/predict", "a b"),
        ("/v1/models//predict", None),  # no name: not the route
        ("/v1/models/predict", None),
        ("/v1/models/a/b/predict", None),  # names hold no /
        ("/v1/models/weld-classifier/predict/", None),
        ("/v1/models/weld-classifier", None),
        ("/v2/models/weld-classifier/predict", None),
    ],
)
def test_the_direct_route_takes_exactly_the_paths_the_declared_route_takes(path, model):
    assert prediction_model(path) == model
    assert _declared_route_takes(path) == model


def _declared_infer_routes_take(path: str) -> tuple[str, str | None] | None:
    app = create_app(Settings(workers=1), lambda: None)  # type: ignore[arg-type, return-value]
    routes = [r for r in api_routes(app.routes) if r.path.startswith("/v2/models/") and r.path.endswith("/infer")]
    assert len(routes) == 2
    for route in routes:
        match, child = route.matches({"type": "http", "path": path, "method": "POST", "root_path": ""})
        if match is Match.FULL:
            return child["path_params"]["model"], child["path_params"].get("version")
    return None


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v2/models/weld-classifier/infer", ("weld-classifier", None)),
        ("/v2/models/weld-classifier/versions/1/infer", ("weld-classifier", "1")),
        ("/v2/models/weld-classifier/versions/latest/infer", ("weld-classifier", "latest")),  # answered 404
        ("/v2/models//infer", None),
        ("/v2/models/infer", None),
        ("/v2/models/a/b/infer", None),
        ("/v2/models/a/versions//infer", None),
        ("/v2/models/a/versions/1/2/infer", None),
        ("/v2/models/weld-classifier/infer/", None),
        ("/v2/models/weld-classifier", None),
        ("/v1/models/weld-classifier/infer", None),
    ],
)
def test_the_direct_infer_route_takes_exactly_the_paths_the_declared_routes_take(path, target):
    assert infer_target(path) == target
    assert _declared_infer_routes_take(path) == target
