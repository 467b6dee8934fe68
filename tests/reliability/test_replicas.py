"""Three servers on one PostgreSQL behind HAProxy (`loadtests.replicas`, whose longer run reports the
figures of docs/operations.md), with cameras at a steady rate: a change through any server is in force
on every server within a second; a server cut off from the database keeps answering and catches up;
a rolling restart loses no request; a killed server loses at most what it had in flight; the probes
say what they mean during warm-up and drain. Every server reaches the database through a relay of its
own, so that one server's connection can be cut alone."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from loadtests.replicas import (
    DRAIN_DELAY_S,
    MODEL,
    Cameras,
    Cluster,
    cluster,
    database_queries,
    killed_server,
    outage,
    probes_through_restart,
    propagation,
    rolling_restart,
)
from tests.conftest import postgres_url

CAMERAS, FPS = 3, 4.0


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian's haproxy package; tests/with_services.sh installs it)")
    with cluster(postgres_url(), 3, tmp_path_factory.mktemp("replicas")) as running:
        yield running


def test_predictions_read_no_database(replicas: Cluster):
    # Before: two queries per prediction (the pool's ping and the newest revision's number).
    counted = database_queries(replicas, 300)
    print(f"\ndatabase while predicting: {counted}")
    # What remains is each server's periodic re-read (every INSPECTION_STATE_RESYNC_S, 5 s: a few
    # queries), whatever the rate of predictions.
    assert counted["queries"] <= 3 * 4 * (1 + counted["seconds"] / 5), counted
    assert counted["per_prediction"] < 0.2, counted
    # The counting counts: each server's re-read shows on its link within a resync period.
    before = [replica.link.round_trips for replica in replicas.replicas]
    time.sleep(5.5)
    assert all(replica.link.round_trips > seen for replica, seen in zip(replicas.replicas, before, strict=True))


def test_a_change_through_any_server_is_in_force_on_every_server_within_a_second(replicas: Cluster):
    delays = propagation(replicas.replicas, 100)
    print(f"\npropagation of 100 changes to 3 servers: {delays}")
    assert delays["from_sending"]["count"] == 300
    assert delays["from_sending"]["max_ms"] < 1000, delays


def test_a_server_cut_off_from_the_database_keeps_answering_and_catches_up(replicas: Cluster):
    result = outage(replicas.replicas, cut_s=3.0, changes=5)
    print(f"\noutage: {result}")
    assert result["answers_while_cut"] > 10 and result["failed_while_cut"] == 0
    # It served what it held, said so, and stayed ready.
    assert result["revision_held_while_cut"] == result["revision_before"]
    readiness = result["readiness_while_cut"]
    assert readiness["status"] == 200 and readiness["shared_state"]["reachable"] is False
    assert "unreachable" in readiness["shared_state"]["database"]
    # What needs the database says so, with a 503 to retry, not a 500.
    history = result["history_while_cut"]
    assert history["status"] == 503 and history["error"]["code"] == "database_unavailable", history
    # Back on the newest revision, values and all, within the reconnection's backoff.
    assert result["newest_revision"] == result["revision_before"] + 5
    assert result["values_equal_the_database"]
    assert result["caught_up_after_restore_s"] < 3.0
    assert (result["shared_state_up_while_cut"], result["shared_state_up_after"]) == (0.0, 1.0)
    cut = replicas.replicas[-1]
    assert httpx.get(f"{cut.url}/readyz").json()["shared_state"]["reachable"] is True


def test_readyz_is_503_while_draining_and_warming_up_while_livez_stays_200(replicas: Cluster):
    probes, exited, ready = probes_through_restart(replicas.replicas[1])
    draining = [p for p in probes if p.at < exited and p.readyz == 503]
    # Drained for INSPECTION_DRAIN_DELAY_S, answering all along, and saying why.
    assert draining and draining[-1].at - draining[0].at > DRAIN_DELAY_S / 2
    assert all(p.livez == 200 for p in draining)
    assert all(p.readyz_body["draining"] is True for p in draining)
    # Answered from the server process's first answer (a probe sent before it listened is refused) to the
    # hand-over, when a connection just queued on its socket may be reset once (as in
    # tests/reliability/test_server_processes.py): /livez 200 all along but within 0.5 s of readiness.
    listening = next(p.at for p in probes if p.at > exited and p.livez is not None)
    warming = [p for p in probes if listening <= p.at < ready and p.readyz == 503]
    assert warming, "nothing answered while the new server warmed up"
    assert all(p.livez == 200 for p in warming if p.at < ready - 0.5), [p for p in warming if p.livez != 200]
    # Warming up, then handing the port from the server process over to its warm workers.
    assert all(
        "warmed their models" in p.readyz_body["reason"] or "handing the port over" in p.readyz_body["reason"]
        for p in warming
    ), [p.readyz_body for p in warming]
    # /livez never failed while anything answered; and the server is ready again.
    assert all(p.livez == 200 for p in probes if p.readyz is not None)
    assert probes[-1].readyz == 200


def test_a_rolling_restart_of_every_server_loses_no_camera_request(replicas: Cluster):
    with Cameras(replicas.balancer.url, CAMERAS, FPS) as cameras:
        time.sleep(1.0)
        result = rolling_restart(replicas, cameras)
        time.sleep(1.0)
    print(f"\nrolling restart: {result}")
    assert result["camera_requests"] > 50
    assert result["failed"] == 0, result["failures"]
    # Every server answers again, through the balancer.
    served = {shot.status for shot in cameras.shots[-CAMERAS * 2 :]}
    assert served == {200}


def test_a_killed_server_fails_at_most_its_requests_in_flight_and_is_routed_around(replicas: Cluster):
    with Cameras(replicas.balancer.url, CAMERAS, FPS) as cameras:
        result = killed_server(replicas, cameras)
    print(f"\nkilled server: {result}")
    assert result["failed"] <= CAMERAS, result["failures"]  # a camera has one request in flight at most
    assert result["failed_later_than_1s_after_kill"] == 0, result["failures"]
    assert result["answered_after_2s"] > 0
    # Started again: it answers the model's newest revision.
    victim = replicas.replicas[0]
    newest = httpx.get(f"{replicas.replicas[1].url}/v1/models/{MODEL}/thresholds").json()["revision"]
    assert httpx.get(f"{victim.url}/v1/models/{MODEL}").json()["thresholds"]["revision"] == newest
