"""smp's examples/convert_to_onnx.ipynb with ``import segzoo.smp as smp``.

Changed only where marked ``# segzoo test:``: ``encoder_weights=None`` (no ImageNet download), a 64x64 export
example and a (2, 3, 96, 128) check input (the notebook: 224 and 512; any batch, height and width other than
the example's is the point), and ``dynamo=False``: torch >= 2.9 exports with ``torch.export`` + onnxscript by
default, and onnxscript is not installed here (smp's own model needs it just the same). Both models also pass
``torch.export.export`` with dynamic batch, height and width (checked on a quiet machine, not here).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch


@pytest.mark.slow
@pytest.mark.export
def test_convert_to_onnx_runs_on_segzoo(tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")

    # ---- cell 3
    import segzoo.smp as smp

    # ---- cell 5
    model = smp.Unet("resnet34", encoder_weights=None, classes=1)  # segzoo test: was encoder_weights="imagenet"
    model = model.eval()

    # ---- cell 7
    dynamic_axes = {0: "batch_size", 2: "height", 3: "width"}
    onnx_model_name = os.path.join(tmp_path, "unet_resnet34.onnx")
    torch.onnx.export(
        model,
        torch.randn(1, 3, 64, 64),  # segzoo test: was (1, 3, 224, 224)
        onnx_model_name,
        export_params=True,
        opset_version=17,
        do_constant_folding=True,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": dynamic_axes, "output": dynamic_axes},
        dynamo=False,  # segzoo test: the default dynamo exporter needs onnxscript (absent here)
    )

    # ---- cell 8
    onnx_model = onnx.load(onnx_model_name)
    onnx.checker.check_model(onnx_model)

    # ---- cell 10
    sample = torch.randn(2, 3, 96, 128)  # segzoo test: was (2, 3, 512, 512)
    ort_session = onnxruntime.InferenceSession(onnx_model_name, providers=["CPUExecutionProvider"])
    ort_inputs = {"input": sample.numpy()}
    ort_outputs = ort_session.run(output_names=None, input_feed=ort_inputs)

    # ---- cell 12
    with torch.inference_mode():
        torch_out = model(sample)
    np.testing.assert_allclose(torch_out.numpy(), ort_outputs[0], rtol=1e-03, atol=1e-05)
    assert ort_outputs[0].shape == (2, 1, 96, 128)
