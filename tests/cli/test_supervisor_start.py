"""The supervisor's start order: each component once the one before it is ready, but
declared services (``together``) side by side, none waiting for another."""

from __future__ import annotations

from pathlib import Path

from trustmesh.cli.supervisor import ComponentSpec, Supervisor, _waves

SLEEP = ("sleep", "30")


def _spec(name: str, *, together: bool = False, within: float = 3.0) -> ComponentSpec:
    return ComponentSpec(name, SLEEP, ready_timeout=within, together=together)


def test_a_run_of_together_specs_is_one_wave() -> None:
    specs = [_spec("a"), _spec("b", together=True), _spec("c", together=True), _spec("d")]
    assert [[s.name for s in wave] for wave in _waves(specs)] == [["a"], ["b", "c"], ["d"]]
    assert [[s.name for s in w] for w in _waves([_spec("x", together=True), _spec("y")])] == [
        ["x"],
        ["y"],
    ]


def test_services_start_before_any_of_them_is_ready(short_tmp: Path) -> None:
    """``b`` is ready only once ``c`` runs: were ``c`` started after ``b`` is ready, the
    start would fail on ``b``'s deadline."""
    specs = [_spec("identity"), _spec("b", together=True), _spec("c", together=True)]
    seen: list[str] = []

    def ready(spec: ComponentSpec) -> bool:
        seen.append(spec.name)
        return spec.name != "b" or "c" in supervisor.children

    supervisor = Supervisor(short_tmp / "state", specs, ready, log=lambda _: None, stop_grace=2)
    supervisor.acquire()
    try:
        assert supervisor.start_all() is None
        assert set(supervisor.children) == {"identity", "b", "c"}
        assert seen[0] == "identity"
    finally:
        supervisor.stop_all()
        supervisor.release()
    assert all(child.poll() is not None for child in supervisor.children.values())


def test_a_platform_component_is_waited_for_before_the_next_starts(short_tmp: Path) -> None:
    specs = [_spec("identity", within=0.5), _spec("auth")]

    def ready(spec: ComponentSpec) -> bool:  # identity ready only once auth runs: never
        return spec.name != "identity" or "auth" in supervisor.children

    supervisor = Supervisor(short_tmp / "state", specs, ready, log=lambda _: None, stop_grace=2)
    supervisor.acquire()
    try:
        assert supervisor.start_all() == "identity"
        assert "auth" not in supervisor.children
    finally:
        supervisor.stop_all()
        supervisor.release()
