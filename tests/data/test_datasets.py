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


def test_folder_binary_zero_one_and_multiclass(tmp_path):
    mask = np.zeros((12, 10), np.uint8)
    mask[:4] = 1
    mask[6:] = 2
    _write(tmp_path / "img", "x.jpg", np.full((12, 10, 3), 128, np.uint8))
    _write(tmp_path / "msk", "x.png", mask)
    multi = SegmentationFolder(tmp_path / "img", tmp_path / "msk", num_classes=3)[0]["targets"]
    assert multi.dtype == torch.int64 and multi.shape == (12, 10)
    assert torch.equal(multi, torch.from_numpy(mask.astype(np.int64)))
    for fg in (1, 255):
        _write(tmp_path / "msk", "x.png", np.where(mask > 0, fg, 0).astype(np.uint8))
        binary = SegmentationFolder(tmp_path / "img", tmp_path / "msk")[0]["targets"]
        assert binary.dtype == torch.float32 and binary.shape == (1, 12, 10)
        assert binary.sum() == 4 * 10 + 6 * 10 and set(binary.unique().tolist()) == {0.0, 1.0}


def test_folder_masks_without_images_and_bad_args(pairs):
    _write(pairs / "msk", "orphan.png", np.zeros((20, 24), np.uint8))
    with pytest.raises(ValueError, match=r"masks without images \['orphan'\]"):
        SegmentationFolder(pairs / "img", pairs / "msk")
    (pairs / "msk" / "orphan.png").unlink()
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationFolder(pairs / "img", pairs / "msk", num_classes=0)
    with pytest.raises(ValueError, match="3 mean and 3 positive std values"):  # one check for datasets and inference
        SegmentationFolder(pairs / "img", pairs / "msk", mean=(0.5,))
    with pytest.raises(FileNotFoundError, match="masks folder"):
        SegmentationFolder(pairs / "img", pairs / "nomasks")


def test_procedural_with_transforms_keeps_pairs_aligned():
    plain = ProceduralSegmentation(3, image_size=48, seed=5)
    flipped = ProceduralSegmentation(3, image_size=48, seed=5, transforms=lambda image, mask: {
        "image": image[:, ::-1], "mask": mask[:, ::-1]})
    for i in range(3):
        assert torch.equal(plain[i]["features"].flip(-1), flipped[i]["features"])
        assert torch.equal(plain[i]["targets"].flip(-1), flipped[i]["targets"])
    aug = ProceduralSegmentation(2, image_size=48, transforms=get_transforms("train", 32))
    item = aug[0]
    assert item["features"].shape == (3, 32, 32) and item["targets"].shape == (1, 32, 32)


def test_transform_presets_sizes_and_errors():
    image = np.zeros((30, 50, 3), np.uint8)
    mask = np.zeros((30, 50), np.int64)
    out = get_transforms("valid", (40, 40))(image=image, mask=mask)
    assert out["image"].shape == (40, 40, 3) and out["mask"].shape == (40, 40)
    out = get_transforms("train", (24, 32))(image=image, mask=mask)
    assert out["image"].shape == (24, 32, 3) and out["mask"].shape == (24, 32)
    with pytest.raises(ValueError, match="'test'"):
        get_transforms("test", 32)
    with pytest.raises(ValueError, match="image_size"):
        get_transforms("train", (32,))
    with pytest.raises(ValueError, match="positive"):
        get_transforms("valid", 0)


def test_procedural_labels_are_not_colour_thresholds():
    # shapes and background share the colour range: no single channel threshold separates them
    ds = ProceduralSegmentation(16, image_size=48, seed=1)
    pixels = np.concatenate([ds.sample(i)[0].reshape(-1, 3) for i in range(16)]).astype(np.float32)
    labels = np.concatenate([ds.sample(i)[1].reshape(-1) for i in range(16)]) > 0
    assert 0.05 < labels.mean() < 0.6
    for c in range(3):
        best = max(max(((pixels[:, c] > t) == labels).mean(), ((pixels[:, c] <= t) == labels).mean())
                   for t in range(0, 256, 8))
        assert best < 0.9


def test_colorize_mask_palette():
    mask = np.array([[0, 1], [2, 15]])
    rgb = colorize_mask(mask)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and len({tuple(v) for v in rgb.reshape(-1, 3)}) == 4
    assert rgb[1, 1].max() > 0
    with pytest.raises(ValueError, match="-1"):
        colorize_mask(np.array([[-1]]))
