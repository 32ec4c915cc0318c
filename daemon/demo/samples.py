"""Sample TF.js models for the demo and the tests, written without the network.

The demo (``shardsync demo``) and the tests need origins to mirror from. This module
writes model trees that any static server can serve: real small models shipped as
package data in ``sample_data/`` (face-api's bare weights manifests, Human's blazeface
and antispoof graph models; MIT, see the README and LICENSE beside them), a
generated layers-model in the exact shape TF.js 4.x's ``model.save()`` writes, a
graph-model with string weights, and big synthetic models for multi-shard and
benchmark runs. Re-cutting a model's groups into converter-style
``groupN-shardKofM.bin`` shards (``blazeface-sharded``, the demo's big models) is
:func:`.recut.recut`.

Everything is deterministic: the same call writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..entrypoint import manifest_groups, shard_relpath
from .recut import CHUNK, recut, write_cut

__all__ = [
    "CONVERTER_SHARD_SIZE",
    "SampleModel",
    "TFJS_VERSION",
    "encode_strings",
    "layers_model_json",
    "make_big_model",
    "write_layers_model",
    "write_samples",
    "write_string_model",
]

#: The shard size tensorflowjs_converter cuts groups into by default (4 MiB).
CONVERTER_SHARD_SIZE = 4 << 20

#: The TF.js release whose ``model.save()`` output the generated layers-model copies.
TFJS_VERSION = "4.22.0"

# Shard size of the "blazeface-sharded" sample: cuts its 527 KiB into 9 shards, a
# real model with many shards that still loads in a moment.
_SAMPLE_SHARD_SIZE = 64 << 10

# A float32 (little-endian) with bit 30 clear has an exponent below 128, so every
# generated weight is finite and smaller than 2 in magnitude: random bytes, but a
# model that a browser can still run.
_FLOAT_MASK = bytes([0xFF, 0xFF, 0xFF, 0xBF])

# Width of the Dense layers of a big model: 1024 x 1024 float32 = one 4 MiB kernel.
_BIG_WIDTH = 1024


@dataclass(frozen=True)
class SampleModel:
    """A model written under a directory ``dest``: its manifest is ``dest/manifest``.

    ``name`` is a valid model name and the model's directory under ``dest``;
    ``manifest`` is the manifest's path relative to ``dest`` (``"<name>/model.json"``);
    ``kind`` is as :class:`shardsync.daemon.tfjs.Manifest` says it; ``size`` is the
    total bytes of its shards.
    """

    name: str
    manifest: str
    kind: str
    size: int


_PACKAGED = [
    # (name, folder in sample_data/, manifest, kind)
    ("tiny-face-detector", "face-api", "tiny_face_detector_model-weights_manifest.json",
     "weights-manifest"),
    ("face-landmark-68-tiny", "face-api", "face_landmark_68_tiny_model-weights_manifest.json",
     "weights-manifest"),
    ("blazeface", "human", "blazeface.json", "graph-model"),
    ("antispoof", "human", "antispoof.json", "graph-model"),
]


def write_samples(dest: str | os.PathLike[str]) -> list[SampleModel]:
    """Write every sample model into its own directory under ``dest``; return them.

    Written (each as ``dest/<name>/...``): ``tiny-face-detector`` and
    ``face-landmark-68-tiny`` (bare weights manifests, uint8-quantized),
    ``blazeface`` (graph-model, float32/int32), ``antispoof`` (graph-model,
    float16-quantized), ``blazeface-sharded`` (blazeface re-cut into 64 KiB shards),
    ``dense-layers`` (a generated layers-model, see :func:`write_layers_model`) and
    ``string-table`` (a graph-model with a string weight, see
    :func:`write_string_model`). Existing files of the same names are replaced; a
    crash leaves some of them written.
    """
    dest = Path(dest)
    out = []
    for name, folder, manifest, kind in _PACKAGED:
        out.append(_copy_packaged(dest / name, folder, manifest, name, kind))
    sharded = _copy_packaged(dest / "blazeface-sharded", "human", "blazeface.json",
                             "blazeface-sharded", "graph-model")
    recut(dest / "blazeface-sharded", "blazeface.json", _SAMPLE_SHARD_SIZE)
    out.append(sharded)
    out.append(write_layers_model(dest / "dense-layers", name="dense-layers"))
    out.append(write_string_model(dest / "string-table", name="string-table"))
    return out


def _copy_packaged(model_dir: Path, folder: str, manifest: str, name: str,
                   kind: str) -> SampleModel:
    source = files("shardsync.daemon.demo").joinpath("sample_data", folder)
    data = source.joinpath(manifest).read_bytes()
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / manifest).write_bytes(data)
    size = 0
    for group in manifest_groups(json.loads(data)) or []:
        for p in group["paths"]:
            rel = shard_relpath(p)
            (model_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            with source.joinpath(rel).open("rb") as src, open(model_dir / rel, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            size += (model_dir / rel).stat().st_size
    return SampleModel(name, f"{name}/{manifest}", kind, size)


# --- layers-model ---------------------------------------------------------------------

def _dense_config(index: int, units: int, activation: str,
                  input_units: int | None) -> dict[str, Any]:
    """One Dense layer as TF.js 4.x's ``Dense.getConfig()`` + ``Layer.getConfig()``
    serialize it (snake_case keys, in this order; the first layer carries its input)."""
    config: dict[str, Any] = {
        "units": units,
        "activation": activation,
        "use_bias": True,
        "kernel_initializer": {"class_name": "VarianceScaling",
                               "config": {"scale": 1, "mode": "fan_avg",
                                          "distribution": "normal", "seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}},
        "kernel_regularizer": None,
        "bias_regularizer": None,
        "activity_regularizer": None,
        "kernel_constraint": None,
        "bias_constraint": None,
        "name": f"dense_Dense{index}",
        "trainable": True,
    }
    if input_units is not None:
        config["batch_input_shape"] = [None, input_units]
        config["dtype"] = "float32"
    return {"class_name": "Dense", "config": config}


def layers_model_json(units: list[int], weights_path: str,
                      activations: list[str] | None = None) -> dict[str, Any]:
    """The ``model.json`` of a Sequential of Dense layers, as TF.js's ``model.save()``
    writes it (tfjs-core ``getModelJSONForModelArtifacts``: modelTopology, format,
    generatedBy, convertedBy, weightsManifest; one group, one shard).

    ``units[0]`` is the input width, each further entry one Dense layer's units.
    Weight names and order are TF.js's: ``dense_DenseN/kernel`` ``[in, out]`` then
    ``dense_DenseN/bias`` ``[out]``, all float32.
    """
    if len(units) < 2:
        raise ValueError(f"units {units!r}: need the input width and at least one layer")
    n = len(units) - 1
    acts = activations or ["relu"] * (n - 1) + ["linear"]
    layers, weights = [], []
    for i in range(1, n + 1):
        layers.append(_dense_config(i, units[i], acts[i - 1], units[0] if i == 1 else None))
        weights.append({"name": f"dense_Dense{i}/kernel", "shape": [units[i - 1], units[i]],
                        "dtype": "float32"})
        weights.append({"name": f"dense_Dense{i}/bias", "shape": [units[i]],
                        "dtype": "float32"})
    return {
        "modelTopology": {
            "class_name": "Sequential",
            "config": {"name": "sequential_1", "layers": layers},
            "keras_version": f"tfjs-layers {TFJS_VERSION}",
            "backend": "tensor_flow.js",
        },
        "format": "layers-model",
        "generatedBy": f"TensorFlow.js tfjs-layers v{TFJS_VERSION}",
        "convertedBy": None,
        "weightsManifest": [{"paths": [weights_path], "weights": weights}],
    }


def _float32_bytes(values: Iterable[float]) -> bytes:
    a = array("f", values)
    if sys.byteorder != "little":  # TF.js weights are little-endian
        a.byteswap()
    return a.tobytes()


def write_layers_model(model_dir: str | os.PathLike[str], *, name: str = "dense-layers",
                       units: tuple[int, ...] = (8, 16, 16, 4), seed: int = 0) -> SampleModel:
    """Write a small Keras-style Sequential of Dense layers in TF.js layers format.

    ``model_dir/model.json`` and ``model_dir/model.weights.bin``, exactly what
    ``model.save('downloads://model')`` gives in TF.js 4.x (so the path in the
    manifest is ``./model.weights.bin``). Weights are Glorot-normal from
    ``random.Random(seed)``, biases small; the model loads with
    ``tf.loadLayersModel`` and predicts finite numbers. Returns the SampleModel,
    with ``manifest`` relative to ``model_dir``'s parent.
    """
    model_dir = Path(model_dir)
    units_list = list(units)
    doc = layers_model_json(units_list, "./model.weights.bin",
                            ["relu"] * (len(units_list) - 2) + ["softmax"])
    rng = random.Random(seed)
    data = bytearray()
    for fan_in, fan_out in zip(units_list, units_list[1:], strict=False):
        std = math.sqrt(2.0 / (fan_in + fan_out))
        data += _float32_bytes(rng.gauss(0.0, std) for _ in range(fan_in * fan_out))
        data += _float32_bytes(rng.uniform(-0.05, 0.05) for _ in range(fan_out))
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.weights.bin").write_bytes(data)
    (model_dir / "model.json").write_text(json.dumps(doc), encoding="utf-8")
    return SampleModel(name, f"{model_dir.name}/model.json", "layers-model", len(data))


# --- graph-model with string weights --------------------------------------------------

def encode_strings(values: Iterable[str | bytes]) -> bytes:
    """The bytes of a TF.js ``string`` weight: per element, a little-endian uint32
    length then that many bytes (str values are UTF-8 encoded)."""
    out = bytearray()
    for v in values:
        b = v.encode("utf-8") if isinstance(v, str) else v
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


def _dims(shape: list[int]) -> dict[str, Any]:
    return {"dim": [{"size": str(d)} for d in shape]}


def write_string_model(model_dir: str | os.PathLike[str], *,
                       name: str = "string-table") -> SampleModel:
    """Write a tiny graph-model whose weights include a ``string`` tensor.

    The graph: ``labels`` (a string Const of 4 labels, non-ASCII included) feeds
    ``Identity``; ``x`` (float32 ``[-1, 2]``) times ``w`` (float32 ``[2, 2]``) is
    ``MatMul``. One group in two shards, cut inside the string data, so that
    checking the group means walking length prefixes across a shard boundary.
    """
    model_dir = Path(model_dir)
    labels = ["cat", "dog", "\u00e9l\u00e8ve", ""]
    w = [1.0, 2.0, 3.0, 4.0]
    data = _float32_bytes(w) + encode_strings(labels)
    cut = 16 + 4 + 2  # after w, into the first label
    nodes = [
        {"name": "x", "op": "Placeholder",
         "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": _dims([-1, 2])}}},
        {"name": "w", "op": "Const",
         "attr": {"value": {"tensor": {"dtype": "DT_FLOAT", "tensorShape": _dims([2, 2])}},
                  "dtype": {"type": "DT_FLOAT"}}},
        {"name": "labels", "op": "Const",
         "attr": {"value": {"tensor": {"dtype": "DT_STRING", "tensorShape": _dims([4])}},
                  "dtype": {"type": "DT_STRING"}}},
        {"name": "MatMul", "op": "MatMul", "input": ["x", "w"],
         "attr": {"T": {"type": "DT_FLOAT"}, "transpose_a": {"b": False},
                  "transpose_b": {"b": False}}},
        {"name": "Identity", "op": "Identity", "input": ["labels"],
         "attr": {"T": {"type": "DT_STRING"}}},
    ]
    doc = {
        "format": "graph-model",
        "generatedBy": "shardsync samples",
        "convertedBy": f"TensorFlow.js Converter v{TFJS_VERSION} (by hand)",
        "modelTopology": {"node": nodes, "library": {}, "versions": {"producer": 1395}},
        "weightsManifest": [{
            "paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"],
            "weights": [{"name": "w", "shape": [2, 2], "dtype": "float32"},
                        {"name": "labels", "shape": [4], "dtype": "string"}],
        }],
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "group1-shard1of2.bin").write_bytes(data[:cut])
    (model_dir / "group1-shard2of2.bin").write_bytes(data[cut:])
    (model_dir / "model.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return SampleModel(name, f"{model_dir.name}/model.json", "graph-model", len(data))


# --- big models ---------------------------------------------------------------------

def _random_floats(seed: int, total: int) -> Iterator[bytes]:
    """``total`` deterministic bytes of finite float32s, 1 MiB at a time (~300 MB/s)."""
    mask = int.from_bytes(_FLOAT_MASK * (CHUNK // 4), "little")
    key = seed.to_bytes(8, "little", signed=True)
    for i in range(-(-total // CHUNK)):
        n = min(CHUNK, total - i * CHUNK)
        block = hashlib.shake_128(key + i.to_bytes(8, "little")).digest(CHUNK)
        yield (int.from_bytes(block, "little") & mask).to_bytes(CHUNK, "little")[:n]


def make_big_model(dest: str | os.PathLike[str], total_bytes: int,
                   shard_size: int = CONVERTER_SHARD_SIZE, seed: int = 0, *,
                   name: str = "big") -> SampleModel:
    """Write a synthetic layers-model of about ``total_bytes`` of float32 weights.

    Written as ``dest/<name>/model.json`` and ``group1-shardKofM.bin`` shards of
    ``shard_size`` bytes: a Sequential of Dense layers 1024 wide (4 MiB per kernel;
    narrower when ``total_bytes`` is under one layer), so the result is a model
    ``tf.loadLayersModel`` accepts. The weights are pseudo-random finite float32s
    derived from ``seed``: every shard differs from every other (nothing
    deduplicates by accident) and the same arguments give the same bytes. Streamed
    to disk 1 MiB at a time: memory use does not grow with ``total_bytes``.
    """
    if total_bytes <= 0 or shard_size <= 0:
        raise ValueError(f"total_bytes {total_bytes} and shard_size {shard_size} must be > 0")
    width = _BIG_WIDTH
    per_layer = 4 * (width * width + width)
    if total_bytes < per_layer:
        width = max(1, math.isqrt(total_bytes // 4))
        per_layer = 4 * (width * width + width)
    layers = max(1, round(total_bytes / per_layer))
    size = layers * per_layer
    count = -(-size // shard_size)
    names = [f"group1-shard{k}of{count}.bin" for k in range(1, count + 1)]
    doc = layers_model_json([width] * (layers + 1), names[0])
    doc["weightsManifest"][0]["paths"] = names
    model_dir = Path(dest) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    write_cut(_random_floats(seed, size), model_dir, names, shard_size)
    (model_dir / "model.json").write_text(json.dumps(doc), encoding="utf-8")
    return SampleModel(name, f"{name}/model.json", "layers-model", size)
