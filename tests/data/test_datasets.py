import numpy as np
import pytest
import torch
from PIL import Image

from segzoo.data import ProceduralSegmentation, SegmentationFolder, colorize_mask, denormalize, get_transforms


def test_procedural_deterministic_and_shapes():
    a = ProceduralSegmentation(4, image_size=(40, 56), seed=3)
    b = ProceduralSegmentation(4, image_size=(40, 56), seed=3)
    c = ProceduralSegmentation(4, image_size=(40, 56), seed=4)
    x, y = a[1]["features"], a[1]["targets"]
    assert x.shape == (3, 40, 56) and x.dtype == torch.float32
    assert y.shape == (1, 40, 56) and set(y.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(x, b[1]["features"]) and not torch.equal(x, c[1]["features"])
    assert not torch.equal(x, a[2]["features"])


def test_procedural_multiclass():
    ds = ProceduralSegmentation(8, image_size=32, num_classes=4)
    ys = torch.stack([ds[i]["targets"] for i in range(8)])
    assert ys.dtype == torch.int64 and ys.shape == (8, 32, 32)
    assert ys.min() >= 0 and ys.max() <= 3 and len(ys.unique()) > 2


def test_procedural_bad_args():
    with pytest.raises(ValueError, match="image_size"):
        ProceduralSegmentation(2, image_size=4)
    with pytest.raises(ValueError, match="num_samples"):
        ProceduralSegmentation(0)
    with pytest.raises(IndexError):
        ProceduralSegmentation(2)[5]


def test_visual_helpers_round_trip():
    ds = ProceduralSegmentation(1, image_size=16)
    image, mask = ds.sample(0)
    back = denormalize(ds[0]["features"])
    assert torch.allclose(back, torch.from_numpy(image).permute(2, 0, 1).float() / 255, atol=1e-5)
    assert colorize_mask(mask).shape == (16, 16, 3)


def _write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(folder / name)


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        _write(tmp_path / "img", f"a{i}.png", rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        _write(tmp_path / "msk", f"a{i}.png", (rng.integers(0, 2, (20, 24)) * 255).astype(np.uint8))
    return tmp_path


def test_folder_happy_path_and_transforms(pairs):
    ds = SegmentationFolder(pairs / "img", pairs / "msk")
    item = ds[0]
    assert item["features"].shape == (3, 20, 24) and item["targets"].shape == (1, 20, 24)
    assert item["name"] == "a0"
    aug = SegmentationFolder(pairs / "img", pairs / "msk", transforms=get_transforms("train", 16))
    item = aug[1]
    assert item["features"].shape == (3, 16, 16) and item["targets"].shape == (1, 16, 16)


def test_transforms_move_image_and_mask_together():
    t = get_transforms("train", 32)
    image = np.zeros((32, 32, 3), np.uint8)
    image[:16] = 255
    mask = (image[..., 0] > 0).astype(np.int64)
    for _ in range(5):
        out = t(image=image, mask=mask)
        bright = out["image"].mean(-1) > 100
        assert (bright == (out["mask"] > 0)).mean() > 0.95


def test_folder_bad_inputs(tmp_path, pairs):
    with pytest.raises(FileNotFoundError, match="nothere"):
        SegmentationFolder(tmp_path / "nothere", pairs / "msk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png"):
        SegmentationFolder(tmp_path / "empty", pairs / "msk")
    _write(pairs / "img", "lonely.png", np.zeros((20, 24, 3), np.uint8))
    with pytest.raises(ValueError, match="lonely"):
        SegmentationFolder(pairs / "img", pairs / "msk")
    (pairs / "img" / "lonely.png").unlink()
    _write(pairs / "msk", "a1.png", np.zeros((10, 24), np.uint8))
    with pytest.raises(ValueError, match="a1.png.*24x10"):
        SegmentationFolder(pairs / "img", pairs / "msk")[1]
    _write(pairs / "msk", "a1.png", np.full((20, 24), 7, np.uint8))
    with pytest.raises(ValueError, match=r"values \[7\]"):
        SegmentationFolder(pairs / "img", pairs / "msk", num_classes=3)[1]
    (pairs / "img" / "a2.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image.*a2.png"):
        SegmentationFolder(pairs / "img", pairs / "msk")[2]
