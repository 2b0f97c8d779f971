"""The identity service's Prometheus metrics, served by the leader with its workers'
counts: a real ``python -m trustmesh.identity`` with three Workload API processes,
scraped over a real socket; and the report pipe between a worker and the leader."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from spiffe import WorkloadApiClient
from spiffe.workloadapi.errors import FetchX509SvidError

from trustmesh import events
from trustmesh.config import load_config
from trustmesh.identity import admin
from trustmesh.identity.metrics import Counts, Reporter, Tally, WorkerReports
from trustmesh.identity.server import service_settings
from trustmesh.identity.store import SqliteIdentityStore
from trustmesh.reasons import Activity, Reason

TD = "metrics.example"
API = f"spiffe://{TD}/api"

Samples = dict[str, float]


def _scrape(url: str) -> Samples:
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


def _until(url: str, ready: Callable[[Samples], bool], timeout: float = 15) -> Samples:
    """Scrape until ``ready`` (workers report once a tick)."""
    deadline = time.monotonic() + timeout
    found = _scrape(url)
    while not ready(found) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = _scrape(url)
    return found


REFUSED = 'trustmesh_identity_decisions_total{decision="deny",reason="no-matching-entry"}'
X509 = 'trustmesh_identity_svids_issued_total{type="x509"}'


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    config = short_tmp / "trustmesh.yaml"
    config.write_text(
        f"trust_domain: {TD}\ndev: true\nidentity: {{workers: 3, svid_ttl: 10m, ca_ttl: 2d}}\n"
    )
    state = short_tmp / "state"
    argv = [sys.executable, "-m", "trustmesh.identity", "--config", str(config)]
    with open(short_tmp / "identity.log", "wb") as log:
        process = subprocess.Popen([*argv, "--state", str(state)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not (state / "discovery.json").exists():
            assert process.poll() is None, (short_tmp / "identity.log").read_text()
            assert time.monotonic() < deadline, "the identity service did not start"
            time.sleep(0.1)
        yield config, state, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _workers(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@contextlib.contextmanager
def _workers_alone(leader: subprocess.Popen[bytes]) -> Iterator[None]:
    """The leader stopped (SIGSTOP): only its workers accept on the shared socket."""
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(leader.pid, signal.SIGCONT)


def test_the_leader_serves_every_process_counts(
    identity: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    config, state, process = identity
    url = json.loads((state / "discovery.json").read_text())["metrics_url"]
    assert url.startswith("http://127.0.0.1:")  # loopback only
    address = f"unix://{state}/public/workload.sock"
    found = _until(url, lambda f: f["trustmesh_identity_workers"] == 2)  # both serve
    assert found["trustmesh_identity_workers"] == 2
    with _workers_alone(process):  # every decision below is a worker's
        for _ in range(6):
            with WorkloadApiClient(address) as client, pytest.raises(FetchX509SvidError):
                client.fetch_x509_svid()  # no registration entry matches this process
    found = _until(url, lambda f: f.get(REFUSED) == 6)
    assert found[REFUSED] == 6
    assert 0 < found["trustmesh_identity_signing_ca_seconds_left"] <= 2 * 86400
    assert 0 < found["trustmesh_identity_certificate_seconds_left"] <= 600

    store = SqliteIdentityStore(state / "identity.db")
    try:
        selectors = [f"unix:uid:{os.getuid()}", f"unix:path:{os.readlink('/proc/self/exe')}"]
        settings = service_settings(load_config(config))
        admin.register_entry(store, settings, API, selectors, None, events.MemorySink())
    finally:
        store.close()
    with _workers_alone(process):
        for _ in range(12):
            with WorkloadApiClient(address) as client:
                assert str(client.fetch_x509_svid().spiffe_id) == API
    found = _until(url, lambda f: f.get(X509) == 12)
    assert found[X509] == 12
    assert found['trustmesh_identity_svids_issued_total{type="jwt"}'] == 0
    allowed = 'trustmesh_identity_decisions_total{decision="allow",reason="svid-issued"}'
    assert found[allowed] == 12

    # workers killed are replaced; what they counted stays counted (no counter goes down)
    killed = _workers(process.pid)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while set(killed) & set(children := _workers(process.pid)) or len(children) < 2:
        assert time.monotonic() < deadline, "the workers were not replaced"
        time.sleep(0.2)
    again = _until(url, lambda f: f["trustmesh_identity_workers"] == 2)
    assert again[X509] == 12
    assert again[REFUSED] == 6
    assert requests.get(url.replace("/metrics", "/nope"), timeout=10).status_code == 404


def test_a_worker_reports_its_counts_to_the_leader() -> None:
    worker = Tally(events.MemorySink())
    recorder = events.Recorder(worker, component="identity")
    reports = WorkerReports()
    read_end, write_end = reports.pipe()
    reports.add(4242, read_end)
    reporter = Reporter(write_end, worker)
    for _ in range(3):
        recorder.record(Reason.NO_MATCHING_ENTRY, "refused", decision=events.Decision.DENY)
    recorder.record(Activity.SVID_ISSUED, "X.509-SVID issued")
    recorder.record(Activity.SVID_ISSUED, "JWT-SVID issued", jti="j1")
    reporter.report()
    reporter.report()  # unchanged: nothing more is sent
    totals = reports.totals()
    assert totals.decisions[("deny", "no-matching-entry")] == 3
    assert totals.issued == {"x509": 1, "jwt": 1}
    assert reports.running == 1  # it has reported
    recorder.record(Reason.NO_MATCHING_ENTRY, "refused", decision=events.Decision.DENY)
    reporter.close()  # a last report as the worker ends
    reports.retire(4242)
    assert reports.running == 0
    assert reports.totals().decisions[("deny", "no-matching-entry")] == 4  # kept when retired
    assert reports.totals().issued["x509"] == 1


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[]",
        b'{"decisions": [["deny", "a path/with/slashes", 1]], "issued": {}}',
        b'{"decisions": [["maybe", "policy-deny", 1]], "issued": {}}',
        b'{"decisions": [["deny", "policy-deny", -1]], "issued": {}}',
        b'{"decisions": [], "issued": {"x509": true}}',
        b'{"decisions": [], "issued": {"other": 1}}',
    ],
)
def test_a_report_outside_the_vocabulary_is_not_counted(line: bytes) -> None:
    assert Counts.from_line(line) is None
    reports = WorkerReports()
    read_end, write_end = reports.pipe()
    reports.add(1, read_end)
    good = Counts()
    good.decisions[("deny", "policy-deny")] = 2
    os.write(write_end, good.to_line() + line + b"\n")
    os.close(write_end)
    assert reports.totals().decisions == {("deny", "policy-deny"): 2}  # the last good one
    reports.close()
