"""The load tests' server harness reads how many workers a server runs from the server itself: the code
served may be another commit's, and the host's defaults are not this checkout's to predict."""

from __future__ import annotations

import httpx

from loadtests.benchmark import Variant, commit_of, export_commit, running_service
from loadtests.server import MODEL_STORE, running_server


def test_a_server_is_ready_once_every_worker_under_it_has_loaded_its_models(tmp_path):
    with running_server(tmp_path, 60.0, workers=2, model_store=MODEL_STORE, models="weld-classifier") as server:
        workers = server.workers()
        assert len(workers) == 2
        assert {str(worker.pid) for worker in workers} <= server.worker_pids("gauge_max")
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200


def test_a_server_that_runs_fewer_workers_than_this_host_would_choose_is_ready_without_waiting_for_more(tmp_path):
    # The service reads its settings case-insensitively, so a lower-case name sets its worker count
    # where the harness sees none: as an older commit's defaults, or a GPU host's, are unseen by it.
    # On this host the service would otherwise choose one worker per core.
    with running_server(
        tmp_path, 60.0, env={"inspection_workers": "1"}, model_store=MODEL_STORE, models="weld-classifier"
    ) as server:
        assert len(server.workers()) == 1


def test_a_before_variant_serves_the_code_of_a_folder_checked_out_from_a_commit(tmp_path):
    tree = export_commit(commit_of("HEAD"), tmp_path / "before")
    variant = Variant.parse(f"before:code={tree},workers=1")
    assert variant.code == tree and variant.ref is None
    with running_service(variant, MODEL_STORE, ["weld-classifier"], tmp_path / "logs") as server:
        workers = server.workers()
        assert [worker.cwd() for worker in workers] == [str(tree)]
        served = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
        assert [model["name"] for model in served] == ["weld-classifier"]
