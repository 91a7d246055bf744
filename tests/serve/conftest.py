"""Fixtures of the server tests: a tiny model served in a subprocess, shared by the module."""

from __future__ import annotations

import pytest
from _serving import module_server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, logdir): a 3-class tiny Unet served with batching and small limits."""
    yield from module_server(tmp_path_factory.mktemp("served"), "--max-batch", "4", "--max-wait-ms", "40",
                             "--max-bytes", "300000", "--max-pixels", "200000", "--queue-size", "32",
                             "--read-timeout", "2")
