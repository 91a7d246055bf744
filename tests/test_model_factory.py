"""`--model pkg.module:factory`: where the module is imported from, and what the errors say."""

import pytest

from segzoo.errors import ConfigError
from segzoo.loading import import_factory


def test_missing_module_error_names_pythonpath():
    with pytest.raises(ConfigError) as exc:
        import_factory("mypkg_h14_absent.models:build")
    msg = str(exc.value)
    assert "no module named 'mypkg_h14_absent'" in msg and "PYTHONPATH=." in msg and "\n" not in msg


def test_missing_dependency_of_the_module_is_named(tmp_path, monkeypatch):
    (tmp_path / "mymod_h14_dep.py").write_text("import no_such_dependency_h14\n\ndef build():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="'mymod_h14_dep' needs 'no_such_dependency_h14', which is not installed"):
        import_factory("mymod_h14_dep:build")


def test_module_on_the_path_is_imported(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg_h14"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("import torch.nn as nn\n\ndef build():\n    return nn.Conv2d(3, 1, 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = import_factory("mypkg_h14.models:build")
    assert factory().out_channels == 1
    with pytest.raises(ConfigError, match="no module named 'mypkg_h14.other'"):
        import_factory("mypkg_h14.other:build")
