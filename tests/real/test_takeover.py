"""The takeover state machine: pause -> correct -> release on scripted engaged patterns, pause_steps and
release_steps semantics, the takeover count, reset and validation."""

from __future__ import annotations

import pytest
from robopol.real.takeover import AUTONOMOUS, CORRECTING, PAUSED, Takeover


def script(machine: Takeover, pattern: str) -> list[tuple[str | None, str]]:
    """``pattern``: one character per control step, '#' engaged, '.' not; returns (transition, mode) per step."""
    out = []
    for c in pattern:
        transition = machine.update(c == "#")
        out.append((transition, machine.mode))
    return out


def transitions(machine: Takeover, pattern: str) -> dict[int, str]:
    return {i: t for i, (t, _) in enumerate(script(machine, pattern)) if t is not None}


def test_pause_correct_release_sequence():
    machine = Takeover(pause_steps=1, release_steps=3)
    assert machine.mode == AUTONOMOUS and machine.takeovers == 0
    steps = script(machine, "..####....")
    assert steps == [
        (None, AUTONOMOUS), (None, AUTONOMOUS),
        ("pause", PAUSED),         # the human grabs the device: hold, drop pending chunks
        ("correct", CORRECTING),   # held for pause_steps = 1 step: the human's actions drive the robot
        (None, CORRECTING), (None, CORRECTING),
        (None, CORRECTING), (None, CORRECTING),  # let go for 1, 2 steps
        ("release", AUTONOMOUS),   # ... 3 consecutive steps: the policy takes over again
        (None, AUTONOMOUS),
    ]
    assert machine.takeovers == 1


@pytest.mark.parametrize(("pause_steps", "correct_at"), [(1, 1), (2, 2), (3, 3), (5, 5)])
def test_pause_steps_is_how_long_the_robot_holds(pause_steps, correct_at):
    """The pause step itself holds; correction starts ``pause_steps`` steps after it."""
    machine = Takeover(pause_steps=pause_steps, release_steps=3)
    assert transitions(machine, "#" * 8) == {0: "pause", correct_at: "correct"}
    assert machine.mode == CORRECTING


def test_correction_waits_for_the_human_to_still_be_engaged():
    machine = Takeover(pause_steps=2, release_steps=5)
    # engaged, then let go during the hold: no correction until engaged again after the hold
    assert transitions(machine, "#..##") == {0: "pause", 3: "correct"}


@pytest.mark.parametrize("release_steps", [1, 2, 4])
def test_release_steps_counts_consecutive_idle_steps(release_steps):
    machine = Takeover(pause_steps=1, release_steps=release_steps)
    pattern = "##" + ("." * (release_steps - 1) + "#") * 3 + "." * release_steps
    got = transitions(machine, pattern)
    # every idle run one short of release_steps is forgiven by an engaged step; the full run releases
    assert got == {0: "pause", 1: "correct", len(pattern) - 1: "release"}
    assert machine.mode == AUTONOMOUS


def test_letting_go_while_paused_releases_without_correcting():
    machine = Takeover(pause_steps=1, release_steps=2)
    assert transitions(machine, "#..") == {0: "pause", 2: "release"}
    assert machine.takeovers == 1 and machine.mode == AUTONOMOUS


def test_takeovers_are_counted_and_reset_clears():
    machine = Takeover(pause_steps=1, release_steps=2)
    got = transitions(machine, "##..." + "###.." + "#..")
    assert [t for _, t in sorted(got.items())] == ["pause", "correct", "release", "pause", "correct", "release",
                                                   "pause", "release"]
    assert machine.takeovers == 3
    machine.update(True)
    assert machine.mode == PAUSED and machine.takeovers == 4
    machine.reset()
    assert machine.mode == AUTONOMOUS and machine.takeovers == 0
    assert machine.update(False) is None
    assert transitions(machine, "##") == {0: "pause", 1: "correct"}


def test_autonomous_ignores_idle_steps():
    machine = Takeover()
    assert transitions(machine, "." * 20) == {}
    assert machine.mode == AUTONOMOUS and machine.takeovers == 0


def test_defaults():
    machine = Takeover()
    assert (machine.pause_steps, machine.release_steps) == (1, 3)


@pytest.mark.parametrize(("pause_steps", "release_steps"), [(0, 3), (-1, 3), (1, 0), (0, -2)])
def test_validation(pause_steps, release_steps):
    with pytest.raises(ValueError, match=f"need pause_steps >= 1 and release_steps >= 1, got {pause_steps}, "
                                         f"{release_steps}"):
        Takeover(pause_steps=pause_steps, release_steps=release_steps)
