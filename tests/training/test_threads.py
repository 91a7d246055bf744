"""Threads (issue 23, point 3): torch's intra-op threads from the CPUs really free, unless the user chose them."""

from __future__ import annotations

import os

import pytest
import torch
from _helpers import TinyNet, make_loaders, train

from segzoo.hardware import threads as th
from segzoo.training import Callback, CallbackOrder, run_choices


def test_free_cpus_are_the_available_ones_minus_the_load():
    two = (2, "affinity 2")
    assert th.choose_threads(load=0.2, cpus=two).threads == 2
    assert th.choose_threads(load=2.7, cpus=two).threads == 1   # a busy machine: one thread, not two
    assert th.choose_threads(load=40.0, cpus=two).threads == 1  # at least one
    assert th.choose_threads(load=0.0, cpus=(8, "affinity 8")).threads == 8
    assert "load 2.70" in th.choose_threads(load=2.7, cpus=two).source


def test_the_load_is_what_other_processes_take_now(monkeypatch):
    """Sampled at start (this process's own CPU time left out), not the load average its own work raised."""
    real = th.other_cpus_now
    monkeypatch.setattr(th, "other_cpus_now", lambda: (1.2, "other processes' CPUs"))
    choice = th.choose_threads(cpus=(4, "affinity 4"))
    assert choice.source == "affinity 4, other processes' CPUs 1.20"
    assert choice.threads == round(4 - 1.2 * min(1.0, 4 / (os.cpu_count() or 4)))
    others, what = real(0.01)
    assert others >= 0.0 and what in ("other processes' CPUs", "load average")


def test_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert th.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert th.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert th.cgroup_cpu_limit(v1) == 0.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert th.cgroup_cpu_limit(v1) is None
    assert th.cgroup_cpu_limit(tmp_path / "absent") is None
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    cpus, how = th.available_cpus(tmp_path)
    assert cpus == 1 and ("cgroup quota 1" in how) == (len(os.sched_getaffinity(0)) > 1)


def test_user_choice_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert th.user_set_threads() == "OMP_NUM_THREADS=3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    default = len(os.sched_getaffinity(0))
    try:
        torch.set_num_threads(default)
        assert th.user_set_threads() is None
        torch.set_num_threads(default + 1)
        assert th.user_set_threads() == f"torch.set_num_threads({default + 1})"
    finally:
        torch.set_num_threads(before)


class Threads(Callback):
    def __init__(self):
        super().__init__(CallbackOrder.External)
        self.seen = set()

    def on_batch_end(self, state):
        self.seen.add(torch.get_num_threads())


@pytest.fixture
def torch_default_threads(monkeypatch):
    """No OMP_NUM_THREADS and torch at its own default count (as a user's fresh process); restored afterwards."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    default = len(os.sched_getaffinity(0))
    torch.set_num_threads(default)
    yield default
    torch.set_num_threads(before)


def test_a_run_trains_with_the_free_cpus_and_gives_them_back(torch_default_threads, monkeypatch, tmp_path, capsys):
    """Old code: torch's default (one per CPU) whatever the load. Now the free CPUs, said in the first line."""
    default = torch_default_threads
    chosen = max(1, default - 1) if default > 1 else 1
    monkeypatch.setattr(run_choices, "choose_threads", lambda: th.ThreadChoice(chosen, "affinity 9, load 8.00"))
    seen = Threads()
    state = train(TinyNet(), make_loaders(), tmp_path / "run", callbacks=[seen])
    assert seen.seen == {chosen}
    assert state.checkpoint_data["threads"] == {"threads": chosen, "source": "affinity 9, load 8.00"}
    assert torch.get_num_threads() == default  # given back when train returns
    assert f"threads {chosen} (affinity 9, load 8.00)" in capsys.readouterr().out.splitlines()[0]
    if default == 1:
        pytest.skip("one CPU here: the chosen count cannot differ from torch's default")


def test_a_run_keeps_the_users_threads(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(run_choices, "choose_threads", lambda: pytest.fail("chose threads the user had set"))
    before = torch.get_num_threads()
    state = train(TinyNet(), make_loaders(), tmp_path / "run")
    assert torch.get_num_threads() == before
    assert state.checkpoint_data["threads"]["source"] == "set by the user (OMP_NUM_THREADS=1)"


class Boom(Callback):
    def __init__(self):
        super().__init__(CallbackOrder.External)

    def on_batch_start(self, state):
        raise RuntimeError("boom")


def test_threads_are_given_back_when_the_run_fails(torch_default_threads, monkeypatch, tmp_path):
    default = torch_default_threads
    monkeypatch.setattr(run_choices, "choose_threads", lambda: th.ThreadChoice(max(1, default - 1), "test"))
    with pytest.raises(RuntimeError, match="boom"):
        train(TinyNet(), make_loaders(), tmp_path / "run", callbacks=[Boom()])
    assert torch.get_num_threads() == default
