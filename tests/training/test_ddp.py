"""DDP for real: two CPU processes (gloo) give the metrics and weights of one process on the same data."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from _helpers import TinyNet, make_loaders

from segzoo.training import Callback, CallbackOrder, SupervisedRunner
from segzoo.training.callbacks import DiceCallback


def _run(logdir, batch_size):
    torch.manual_seed(0)
    model = TinyNet()
    loaders = make_loaders(n_train=16, n_valid=8, batch_size=batch_size, shuffle=False)
    state = SupervisedRunner(device="cpu").train(
        model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.5), loaders, logdir,
        callbacks=[DiceCallback(threshold=0.5)], num_epochs=2)
    return state, model


def _worker(rank, port, logdir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    state, model = _run(logdir, batch_size=4)
    assert state.distributed and state.world_size == 2
    # a NaN loss on rank 0 only: every rank skips that batch (no rank is left waiting for gradients)
    poisoned = TinyNet()
    skip = SupervisedRunner(device="cpu").train(
        poisoned, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(poisoned.parameters(), 0.5),
        make_loaders(n_train=16, n_valid=8, batch_size=4, shuffle=False), logdir + "_skip",
        callbacks=[PoisonRank0()], nonfinite="skip")
    skipped = torch.tensor([float(skip.skipped_batches)])
    torch.distributed.all_reduce(skipped)
    if rank == 0:
        torch.save({"metrics": state.valid_metrics, "params": [p.detach().clone() for p in model.parameters()],
                    "skipped": skipped.item()}, out)
    torch.distributed.destroy_process_group()


class PoisonRank0(Callback):
    def __init__(self):
        super().__init__(CallbackOrder.Criterion + 1)

    def on_batch_end(self, state):
        if state.need_backward and state.batch_index == 0 and torch.distributed.get_rank() == 0:
            state.loss["loss"] = state.loss["loss"] * float("inf")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "ddp"), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    assert ddp["skipped"] == 2  # both ranks skipped batch 0
    single, model = _run(tmp_path / "single", batch_size=8)  # one process sees the global batch
    assert ddp["metrics"]["loss"] == pytest.approx(single.valid_metrics["loss"], rel=1e-5)
    assert ddp["metrics"]["dice"] == pytest.approx(single.valid_metrics["dice"], rel=1e-5)
    for a, b in zip(ddp["params"], model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # only rank 0 wrote checkpoints and logs
    assert (tmp_path / "ddp" / "checkpoints" / "best.pth").exists()
    assert (tmp_path / "ddp" / "log.txt").read_text().count("valid:") == 2
