"""segzoo serve keeps freed memory: a repeated forward-sized allocation stops faulting pages in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# In a worker thread (as the server's model thread), run a small Unet's forward at 256 x 256
# (one torch thread) 20 times; print the minor page faults of the last 10, in MiB per forward.
_PROBE = textwrap.dedent("""
    import resource, sys, threading
    import torch
    from segzoo.models import Unet
    from segzoo.serve.memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    torch.set_num_threads(1)
    model = Unet(num_classes=1, num_channels=4, num_blocks=2).eval()
    x = torch.rand(1, 3, 256, 256)

    def work(out):
        with torch.inference_mode():
            for i in range(20):
                if i == 10:
                    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                model(x)
        out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) * 4 / 1024 / 10)

    out = []
    thread = threading.Thread(target=work, args=(out,))
    thread.start()
    thread.join()
    print(out[0])
""")


def _faults(mode: str, **env: str) -> float:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60,
                            env={**environ, "PYTHONPATH": str(ROOT), **env})
    assert result.returncode == 0, result.stderr
    return float(result.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc only")
def test_freed_memory_is_kept_for_the_next_request():
    default, kept = _faults("default"), _faults("keep")
    assert kept < 0.5, kept  # the pages stay mapped: nothing to fault in again
    assert default > 4 * kept + 2, (default, kept)  # glibc's defaults fault the activations in every time


def test_the_users_glibc_settings_win(monkeypatch):
    from segzoo.serve.memory import keep_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
