import re
from pathlib import Path

import pytest

from segzoo.errors import (
    CheckpointError,
    ConfigError,
    NotFoundError,
    SegzooError,
    WeightsUnavailableError,
    close_matches,
    install_hint,
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
    assert msg.startswith("unknown loss 'qqq'; Valid loss names")
    assert msg.endswith("Valid loss names: DiceLoss, FocalLoss")


def test_install_hints_name_both_the_index_and_the_checkout_form():
    assert install_hint("serve") == 'pip install "segzoo[serve]" (or pip install -e ".[serve]" from a checkout)'
    with pytest.raises(ValueError, match="unknown extra 'servr'; segzoo's extras are train, export"):
        install_hint("servr")


def test_every_message_suggesting_an_install_uses_install_hint():
    """No hand-written ``pip install`` outside segzoo/errors.py (the README installs from a checkout)."""
    package = Path(__file__).resolve().parents[1] / "segzoo"
    found = [f"{p.relative_to(package)}:{i}" for p in sorted(package.rglob("*.py")) if p.name != "errors.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"pip install", line)]
    assert not found, found


def test_missing_serve_packages_say_how_to_install_them(monkeypatch):
    import importlib

    from segzoo.cli import serve

    real = importlib.import_module

    def no_serve_extra(name, *args, **kwargs):
        if name in ("fastapi", "uvicorn", "python_multipart"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_serve_extra)
    with pytest.raises(serve.MissingExtraError) as info:
        serve.require_serve_packages()
    assert str(info.value) == ("segzoo serve needs fastapi, uvicorn, python-multipart, which is not installed: "
                               + install_hint("serve"))
