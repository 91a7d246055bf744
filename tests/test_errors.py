import pytest

from segzoo.errors import (
    CheckpointError,
    ConfigError,
    NotFoundError,
    SegzooError,
    WeightsUnavailableError,
    close_matches,
    unknown_name_error,
)

CHOICES = ["resnet18_unet", "resnet34_unet", "unet", "linknet", "pspnet"]


@pytest.mark.parametrize(("cls", "builtin"), [(ConfigError, ValueError), (CheckpointError, ValueError),
                                              (WeightsUnavailableError, RuntimeError), (NotFoundError, KeyError)])
def test_error_classes_are_both_segzoo_and_builtin(cls, builtin):
    err = cls("bad thing")
    assert isinstance(err, SegzooError) and isinstance(err, builtin)
    with pytest.raises(builtin):
        raise err


def test_not_found_str_is_unquoted():
    assert str(NotFoundError("unknown model 'x'")) == "unknown model 'x'"
    assert str(NotFoundError()) == ""
    assert str(KeyError("plain")) == "'plain'"  # what NotFoundError avoids


def test_close_matches_is_case_insensitive_and_ordered():
    assert close_matches("resnet34_unt", CHOICES)[0] == "resnet34_unet"
    assert close_matches("LINKNET", CHOICES)[0] == "linknet"
    assert close_matches("zzzzzz", CHOICES) == []
    assert len(close_matches("resnet_unet", CHOICES, n=1)) == 1
    assert close_matches("anything", []) == []


def test_unknown_name_error_message():
    err = unknown_name_error("model", "resnet34_unt", CHOICES)
    assert isinstance(err, NotFoundError) and isinstance(err, KeyError)
    msg = str(err)
    assert msg.startswith("unknown model 'resnet34_unt'; did you mean 'resnet34_unet'")
    assert msg.endswith("Valid model names: " + ", ".join(sorted(CHOICES)))


def test_unknown_name_error_without_close_match_and_with_generator():
    msg = str(unknown_name_error("loss", "qqq", (name for name in ["DiceLoss", "FocalLoss"])))
    assert "did you mean" not in msg
    assert msg.startswith("unknown loss 'qqq'")
    assert msg.endswith("Valid loss names: DiceLoss, FocalLoss")
