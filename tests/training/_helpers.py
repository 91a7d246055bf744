"""Helpers shared by the trainer tests (tests/training/conftest.py puts this folder on sys.path)."""

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from segzoo.training import Callback, CallbackOrder


class TinyNet(nn.Module):
    """(B, 3, H, W) -> (B, 1, H, W), no BatchNorm so DDP and single-process runs agree."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))

    def forward(self, x):
        return self.net(x)


def make_loaders(n_train=16, n_valid=8, size=8, batch_size=4, tuples=False, shuffle=True):
    g = torch.Generator().manual_seed(123)
    x = torch.rand(n_train + n_valid, 3, size, size, generator=g)
    y = (x.mean(1, keepdim=True) > 0.5).float()
    if tuples:
        tr = TensorDataset(x[:n_train], y[:n_train])
        va = TensorDataset(x[n_train:], y[n_train:])
    else:
        tr = [{"features": a, "targets": b} for a, b in zip(x[:n_train], y[:n_train])]
        va = [{"features": a, "targets": b} for a, b in zip(x[n_train:], y[n_train:])]
    return {"train": DataLoader(tr, batch_size=batch_size, shuffle=shuffle),
            "valid": DataLoader(va, batch_size=batch_size)}


def train(model, loaders, logdir, **kw):
    """SupervisedRunner.train with BCE and SGD(lr=0.1), one epoch unless told."""
    from segzoo.training import SupervisedRunner

    kw.setdefault("num_epochs", 1)
    return SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.1),
                                    loaders, logdir, **kw)


def scripted_metric(values, name="m"):
    """A metric callback whose loader value at epoch e is ``values[e - 1]`` (global epoch)."""
    from segzoo.training.callbacks import MetricCallback

    class Scripted(MetricCallback):
        def __init__(self):
            super().__init__(name, lambda o, t: 0.0)

        def on_loader_end(self, state):
            state.loader_metrics[name] = float(values[state.global_epoch - 1])

    return Scripted()


class Counter(Callback):
    """A stateful callback: adds ``step`` at each epoch end; its state is the count (saved by the
    CheckpointCallback, which runs after every callback's ``on_epoch_end``, whatever their ``order``)."""

    def __init__(self, name, step=1):
        super().__init__(CallbackOrder.External)
        self.name, self.step, self.count = name, step, 0

    def on_epoch_end(self, state):
        self.count += self.step

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state_dict):
        self.count = state_dict["count"]
