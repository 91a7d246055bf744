"""The runner loop: batches, stages, seeding, inference, AMP and argument errors."""

import numpy as np
import pytest
import torch
from _helpers import TinyNet, make_loaders, train

from segzoo.training import Callback, Runner, Stage, SupervisedRunner
from segzoo.training.callbacks import DiceCallback, EarlyStoppingCallback


def test_seeded_runs_reproducible(tmp_path):
    results = []
    init = TinyNet().state_dict()
    for i in range(2):
        model = TinyNet()
        model.load_state_dict(init)
        torch.rand(i + 1)  # different global RNG state before training: seed= must reset it
        train(model, make_loaders(), tmp_path / str(i), seed=7, num_epochs=2)  # shuffled train loader
        results.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_tuple_batches_predict_and_infer(tiny, tmp_path):
    loaders = make_loaders(tuples=True)
    train(tiny, loaders, tmp_path)
    out = SupervisedRunner().predict_loader(tiny, loaders["valid"])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (8, 1, 8, 8)
    tiny.eval()
    with torch.no_grad():
        expected = torch.cat([tiny(x) for x, _ in loaders["valid"]])
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-6, atol=1e-6)
    state = SupervisedRunner().infer(tiny, {"valid": loaders["valid"]}, callbacks=[DiceCallback()])
    assert 0 <= state.epoch_metrics["valid"]["dice"] <= 1


def test_predict_loader_from_checkpoint(tiny, loaders, tmp_path):
    train(tiny, loaders, tmp_path)
    fresh = TinyNet()
    out = SupervisedRunner(model=fresh).predict_loader(None, loaders["valid"], resume=tmp_path, verbose=True)
    tiny.eval()
    with torch.no_grad():
        expected = torch.cat([tiny(b["features"]) for b in loaders["valid"]])
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-6, atol=1e-6)
    assert SupervisedRunner().predict_loader(tiny, []).shape == (0,)


def test_custom_keys(tmp_path):
    model = TinyNet()
    data = [{"image": torch.rand(2, 3, 8, 8), "mask": torch.rand(2, 1, 8, 8).round()} for _ in range(2)]
    runner = SupervisedRunner(input_key="image", output_key="pred", input_target_key="mask")
    state = runner.train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.1),
                         {"train": data, "valid": data}, tmp_path,
                         callbacks={"dice": DiceCallback(input_key="mask", output_key="pred")})
    assert {"loss", "dice"} <= set(state.valid_metrics)
    with pytest.raises(KeyError, match="no 'image' key"):
        runner.infer(model, {"x": [{"features": torch.rand(1, 3, 8, 8)}]})


def test_multistage(tiny, loaders, tmp_path):
    opt2 = torch.optim.SGD(tiny.parameters(), 0.01)
    seen = []

    class Spy(Callback):
        def on_epoch_end(self, state):
            seen.append((state.stage, state.epoch, state.global_epoch, state.optimizer.param_groups[0]["lr"],
                         type(state.criterion).__name__))

    state = train(tiny, loaders, tmp_path, callbacks=[Spy()], stages=[
        Stage("warmup", 1), Stage("finetune", 2, optimizer=opt2, criterion=torch.nn.MSELoss())])
    assert seen == [("warmup", 1, 1, 0.1, "BCEWithLogitsLoss"), ("finetune", 1, 2, 0.01, "MSELoss"),
                    ("finetune", 2, 3, 0.01, "MSELoss")]
    assert state.stage == "finetune" and state.global_epoch == 3
    assert (tmp_path / "checkpoints" / "last.pth").exists()


def test_stage_callbacks_and_early_stop_per_stage(tiny, loaders, tmp_path):
    stop_now = EarlyStoppingCallback(1, metric="loss", min_delta=1e9)  # never improves after its first epoch
    state = train(tiny, loaders, tmp_path, stages=[Stage("a", 5, callbacks=[stop_now]), Stage("b", 2)])
    assert state.global_epoch == 2 + 2  # stage a stopped after its 2nd epoch, stage b ran fully


def test_argument_errors(tiny, loaders, tmp_path):
    with pytest.raises(ValueError, match="'valid' loader.*\\['train'\\]"):
        train(tiny, {"train": loaders["train"]}, tmp_path)
    with pytest.raises(KeyError, match="main_metric 'dice'"):
        train(tiny, loaders, tmp_path / "x", main_metric="dice")
    with pytest.raises(TypeError, match="dict or a"):
        train(tiny, {"train": [torch.rand(3, 8, 8)], "valid": [torch.rand(3, 8, 8)]}, tmp_path / "y")
    with pytest.raises(ValueError, match="num_epochs >= 1"):
        train(tiny, loaders, tmp_path, num_epochs=0)
    with pytest.raises(ValueError, match="unique"):
        train(tiny, loaders, tmp_path, stages=[Stage("a", 1), Stage("a", 1)])
    with pytest.raises(ValueError, match="amp must be"):
        train(tiny, loaders, tmp_path, amp="fp8")
    with pytest.raises(ValueError, match="no model"):
        SupervisedRunner().train(None, None, None, loaders, tmp_path)
    with pytest.raises(TypeError):
        Runner()  # abstract: batch_to_dict / forward come from subclasses


def test_amp_bf16_on_cpu(tiny, loaders, tmp_path):
    state = train(tiny, loaders, tmp_path, amp="bf16", channels_last=True, callbacks=[DiceCallback()])
    assert state.amp_dtype == torch.bfloat16 and state.scaler is None
    assert np.isfinite(state.valid_metrics["loss"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_amp_fp16_compile_cuda(tiny, loaders, tmp_path):
    runner = SupervisedRunner(device="cuda")
    state = runner.train(tiny, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(tiny.parameters(), 0.1), loaders,
                         tmp_path, amp="fp16", channels_last=True, compile=True)
    assert state.scaler is not None and np.isfinite(state.valid_metrics["loss"])
    ck = torch.load(tmp_path / "checkpoints" / "last_full.pth", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in ck["model_state_dict"])
    assert "scale" in ck["scaler_state_dict"]
