"""Compute-system profiles turn into the right horovodrun command lines."""
import pytest

from systems.launch import command, load


def test_laptop_profile_runs_two_local_ranks_over_mpi():
    cmd = command(load("laptop"), ["--problem", "SwissCube"])
    i = cmd.index("-np")
    assert cmd[i + 1] == "2" and cmd[cmd.index("-H") + 1] == "localhost:2" and "--mpi" in cmd
    assert cmd[-2:] == ["--problem", "SwissCube"]  # threads 0: no override added


def test_slurm_profile_expands_the_allocation(monkeypatch):
    import systems.launch as launch
    monkeypatch.setattr(launch, "slurm_hosts", lambda: ("n1:4,n2:4", 8))
    cmd = command(load("slurm"), ["--problem", "SwissCube"])
    assert cmd[cmd.index("-np") + 1] == "8" and cmd[cmd.index("-H") + 1] == "n1:4,n2:4"
    assert cmd[-2:] == ["--set", "engine.threads=4"]


def test_unknown_system_is_named():
    with pytest.raises(SystemExit, match="no such system.*laptop"):
        load("cluster9")
