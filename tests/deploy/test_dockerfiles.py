"""deploy/Dockerfile and deploy/Dockerfile.cuda, checked without building them (no Docker daemon here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy.dockerfile import Stage, ignore_patterns, is_ignored, stages

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
SERVING_EXTRAS = {"Dockerfile": set(), "Dockerfile.cuda": {"gpu"}}
PROVIDERS = {"Dockerfile": "cpu", "Dockerfile.cuda": "cuda"}
PORT = "3000"


def read_stages(dockerfile: str) -> list[Stage]:
    return stages((DEPLOY / dockerfile).read_text())


def ignore_of(dockerfile: str) -> list[str]:
    """The patterns BuildKit applies to a build with `-f deploy/<dockerfile>`: those of the file beside it."""
    return ignore_patterns((DEPLOY / f"{dockerfile}.dockerignore").read_text())


def copy_problems(parsed: list[Stage], root: Path, ignore: list[str]) -> list[str]:
    """COPY sources that are missing from the repository or left out of the build context, and
    COPY --from naming no earlier stage."""
    problems = []
    for index, stage in enumerate(parsed):
        earlier = {earlier.name for earlier in parsed[:index]}
        for copy in stage.copies:
            if copy.from_stage is not None:
                if copy.from_stage not in earlier:
                    problems.append(f"COPY --from={copy.from_stage}: no earlier stage has that name")
                continue
            for source in copy.sources:
                files = (
                    [source]
                    if (root / source).is_file()
                    else [str(path.relative_to(root)) for path in (root / source).rglob("*") if path.is_file()]
                )
                if not (root / source).exists():
                    problems.append(f"COPY {source}: not in the repository")
                elif is_ignored(source, ignore) or all(is_ignored(file, ignore) for file in files):
                    problems.append(f"COPY {source}: left out of the build context by the .dockerignore")
    return problems


def command_problems(image: Stage, service: str) -> list[str]:
    """What keeps the image from serving the Bento's service on 0.0.0.0:3000 as a non-root user."""
    problems = []
    expected = ["bentoml", "serve", service, "--host", "0.0.0.0", "--port", PORT]
    if image.command != expected:
        problems.append(f"CMD {image.command} is not {expected}")
    if PORT not in image.exposed:
        problems.append(f"EXPOSE {image.exposed} leaves out {PORT}")
    if image.user is None or image.user.split(":")[0] in ("0", "root"):
        problems.append(f"USER {image.user}: the image would run as root")
    return problems


def bentofile_service() -> str:
    return yaml.safe_load((ROOT / "bentofile.yaml").read_text())["service"]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def deployment_pod() -> dict:
    return yaml.safe_load((DEPLOY / "kubernetes/base/deployment.yaml").read_text())["spec"]["template"]["spec"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copy_source_is_in_the_repository_and_the_build_context(dockerfile: str) -> None:
    assert copy_problems(read_stages(dockerfile), ROOT, ignore_of(dockerfile)) == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_build_context_leaves_out_the_virtual_environment_git_and_local_state(dockerfile: str) -> None:
    ignore = ignore_of(dockerfile)
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "state/thresholds.db",
        "tests/conftest.py",
        "service/__pycache__/config.cpython-311.pyc",
    ):
        assert is_ignored(path, ignore), path
    assert not is_ignored("model_store/weld-classifier/1/model.onnx", ignore)


def test_both_dockerfiles_send_the_same_build_context() -> None:
    assert ignore_of("Dockerfile") == ignore_of("Dockerfile.cuda")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_serves_the_bento_service_on_port_3000_as_a_non_root_user(dockerfile: str) -> None:
    assert command_problems(read_stages(dockerfile)[-1], bentofile_service()) == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_user_is_the_one_the_pods_run_as(dockerfile: str) -> None:
    uid, _, gid = read_stages(dockerfile)[-1].user.partition(":")
    pod_security = deployment_pod()["securityContext"]
    assert (int(uid), int(gid)) == (pod_security["runAsUser"], pod_security["runAsGroup"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_is_the_serving_install_with_its_extras_only(dockerfile: str) -> None:
    """`pip install .` (or `.[gpu]`): the serving dependencies, never the export extra's torch."""
    installs = [run for stage in read_stages(dockerfile) for run in stage.runs if "pip install" in run]
    assert len(installs) == 1
    installed = re.search(r"pip install '?\.(?:\[([\w,-]+)\])?'?$", installs[0])
    assert installed is not None, installs[0]
    extras = set(filter(None, (installed[1] or "").split(",")))
    assert extras == SERVING_EXTRAS[dockerfile]
    assert extras <= set(pyproject()["project"]["optional-dependencies"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_asks_for_the_provider_it_was_built_for(dockerfile: str) -> None:
    """By name, so that the CUDA image refuses to start without a GPU rather than serve slowly on CPU."""
    assert read_stages(dockerfile)[-1].env["INSPECTION_PROVIDER"] == PROVIDERS[dockerfile]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_model_store_setting_names_where_the_models_are_copied(dockerfile: str) -> None:
    image = read_stages(dockerfile)[-1]
    (models,) = [copy for copy in image.copies if copy.sources == ("model_store/",)]
    assert image.env["INSPECTION_MODEL_STORE"].rstrip("/") == models.destination.rstrip("/")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_everything_the_server_writes_is_on_a_volume_of_the_pod(dockerfile: str) -> None:
    """The pods run with a read-only root filesystem: state and BentoML's files must be on a mounted volume."""
    env = read_stages(dockerfile)[-1].env
    mounts = [mount["mountPath"] for mount in deployment_pod()["containers"][0]["volumeMounts"]]
    for variable in ("INSPECTION_STATE_DIR", "BENTOML_HOME"):
        assert any(Path(env[variable]).is_relative_to(mount) for mount in mounts), variable


def test_cuda_image_has_the_cuda_major_version_of_the_gpu_extra() -> None:
    """The base image's NVIDIA_REQUIRE_CUDA refuses hosts whose driver cannot run that CUDA: it must
    be the one the pip-installed runtime libraries need."""
    (cublas,) = [
        dep for dep in pyproject()["project"]["optional-dependencies"]["gpu"] if dep.startswith("nvidia-cublas")
    ]
    extra_major = re.search(r">=\s*(\d+)", cublas)[1]
    base = read_stages("Dockerfile.cuda")[-1].image
    assert re.fullmatch(rf"nvidia/cuda:{extra_major}\.\d+\.\d+-base-ubuntu\d+\.\d+", base), base


def test_checks_catch_a_broken_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "app.py").write_text("")
    broken = stages(
        "FROM python:3.11-slim AS build\n"
        "COPY pyproject.toml ./\n"  # not in the repository
        "COPY service/ service/\n"  # left out by the ignore file below
        "FROM python:3.11-slim\n"
        "COPY --from=builder /opt/venv /opt/venv\n"  # no such stage
        "USER root\n"
        "CMD bentoml serve service.inspection_service:InspectionService --port 8080\n"
    )
    assert copy_problems(broken, tmp_path, ["*", "!model_store/"]) == [
        "COPY pyproject.toml: not in the repository",
        "COPY service/: left out of the build context by the .dockerignore",
        "COPY --from=builder: no earlier stage has that name",
    ]
    problems = command_problems(broken[-1], bentofile_service())
    assert [problem.split()[0] for problem in problems] == ["CMD", "EXPOSE", "USER"]


def test_the_bento_takes_every_file_of_the_demo_model_store():
    included = set()
    for pattern in yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]:
        included |= {path for path in ROOT.glob(pattern) if path.is_file()}
    stored = {path for path in (ROOT / "model_store").rglob("*") if path.is_file()}
    assert stored and stored <= included, sorted(map(str, stored - included))
