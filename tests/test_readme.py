"""README.md runs as written: every ```python block, every `segzoo ...` line of its ```bash blocks.

Substitutions, to keep the suite fast and offline (never a download):

- ``resnet34`` becomes ``resnet18`` in Python blocks (a smaller encoder; same code path).
- ``pretrained=True`` reads a ResNet-18 state dict that the test writes with ``torch.save`` into a
  temporary ``TORCH_HOME/hub/checkpoints`` under torchvision's file name (random weights: only the
  loading path is under test); ``weights/resnet18.pth`` is written the same way.
- ``segzoo train --config configs/demo.yml`` gets ``num_epochs=1 data.train_size=32
  data.valid_size=16`` appended (the README's full demo takes minutes).
- Commands run with ``python -m segzoo.cli`` (the same ``main`` as the ``segzoo`` script) from a
  temporary directory holding a copy of ``configs/``; ``images/`` for ``segzoo predict`` holds two
  generated PNGs, ``image.png`` (the Serving section's) a third.
- ``segzoo serve`` (which runs until stopped) is started in the background on a free port instead of
  ``--port 8000`` (other tests or servers may hold 8000); the ``curl`` lines that follow it run against
  that port, then the server gets SIGTERM and must exit 0.
- Python blocks that read files the commands wrote (``torch.jit.load(``, ``load_predictor(``) run
  after the commands.

Lines that mention segzoo but cannot run here are listed in ``NOT_RUN`` with the reason; a new
such line fails :func:`test_every_segzoo_command_is_run_or_excused` until it is run or listed.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# segzoo lines of ```bash blocks that are not run, with why
NOT_RUN = {
    "torchrun": "needs several GPUs / machines (DDP itself is tested in tests/training/test_ddp.py)",
}
# appended to `segzoo train --config configs/demo.yml` (see the module docstring)
DEMO_SPEEDUP = ["num_epochs=1", "data.train_size=32", "data.valid_size=16"]
# python blocks run by test_bash_blocks_then_deploy_snippet, in the directory the commands filled
# (each marker is in exactly one block: Deploy's and Serving's)
AFTER_COMMANDS = ("torch.jit.load(", "load_predictor(")
SLOW_MARKERS = ("SupervisedRunner().train(", "segmentation_models_pytorch")


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def _after_commands(block: str) -> bool:
    return any(marker in block for marker in AFTER_COMMANDS)


def _sections() -> dict[str, list[str]]:
    """``## heading -> its python blocks`` (a section's blocks build on each other), blocks that
    read the commands' files excluded."""
    out = {}
    for part in re.split(r"^## ", README, flags=re.M)[1:]:
        blocks = [b for b in _blocks("python", part) if not _after_commands(b)]
        if blocks:
            out[part.splitlines()[0].strip()] = blocks
    return out


def _commands() -> list[str]:
    """Every command of the ```bash blocks, split at ``&&``, comments removed."""
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            out.extend(part.strip() for part in line.split("&&") if part.strip())
    return out


def _segzoo_args(command: str) -> list[str] | None:
    """The arguments of a ``segzoo ...`` / ``.venv/bin/segzoo ...`` command, else None."""
    words = shlex.split(command)
    if words and words[0] in ("segzoo", ".venv/bin/segzoo"):
        return words[1:]
    return None


def _substitute(code: str) -> str:
    return code.replace("resnet34", "resnet18")


@pytest.fixture
def readme_dir(tmp_path, monkeypatch):
    """A working directory with configs/, weights/resnet18.pth, images/ and a hub cache with ResNet-18."""
    import torchvision

    from segzoo.encoders.weights import hub_cache_file, torchvision_weights

    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    state = torchvision.models.resnet18().state_dict()
    cached = hub_cache_file(torchvision_weights("resnet18").url)
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    (tmp_path / "weights").mkdir()
    torch.save(state, tmp_path / "weights" / "resnet18.pth")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    from PIL import Image

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (70, 90)), ("b.png", (64, 64))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / "images" / name)
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_python(blocks: list[str]) -> None:
    """Run ``blocks`` in order in one namespace; tracebacks point at README.md's own line numbers."""
    namespace = {"__name__": "__readme__"}
    for code in blocks:
        offset = README[:README.index(code)].count("\n")
        exec(compile("\n" * offset + _substitute(code), str(ROOT / "README.md"), "exec"), namespace)


def test_readme_has_the_blocks_this_test_expects():
    blocks = _blocks("python")
    assert len(blocks) >= 7
    for marker in AFTER_COMMANDS:
        assert sum(marker in b for b in blocks) == 1, marker
    assert sum(len(b) for b in _sections().values()) == len(blocks) - len(AFTER_COMMANDS)
    assert any(_segzoo_args(c) for c in _commands())


def _is_slow(section: str) -> bool:
    return any(m in b for b in _sections()[section] for m in SLOW_MARKERS)


@pytest.mark.parametrize("section", [s for s in _sections() if not _is_slow(s)])
def test_python_blocks(section, readme_dir):
    _run_python(_sections()[section])


@pytest.mark.slow
@pytest.mark.parametrize("section", [s for s in _sections() if _is_slow(s)])
def test_python_blocks_slow(section, readme_dir):
    if any("segmentation_models_pytorch" in b for b in _sections()[section]):
        pytest.importorskip("segmentation_models_pytorch")
    _run_python(_sections()[section])


def test_every_segzoo_command_is_run_or_excused():
    for command in _commands():
        if "segzoo" in command and _segzoo_args(command) is None:
            assert any(command.startswith(k) for k in NOT_RUN), f"README command neither run nor excused: {command}"


def test_inline_commands_parse():
    """`segzoo CMD ARGS` in prose (without placeholders) and in ```bash blocks is a valid command line."""
    from segzoo.cli import COMMANDS, build_parser

    spans = re.findall(r"`((?:\.venv/bin/)?segzoo [^`]+)`", README)
    # prose also names commands and options ("`segzoo trace` refuses ...", "`segzoo export --format onnx`");
    # a span naming files (an argument with a /) and no placeholder is a command to copy
    commands = [c for c in spans if c.split()[1] in COMMANDS and any("/" in w for w in c.split()[2:])
                and not re.search(r"\[|\.\.\.|\b[A-Z]{2,}\b", c)]
    commands += [c for c in _commands() if _segzoo_args(c) is not None]
    assert len(commands) >= 7
    for command in commands:
        args = _segzoo_args(command)
        assert args is not None, command
        try:
            build_parser(args).parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"README command does not parse: {command} (exit {exc.code})")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """The README's ``segzoo serve`` line in the background, on ``port`` instead of its ``--port``."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300.0) -> None:
        import time
        import urllib.request

        self.port = _free_port()
        args = [str(self.port) if prev == "--port" else a for prev, a in zip(["", *args], args)]
        self.log = cwd / "serve.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "segzoo.cli", *args], cwd=cwd, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"segzoo serve exited: {self.log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"segzoo serve did not become ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        """SIGTERM, wait; the exit status (killed after 60 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _curl(command: str, port: int, cwd: Path) -> str:
    """Run a README ``curl`` line against ``port``; its stdout (curl fails on an HTTP error with --fail)."""
    words = [w.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for w in shlex.split(command)]
    proc = subprocess.run([words[0], "--fail", *words[1:]], cwd=cwd, capture_output=True, timeout=300)
    assert proc.returncode == 0, f"{command}: curl exit {proc.returncode} {proc.stderr[-500:]!r}"
    return proc.stdout.decode()


@pytest.mark.slow
def test_bash_blocks_then_deploy_snippet(readme_dir):
    """Runs the README's segzoo commands in order (main job, Deploy, Serving with its curl lines),
    then the Python blocks that read what they wrote."""
    pytest.importorskip("onnxruntime")
    for module in ("fastapi", "uvicorn", "multipart"):
        pytest.importorskip(module)
    if shutil.which("curl") is None:
        pytest.skip("the Serving section's lines need curl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ran, server, answers = [], None, []
    try:
        for command in _commands():
            if command.startswith("curl "):
                assert server is not None, f"a curl line before any segzoo serve line: {command}"
                answers.append(_curl(command, server.port, readme_dir))
                continue
            args = _segzoo_args(command)
            if args is None:
                continue
            if args[:3] == ["train", "--config", "configs/demo.yml"] or args[0] == "tune":
                args = args + DEMO_SPEEDUP
            ran.append(args[0])
            if args[0] == "serve":
                server = _Server(args, readme_dir, {**env, "OMP_NUM_THREADS": "1"})
                continue
            proc = subprocess.run([sys.executable, "-m", "segzoo.cli", *args], cwd=readme_dir, env=env,
                                  capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    finally:
        code = server.stop() if server is not None else 0
    assert code == 0, server.log.read_text()[-2000:]
    assert {"train", "trace", "export", "predict", "serve"} <= set(ran)
    assert sorted(p.name for p in (readme_dir / "masks").glob("*.png")) == ["a.png", "a_overlay.png", "b.png",
                                                                          "b_overlay.png"]
    assert (readme_dir / "logs" / "demo" / "metrics.csv").is_file()
    from PIL import Image

    with Image.open(readme_dir / "mask.png") as mask:  # the first curl line's answer: a mask of the image
        assert mask.size == (80, 48)
    import json

    assert len(answers) == 2 and isinstance(json.loads(answers[1]), dict)
    _run_python([b for b in _blocks("python") if _after_commands(b)])


def test_all_extra_is_the_union_of_the_others():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = {k: set(v.split()) for k, v in cfg["options.extras_require"].items()}
    assert extras["all"] == (extras["train"] | extras["export"] | extras["bench"] | extras["serve"] | extras["mlflow"]
                             | extras["wandb"] | extras["tune"])
    assert extras["all"] <= extras["dev"]
    for name in extras:
        assert f'".[{name}]"' in README, f"README does not say what the [{name}] extra is for"
