"""Work handed to the engine's thread: it runs there while the owner runs, on the caller
before the owner starts and after it ends, and its result or exception reaches the caller."""

from __future__ import annotations

import threading

import pytest

from serving.commands import Commands


def _where() -> str:
    return threading.current_thread().name


def test_commands_run_on_the_owner_while_it_runs_and_on_callers_otherwise():
    stop, woken = threading.Event(), threading.Event()
    commands = Commands(wake=woken.set)
    owner = threading.Thread(name="owner", target=lambda: _serve(commands, stop, woken))
    assert commands.call(_where) == threading.current_thread().name  # not started yet
    commands.start(owner)
    assert commands.call(_where) == "owner"
    assert commands.call(lambda: commands.call(_where)) == "owner"  # from the owner: at once
    with pytest.raises(ZeroDivisionError):
        commands.call(lambda: 1 / 0)
    assert commands.call(lambda: 6 * 7) == 42  # the owner went on
    stop.set()
    woken.set()
    owner.join(timeout=30)
    assert not owner.is_alive()
    assert commands.call(_where) == threading.current_thread().name  # ended


def _serve(commands: Commands, stop: threading.Event, woken: threading.Event) -> None:
    """An owner loop: wait to be woken, run what is pending, until `stop`."""
    try:
        while not stop.is_set():
            woken.wait(timeout=5)
            woken.clear()
            commands.run_pending()
    finally:
        commands.end()
