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


def test_a_torchrun_profile_runs_torchrun_on_this_machine():
    cmd = command(load("laptop_torchrun"), ["--problem", "SwissCube"])
    assert cmd[0].endswith("torchrun") and cmd[1:3] == ["--standalone", "--nproc_per_node=2"]
    assert cmd[3].endswith("main.py") and cmd[-2:] == ["--problem", "SwissCube"]


def test_torchrun_on_slurm_runs_one_torchrun_per_node_meeting_on_the_first(monkeypatch):
    import systems.launch as launch
    monkeypatch.setattr(launch, "slurm_nodes", lambda: (["n1", "n2"], 8))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cmd = command(load("slurm_torchrun"), ["--problem", "SwissCube"])
    assert cmd[:3] == ["srun", "--nodes=2", "--ntasks-per-node=1"] and cmd[3].endswith("torchrun")
    assert {"--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=n1:29500",
            "--rdzv_id=4242"} <= set(cmd)
    assert cmd[-2:] == ["--set", "engine.threads=4"]


def test_an_unknown_launcher_is_named(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text("ranks: 2\nhosts: localhost:2\nlauncher: mpiexec\ncontroller: mpi\nthreads_per_rank: 0\nenv: {}\n")
    with pytest.raises(SystemExit, match="launcher must be horovodrun or torchrun, not 'mpiexec'"):
        load(str(path))
