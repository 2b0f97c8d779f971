"""One blocklist file shared by several gateway processes (``gateway.workers``): a block
made through one process holds in the others within LOOK_EVERY; changes made at the same
time by several processes are all kept (each is made under the file's lock, on the list
the file holds); a file that cannot be read keeps the blocks in force."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from trustmesh.gateway.blocklist import LOOK_EVERY, Blocklist

NOW = 1_000_000.0


def test_a_block_made_in_one_process_holds_in_another(tmp_path: Path) -> None:
    path = tmp_path / "blocks.json"
    first, second = Blocklist(path, now=NOW), Blocklist(path, now=NOW)
    first.block("203.0.113.7", seconds=600, reason="brute force", by="audit", now=NOW)
    assert first.blocked("203.0.113.7", NOW)
    later = NOW + LOOK_EVERY
    assert second.blocked("203.0.113.7", later)
    assert second.blocked("::ffff:203.0.113.7", later)  # every spelling, as in one process
    first.unblock("203.0.113.7", later)
    assert not second.blocked("203.0.113.7", later + LOOK_EVERY)


def test_changes_from_two_processes_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "blocks.json"
    first, second = Blocklist(path, now=NOW), Blocklist(path, now=NOW)
    first.block("198.51.100.1", seconds=600, reason="a", by="audit", now=NOW)
    # the second has not looked at the file since: its change must not drop the first's
    second.block("198.51.100.2", seconds=600, reason="b", by="operator", now=NOW)
    assert {b.address for b in Blocklist(path, now=NOW).active(NOW)} == {
        "198.51.100.1",
        "198.51.100.2",
    }
    assert first.blocked("198.51.100.2", NOW + LOOK_EVERY)


def test_an_unreadable_file_keeps_the_blocks_in_force(tmp_path: Path) -> None:
    path = tmp_path / "blocks.json"
    listed = Blocklist(path, now=NOW)
    listed.block("192.0.2.9", seconds=600, reason="scan", by="audit", now=NOW)
    path.write_text("not json")
    assert listed.blocked("192.0.2.9", NOW + LOOK_EVERY)


def _block_many(path: Path, first: int) -> None:
    listed = Blocklist(path, now=NOW)
    for n in range(first, first + 40):
        listed.block(f"10.0.{n // 250}.{n % 250 + 1}", seconds=600, reason="r", by="p", now=NOW)


def test_processes_blocking_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "blocks.json"
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_block_many, args=(path, 40 * k)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(Blocklist(path, now=NOW).active(NOW)) == 160
