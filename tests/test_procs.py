"""engine.procs: liveness, descendants, memory and killing process trees, on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.procs import (
    descendants,
    kill_group,
    kill_tree,
    pid_alive,
    rss,
    tree_rss,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc"),
]

#: A process that leads a group of its own and starts: a child in the group,
#: a grandchild, and a child in a session of its own; prints their pids.
TREE = """
import os, subprocess, sys, time
os.setpgid(0, 0)
a = subprocess.Popen(["sleep", "60"])
b = subprocess.Popen([sys.executable, "-c", "import subprocess, time; "
                      "p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); "
                      "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
grandchild = int(b.stdout.readline())
c = subprocess.Popen(["sleep", "60"], start_new_session=True)
print(a.pid, b.pid, grandchild, c.pid, flush=True)
time.sleep(60)
"""


def start_tree() -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(x) for x in proc.stdout.readline().split()]
    return proc, pids


def wait_dead(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.01)
    return [p for p in pids if pid_alive(p)]


class TestLiveness:
    def test_alive_zombie_and_gone(self) -> None:
        """A running process is alive; once it exited (a zombie, then reaped) it is not."""
        assert pid_alive(os.getpid())
        proc = subprocess.Popen(["sleep", "60"])
        assert pid_alive(proc.pid)
        proc.kill()
        deadline = time.monotonic() + 5
        while pid_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pid_alive(proc.pid)  # a zombie until reaped: dead already
        proc.wait()
        assert not pid_alive(proc.pid) and not pid_alive(0) and not pid_alive(-1)


class TestTrees:
    def test_descendants_finds_grandchildren_and_other_sessions(self) -> None:
        """Every live process under a root, whatever its group or session."""
        proc, pids = start_tree()
        try:
            assert set(pids) <= descendants(proc.pid)
            assert set(pids) | {proc.pid} <= descendants(os.getpid())
        finally:
            kill_tree(proc.pid)
            proc.wait()

    def test_kill_tree_kills_the_group_the_grandchildren_and_escapees(self) -> None:
        """kill_tree takes the root, its group and a child in another session down at once."""
        proc, pids = start_tree()
        signalled = kill_tree(proc.pid)
        proc.wait(timeout=10)
        assert set(pids) | {proc.pid} <= signalled
        assert wait_dead(pids) == []

    def test_kill_tree_never_kills_this_process(self) -> None:
        """Asked to kill the driver itself, it refuses: nothing is signalled."""
        assert kill_tree(os.getpid()) == set()
        assert pid_alive(os.getpid())

    def test_kill_group_ends_what_a_dead_leader_left(self) -> None:
        """The group of a leader that died still holds its children; kill_group ends them."""
        proc, pids = start_tree()
        proc.kill()  # the leader only: its children live on, re-parented
        proc.wait()
        assert all(pid_alive(p) for p in pids[:3])
        assert kill_group(proc.pid)
        group, escapee = pids[:3], pids[3]  # the escapee started a session of its own
        try:
            assert wait_dead(group) == []
            assert pid_alive(escapee)
        finally:
            os.kill(escapee, 9)

    def test_kill_group_leaves_a_live_process_with_that_pid_alone(self) -> None:
        """A pid that a live process holds is not a dead leader's group: nothing is killed."""
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        try:
            assert not kill_group(proc.pid)
            assert pid_alive(proc.pid)
        finally:
            proc.kill()
            proc.wait()


class TestMemory:
    def test_tree_rss_counts_a_child_that_holds_memory(self) -> None:
        """A child holding 100 MB adds about that much to its parent's tree RSS."""
        code = "b = bytearray(100_000_000); print('ok', flush=True); import time; time.sleep(60)"
        before = tree_rss(os.getpid())
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
            assert rss(proc.pid) >= 100_000_000
            assert tree_rss(os.getpid()) - before >= 100_000_000
        finally:
            proc.kill()
            proc.wait()
        assert rss(proc.pid) == 0
