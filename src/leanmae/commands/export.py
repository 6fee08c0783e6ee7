"""``leanmae export MODEL --onnx FILE``: a fine-tuned classifier as an ONNX graph for deployment.

The graph takes ``pixel_values`` (float32, N x 3 x S x S, already preprocessed as the model card's
"Preprocessing" section says: decode, centre-crop, resize, scale, normalise) and returns ``logits``
and ``probabilities`` (softmax, the class columns of ``leanmae predict``); the batch size is free.
What a deployment needs besides the weights (class names, mean / std, sizes, the temperature and
thresholds of the confidence tools) travels in the file's metadata, so the .onnx file stands alone.

Why the TorchScript-based exporter (``dynamo=False``): it needs nothing beyond torch and onnx,
while the dynamo exporter also needs onnxscript. Every export is checked: onnxruntime runs the
file on a random batch and must match PyTorch within ``tolerance``, or the file is not written.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leanmae.data.cache import working_size
from leanmae.errors import ConfigError
from leanmae.files import write_atomic
from leanmae.models.classifier import load_classifier
from leanmae.models.io import load_preprocessing, model_folder
from leanmae.reporting.runinfo import check_output_file

OPSET = 17
TOLERANCE = 1e-4


class _Probabilities(nn.Module):
    """The classifier with softmax on top: the graph's two outputs."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(pixel_values=pixel_values).logits
        return logits, logits.softmax(dim=-1)


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxruntime; pip install 'leanmae[onnx]'") from None
    return onnx, onnxruntime


def export(
    model: str | Path,
    onnx: str | Path,
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the classifier in ``model`` (a fine-tuning run or its model/ folder) to the ONNX file ``onnx``.

    Options:
        model: classifier folder (a fine-tuning run or its ``model/``).
        onnx: the .onnx file to write (atomically).
        opset: ONNX opset version (default 17).
        tolerance: largest allowed difference between onnxruntime's and PyTorch's probabilities on a
            random check batch (default 1e-4); a larger one is an error and nothing is written.
        overwrite: replace an existing ``onnx`` file (refused otherwise); never a file of the model, nor
            one in a leanmae run, study, model or result folder.

    Returns the metadata written into the file plus ``max_abs_diff`` of the check.
    """
    folder = model_folder(model)
    check_output_file(Path(onnx), overwrite, "--onnx", inputs=[folder], result=True)
    classifier = load_classifier(folder).eval()
    mean, std, extra = load_preprocessing(folder)
    onnx_lib, ort = _onnx_modules()  # after the inputs: a wrong path is the first thing to hear about
    size = classifier.config.image_size
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    wrapped = _Probabilities(classifier).eval()
    sample = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks of transformers' ViT
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            wrapped,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["pixel_values"],
            output_names=["logits", "probabilities"],
            dynamic_axes={name: {0: "batch"} for name in ("pixel_values", "logits", "probabilities")},
        )
        graph = onnx_lib.load(str(path))
        metadata = {
            "labels": labels,
            "image_size": size,
            "working_size": working_size(size, extra.get("cache_size")),
            "image_mean": mean,
            "image_std": std,
            "input": f"pixel_values float32 (N, 3, {size}, {size}): RGB centre-cropped to a square, resized "
            "to working_size (bicubic), then to image_size (bilinear), scaled to [0, 1], normalised "
            "with image_mean / image_std",
            "temperature": extra.get("temperature", 1.0),
            "refer_threshold": extra.get("refer_threshold"),
            "energy_threshold": extra.get("energy_threshold"),
            "source": str(folder),
        }
        onnx_lib.helper.set_model_props(graph, {key: json.dumps(value) for key, value in metadata.items()})
        data = graph.SerializeToString()
    check = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"pixel_values": check.numpy()})[0]
    with torch.inference_mode():
        expected = wrapped(check)[1].numpy()
    diff = float(np.abs(got - expected).max())
    if diff > tolerance:
        raise RuntimeError(
            f"ONNX export of {folder}: onnxruntime differs from PyTorch by {diff:.2e} (> "
            f"{tolerance:g}); nothing written"
        )
    write_atomic(Path(onnx), data)
    print(
        f"wrote {onnx}: {len(labels)} classes, input (N, 3, {size}, {size}); onnxruntime matches "
        f"PyTorch to {diff:.1e}"
    )
    return {**metadata, "max_abs_diff": diff}
