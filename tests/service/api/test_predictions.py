import pytest
from fastapi.routing import APIRoute
from starlette.routing import Match

from service.api.app import create_app
from service.api.predictions import prediction_model
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
