import pytest
import torch

from segzoo.metrics import dice, dice_from_sums, iou, iou_from_sums, segmentation_sums

BIG = 20.0


def _binary(b=2, h=16, w=16):
    t = (torch.rand(b, 1, h, w) > 0.5).float()
    return t, (t * 2 - 1) * BIG  # confident logits equal to the target


def test_perfect_miss_and_empty():
    t, logits = _binary()
    assert dice(logits, t, threshold=0.5) == pytest.approx(1.0)
    assert iou(logits, t, threshold=0.5) == pytest.approx(1.0)
    assert dice(-logits, t, threshold=0.5) == pytest.approx(0.0)
    empty = torch.zeros(1, 1, 8, 8)
    assert dice(torch.full_like(empty, -BIG), empty, threshold=0.5) == 1.0
    assert iou(torch.full_like(empty, -BIG), empty, threshold=0.5) == 1.0


def test_known_values():
    t = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    p = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert dice(p, t, activation=None).item() == pytest.approx(0.5)
    assert iou(p, t, activation=None).item() == pytest.approx(1 / 3)


def test_accumulated_sums_equal_whole_epoch():
    batches = [(torch.randn(3, 2, 8, 8), (torch.rand(3, 2, 8, 8) > 0.6).float()) for _ in range(5)]
    sums = [torch.zeros(2, dtype=torch.float64) for _ in range(3)]
    for o, t in batches:
        for acc, s in zip(sums, segmentation_sums(o, t, threshold=0.5)):
            acc += s
    all_o = torch.cat([o for o, _ in batches])
    all_t = torch.cat([t for _, t in batches])
    torch.testing.assert_close(dice_from_sums(*sums), dice(all_o, all_t, threshold=0.5, per_class=True))
    torch.testing.assert_close(iou_from_sums(*sums), iou(all_o, all_t, threshold=0.5, per_class=True))
    # the mean of batch ratios is a different (wrong) number in general
    batch_mean = torch.stack([dice(o, t, threshold=0.5) for o, t in batches]).mean()
    assert not torch.isclose(batch_mean, dice_from_sums(*sums).mean())


def test_softmax_class_indices_and_ignore_index():
    target = torch.randint(0, 3, (2, 8, 8))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * BIG
    assert dice(logits, target, activation="Softmax2d").item() == pytest.approx(1.0)
    per = iou(logits, target, activation="Softmax2d", per_class=True, classes=["bg", "a", "b"])
    assert set(per) == {"bg", "a", "b"}
    # pixels marked 255 are ignored even where the prediction is wrong
    noisy = target.clone()
    noisy[:, :4] = 255
    wrong = logits.clone()
    wrong[:, :, :4] = torch.roll(wrong[:, :, :4], 1, dims=1)
    assert dice(wrong, noisy, activation="Softmax2d", ignore_index=255).item() == pytest.approx(1.0)
    assert dice(wrong, target, activation="Softmax2d").item() < 0.9


def test_fp16_large_inputs_finite():
    t = (torch.rand(2, 1, 512, 512) > 0.5).half()
    o = torch.randn(2, 1, 512, 512).half()
    inter, osum, tsum = segmentation_sums(o, t, threshold=0.5)
    assert inter.dtype == torch.float64 and torch.isfinite(osum).all()
    assert 0 < dice(o, t).item() < 1


def test_bad_shapes_and_activation():
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        dice(torch.randn(2, 1, 8, 8), torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="activation"):
        dice(torch.randn(1, 1, 4, 4), torch.rand(1, 1, 4, 4), activation="relu")
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        dice(torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 7), activation="Softmax2d")


def test_threshold_and_soft_paths():
    t, logits = _binary()
    noisy = logits * 0.05 + torch.randn_like(logits)  # uncertain logits
    soft = dice(noisy, t)
    hard = dice(noisy, t, threshold=0.5)
    manual = dice((torch.sigmoid(noisy) > 0.5).float(), t, activation=None)
    assert hard.item() == pytest.approx(manual.item())
    assert soft.item() != pytest.approx(hard.item())
    # (B, H, W) targets are accepted when C == 1
    assert dice(noisy, t[:, 0], threshold=0.5).item() == pytest.approx(hard.item())


def test_per_class_known_values_and_softmax_argmax():
    # class 0 predicted everywhere, target half class 0 / half class 1
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    target[0, 1] = 1
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 0] = 1.0  # argmax -> class 0 everywhere (soft prob only ~0.73)
    per = dice(logits, target, activation="Softmax2d", per_class=True)
    torch.testing.assert_close(per, torch.tensor([2 * 2 / (4 + 2), 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    per_iou = iou(logits, target, activation="Softmax2d", per_class=True)
    torch.testing.assert_close(per_iou, torch.tensor([0.5, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    assert per.dtype == torch.float64 and per.shape == (2,)


def test_bf16_inputs_and_class_name_errors():
    o = torch.randn(2, 3, 16, 16).bfloat16()
    t = torch.randint(0, 3, (2, 16, 16))
    torch.testing.assert_close(dice(o, t, activation="Softmax2d"), dice(o.float(), t, activation="Softmax2d"))
    with pytest.raises(ValueError, match="2 class names"):
        iou(o, t, classes=["a", "b"], per_class=True, activation="Softmax2d")


def test_catalyst_iou_classes_means_per_class():
    from segzoo.metrics import iou, jaccard

    logits = torch.tensor([[[[5.0, -5.0]], [[-5.0, 5.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])
    per = iou(logits, target, classes=["a", "b"], threshold=0.5)  # 19.x: naming the classes asks for per-class values
    assert set(per) == {"a", "b"}
    assert float(per["a"]) == pytest.approx(1.0, abs=1e-3) and float(per["b"]) == pytest.approx(0.5, abs=1e-3)
    assert float(iou(logits, target, classes=["a", "b"], per_class=False, threshold=0.5)) == pytest.approx(0.75, abs=1e-3)
    assert jaccard is iou


def test_float_class_maps_are_class_indices():
    """As for the multiclass losses: float (B, H, W) targets of whole numbers are class indices, others are refused."""
    o = torch.randn(2, 3, 16, 16)
    t = torch.randint(0, 3, (2, 16, 16))
    torch.testing.assert_close(dice(o, t.float(), activation="Softmax2d"), dice(o, t, activation="Softmax2d"))
    with pytest.raises(ValueError, match=r"\(2, 16, 16\).*whole class number"):
        dice(o, t.float() + 0.5)
    ignored = t.clone()
    ignored[:, :4] = 255
    torch.testing.assert_close(iou(o, ignored.float(), activation="Softmax2d", ignore_index=255, per_class=True),
                               iou(o, ignored, activation="Softmax2d", ignore_index=255, per_class=True))
