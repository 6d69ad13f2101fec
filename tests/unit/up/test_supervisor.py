from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mixroute.up.supervisor import ChildSpec, Supervisor, processes_in_group, tail_file


def _script(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _wait_for(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_child_output_goes_to_its_log_and_tail_returns_the_last_lines(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs")
    child = sup.start(ChildSpec("talker", _script("for i in range(100): print('line', i)")))
    _wait_for(lambda: child.poll() is not None)
    assert child.poll() == 0
    assert child.log_path == tmp_path / "logs" / "talker.log"
    assert child.tail(3).splitlines() == ["line 97", "line 98", "line 99"]
    assert sup.first_exited() is child
    sup.stop(grace_s=1)


def test_each_child_runs_in_its_own_process_group(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    child = sup.start(ChildSpec("sleeper", _script("import time; time.sleep(60)")))
    try:
        assert os.getpgid(child.pid) == child.pid
        assert os.getpgid(child.pid) != os.getpgrp()
    finally:
        sup.stop(grace_s=5)
    assert not child.group_alive()


def test_stop_terminates_grandchildren_in_the_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(p.pid))
        time.sleep(60)
    """
    sup = Supervisor(tmp_path)
    child = sup.start(ChildSpec("parent", _script(code)))
    _wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
    grandchild = int(pid_file.read_text())
    assert _pid_alive(grandchild)
    killed = sup.stop(grace_s=5)
    assert killed == []
    assert not _pid_alive(grandchild)
    assert processes_in_group(child.pid) == []


def test_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """
    sup = Supervisor(tmp_path)
    child = sup.start(ChildSpec("stubborn", _script(code)))
    _wait_for(ready.exists)
    started = time.monotonic()
    killed = sup.stop(grace_s=0.5)
    assert [c.name for c in killed] == ["stubborn"]
    assert 0.4 < time.monotonic() - started < 5
    assert child.poll() == -signal.SIGKILL
    assert not child.group_alive()


def test_hurry_cuts_the_grace_period_short(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """
    sup = Supervisor(tmp_path)
    sup.start(ChildSpec("stubborn", _script(code)))
    _wait_for(ready.exists)
    sup.hurry()
    started = time.monotonic()
    sup.stop(grace_s=30)
    assert time.monotonic() - started < 5


def test_stages_stop_from_highest_to_lowest(tmp_path: Path) -> None:
    order = tmp_path / "order"

    def member(name: str) -> list[str]:
        return _script(f"""
            import signal, sys, time
            def bye(*_):
                with open({str(order)!r}, "a") as f:
                    f.write({name!r} + "\\n")
                sys.exit(0)
            signal.signal(signal.SIGTERM, bye)
            open({str(tmp_path)!r} + "/" + {name!r}, "w").close()
            time.sleep(60)
        """)

    sup = Supervisor(tmp_path / "logs")
    sup.start(ChildSpec("infra", member("infra"), stage=0))
    sup.start(ChildSpec("worker", member("worker"), stage=1))
    sup.start(ChildSpec("router", member("router"), stage=3))
    _wait_for(lambda: all((tmp_path / n).exists() for n in ("infra", "worker", "router")))
    seen_stages: list[list[str]] = []
    sup.stop(grace_s=5, on_stage=lambda group: seen_stages.append([c.name for c in group]))
    assert order.read_text().split() == ["router", "worker", "infra"]
    assert seen_stages == [["router"], ["worker"], ["infra"]]


def test_first_exited_reports_a_crashed_child(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    sup.start(ChildSpec("healthy", _script("import time; time.sleep(60)")))
    crashing = sup.start(
        ChildSpec("crashing", _script("import sys; print('boom: bad flag'); sys.exit(3)"))
    )
    _wait_for(lambda: sup.first_exited() is not None)
    assert sup.first_exited() is crashing
    assert crashing.poll() == 3
    assert "boom: bad flag" in crashing.tail()
    sup.stop(grace_s=5)


def test_duplicate_names_are_rejected(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    sup.start(ChildSpec("a", _script("pass")))
    with pytest.raises(ValueError, match="duplicate"):
        sup.start(ChildSpec("a", _script("pass")))
    sup.stop(grace_s=1)


def test_env_is_passed_to_the_child(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    child = sup.start(
        ChildSpec(
            "env",
            _script("import os; print(os.environ['MIXROUTE_TEST_VALUE'])"),
            env={"MIXROUTE_TEST_VALUE": "xyz"},
        )
    )
    _wait_for(lambda: child.poll() is not None)
    assert child.tail(1) == "xyz"
    sup.stop(grace_s=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """Even `kill -9` of `mixroute up` leaves no orphan behind."""
    pid_file = tmp_path / "child.pid"
    code = f"""
        import time
        from pathlib import Path
        from mixroute.up.supervisor import ChildSpec, Supervisor
        import sys
        sup = Supervisor(Path({str(tmp_path)!r}))
        child = sup.start(ChildSpec("orphan", [sys.executable, "-c", "import time; time.sleep(60)"]))
        Path({str(pid_file)!r}).write_text(str(child.pid))
        time.sleep(60)
    """
    parent = subprocess.Popen(_script(code))
    try:
        _wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", timeout_s=20)
        orphan = int(pid_file.read_text())
        assert _pid_alive(orphan)
        parent.kill()
        parent.wait()
        _wait_for(lambda: not _pid_alive(orphan))
    finally:
        parent.kill()
        parent.wait()


def test_tail_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert tail_file(tmp_path / "nope.log") == ""


def test_children_start_without_running_at_fork_hooks(tmp_path: Path) -> None:
    """Libraries' Python at-fork hooks (gRPC's aborts when its threads are busy) must not
    run between fork and exec of a child."""
    code = f"""
        import os, sys, time
        from pathlib import Path
        from mixroute.up.supervisor import ChildSpec, Supervisor
        os.register_at_fork(after_in_child=lambda: os._exit(99))
        sup = Supervisor(Path({str(tmp_path)!r}))
        child = sup.start(ChildSpec("plain", [sys.executable, "-c", "print('child ran')"]))
        while child.poll() is None:
            time.sleep(0.02)
        sup.stop(grace_s=1)
        print("exit", child.poll())
    """
    result = subprocess.run(_script(code), capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.strip().splitlines()[-1] == "exit 0", result.stdout + result.stderr
    assert (tmp_path / "plain.log").read_text().strip() == "child ran"
