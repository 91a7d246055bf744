"""From checkpoint to deployable file: TorchScript trace, ONNX and ``torch.export`` programs.

Python API: :func:`trace_model`, :func:`export_onnx`, :func:`export_program` work on a
model; :func:`trace_checkpoint` and :func:`export_checkpoint` on a checkpoint or log
directory (the model is rebuilt with :func:`segzoo.loading.load_model_info`).
Command line: ``segzoo trace LOGDIR`` and ``segzoo export LOGDIR --format ... --out PATH``
(:mod:`segzoo.cli.export`).

Every artifact is checked against the eager model before it is written, at the export
size and at a second, different batch and H x W (shapes frozen by tracing are caught
here), and written atomically. An existing output file is refused unless ``force=True``.

One module per format: :mod:`~segzoo.export.torchscript` (``torch.jit``, deprecated upstream
but kept for C++ ``torch::jit::load`` users), :mod:`~segzoo.export.onnx` and
:mod:`~segzoo.export.program` (``torch.export``, ``.pt2``: the forward path); what they share
(example inputs, the output check, the comparison with eager, the one atomic write) is in
:mod:`~segzoo.export.common`, and :mod:`~segzoo.export.checkpoint` picks the format for a checkpoint.
"""

from segzoo.device import resolve_device
from segzoo.export.checkpoint import export_checkpoint
from segzoo.export.common import (
    DEFAULT_INPUT_SIZE,
    FORMATS,
    ONNX_OPSETS,
    TRACE_MODES,
    ExportCheckError,
    MissingDependencyError,
    atomic_output,
    check_opset,
    check_output,
    check_sizes,
    checkpoint_metadata,
    compare_with_eager,
    example_input,
    other_input,
    write_artifact,
)
from segzoo.export.onnx import export_onnx
from segzoo.export.program import export_program
from segzoo.export.torchscript import save_traced, trace_checkpoint, trace_model, traced_filename

__all__ = ["DEFAULT_INPUT_SIZE", "FORMATS", "ONNX_OPSETS", "TRACE_MODES", "ExportCheckError", "MissingDependencyError",
           "atomic_output", "check_opset", "check_output", "check_sizes", "checkpoint_metadata", "compare_with_eager",
           "example_input", "other_input", "write_artifact", "export_checkpoint", "export_onnx", "export_program",
           "save_traced", "trace_checkpoint", "trace_model", "traced_filename", "resolve_device"]


def __getattr__(name: str) -> object:
    """``segzoo.export.run`` (the command) is :func:`segzoo.cli.export.run`: the library does not import the CLI.

    Raises:
        ImportError: ``run``, naming where the command lives (an ImportError keeps its message
            through ``from segzoo.export import run``).
        AttributeError: any other name.
    """
    if name == "run":
        raise ImportError("segzoo.export.run is the command line's: import it from segzoo.cli.export "
                             "(or call export_checkpoint / trace_checkpoint)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
