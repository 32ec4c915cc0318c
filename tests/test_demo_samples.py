"""Tests of shardsync.daemon.demo.samples: every sample model is a valid, self-consistent model."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import pytest

from shardsync.daemon.demo.recut import recut
from shardsync.daemon.demo.samples import (
    SampleModel,
    encode_strings,
    layers_model_json,
    make_big_model,
    write_layers_model,
    write_samples,
)
from shardsync.daemon.groupcheck import check_group_bytes
from shardsync.daemon.tfjs import Manifest, parse_manifest

SAMPLES = Path(__file__).resolve().parent.parent / "daemon" / "demo" / "sample_data"

# SHA-256 of the files as the npm packages ship them (see daemon/demo/sample_data/*/README.md).
PACKAGED = {
    "face-api/face_landmark_68_tiny_model-weights_manifest.json":
        "9a1a5dd19fd814fd5095c3cb58f8e0d3193b8c5b9a6715b30a69d559aea31ad4",
    "face-api/face_landmark_68_tiny_model.bin":
        "b98e9f2f7da76f8a6dda9741a36ed485b224b889d552de2b2c1bb16217f67bfc",
    "face-api/tiny_face_detector_model-weights_manifest.json":
        "5d1af4849ac48d5b985f4a9b16010c512353ddd6fcc63d50fd0bc9e9e64296e5",
    "face-api/tiny_face_detector_model.bin":
        "b7503ce7df31039b1c43316a9b865cab6a70dd748cc602d3fa28b551503c3871",
    "human/antispoof.bin": "4490fecb2becdb6869edc7e60f5e59962be013a8def8719b1373afb0f905c094",
    "human/antispoof.json": "7fd698ae1cebabbcad79d3b8b448587b0365eb7911987418231bdcf36583112a",
    "human/blazeface.bin": "dc9a97fdc50bc43216554bdd69aa3e7b9361a519ee7bdd996a2f69a98a6f9b72",
    "human/blazeface.json": "cd7bbfc078270572beb39f9e5ae67aadbd50b5e67cff37e6d4f6b3ea39312e5f",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(dest: Path, sample: SampleModel) -> Manifest:
    path = dest / sample.manifest
    return parse_manifest(path.read_bytes(), manifest_url=f"http://127.0.0.1/{sample.manifest}")


def read_chunks(base: Path, paths: list[str], size: int = 65536):
    for p in paths:
        with open(base / p, "rb") as f:
            while block := f.read(size):
                yield block


def verify(dest: Path, sample: SampleModel) -> Manifest:
    """Parse the sample and check every group against its shards on disk."""
    m = load(dest, sample)
    assert m.kind == sample.kind
    base = (dest / sample.manifest).parent
    total = sum(check_group_bytes(g, read_chunks(base, g.paths)) for g in m.groups)
    assert total == sample.size
    return m


def test_packaged_files_are_unchanged_and_licensed():
    for rel, digest in PACKAGED.items():
        assert sha256(SAMPLES / rel) == digest, rel
    for folder in ("face-api", "human"):
        assert "MIT License" in (SAMPLES / folder / "LICENSE").read_text()
        assert "npm package" in (SAMPLES / folder / "README.md").read_text()


def test_write_samples_writes_valid_models(tmp_path):
    samples = write_samples(tmp_path)
    by_name = {s.name: s for s in samples}
    assert set(by_name) == {"tiny-face-detector", "face-landmark-68-tiny", "blazeface",
                            "antispoof", "blazeface-sharded", "dense-layers", "string-table"}
    assert {s.kind for s in samples} == {"weights-manifest", "graph-model", "layers-model"}
    for s in samples:
        assert s.manifest.startswith(s.name + "/")
        verify(tmp_path, s)
    tiny = load(tmp_path, by_name["tiny-face-detector"])
    assert tiny.groups[0].weights[0].quantization == "uint8"
    spoof = load(tmp_path, by_name["antispoof"])
    assert spoof.groups[0].weights[0].quantization == "float16"
    for name in ("blazeface", "antispoof", "tiny-face-detector"):
        m = load(tmp_path, by_name[name])
        folder = "face-api" if name.startswith("tiny") else "human"
        assert sha256(tmp_path / name / m.files[0]) == PACKAGED[f"{folder}/{m.files[0]}"]


def test_sharded_blazeface_is_the_same_bytes_in_nine_shards(tmp_path):
    samples = {s.name: s for s in write_samples(tmp_path)}
    m = verify(tmp_path, samples["blazeface-sharded"])
    assert m.files == [f"group1-shard{k}of9.bin" for k in range(1, 10)]
    joined = b"".join((tmp_path / "blazeface-sharded" / p).read_bytes() for p in m.files)
    assert joined == (SAMPLES / "human" / "blazeface.bin").read_bytes()
    assert not (tmp_path / "blazeface-sharded" / "blazeface.bin").exists()


def test_write_samples_is_deterministic(tmp_path):
    write_samples(tmp_path / "a")
    write_samples(tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert files_a == files_b
    for rel in files_a:
        if (tmp_path / "a" / rel).is_file():
            assert sha256(tmp_path / "a" / rel) == sha256(tmp_path / "b" / rel), rel


# --- the layers-model -----------------------------------------------------------------

def test_layers_model_has_the_shape_tfjs_save_writes(tmp_path):
    sample = write_layers_model(tmp_path / "dense-layers", units=(8, 16, 16, 4), seed=3)
    doc = json.loads((tmp_path / "dense-layers" / "model.json").read_text())
    assert list(doc) == ["modelTopology", "format", "generatedBy", "convertedBy",
                         "weightsManifest"]
    assert doc["format"] == "layers-model" and doc["convertedBy"] is None
    assert doc["generatedBy"].startswith("TensorFlow.js tfjs-layers v4.")
    topo = doc["modelTopology"]
    assert topo["class_name"] == "Sequential"
    assert topo["keras_version"].startswith("tfjs-layers 4.")
    assert topo["backend"] == "tensor_flow.js"
    layers = topo["config"]["layers"]
    assert [layer["class_name"] for layer in layers] == ["Dense"] * 3
    assert [layer["config"]["units"] for layer in layers] == [16, 16, 4]
    assert [layer["config"]["activation"] for layer in layers] == ["relu", "relu", "softmax"]
    assert layers[0]["config"]["batch_input_shape"] == [None, 8]
    assert layers[0]["config"]["dtype"] == "float32"
    assert all("batch_input_shape" not in layer["config"] for layer in layers[1:])
    assert [layer["config"]["name"] for layer in layers] == [
        "dense_Dense1", "dense_Dense2", "dense_Dense3"]
    (group,) = doc["weightsManifest"]
    assert group["paths"] == ["./model.weights.bin"]
    assert [(w["name"], w["shape"], w["dtype"]) for w in group["weights"]] == [
        ("dense_Dense1/kernel", [8, 16], "float32"), ("dense_Dense1/bias", [16], "float32"),
        ("dense_Dense2/kernel", [16, 16], "float32"), ("dense_Dense2/bias", [16], "float32"),
        ("dense_Dense3/kernel", [16, 4], "float32"), ("dense_Dense3/bias", [4], "float32")]
    m = verify(tmp_path, sample)
    assert m.files == ["model.weights.bin"]
    data = (tmp_path / "dense-layers" / "model.weights.bin").read_bytes()
    assert len(data) == 4 * (8 * 16 + 16 + 16 * 16 + 16 + 16 * 4 + 4)
    values = struct.unpack(f"<{len(data) // 4}f", data)
    assert all(math.isfinite(v) and abs(v) < 5 for v in values)
    assert len(set(values)) == len(values)  # really random, not a constant fill


def test_layers_model_weights_follow_the_seed(tmp_path):
    write_layers_model(tmp_path / "a", seed=1)
    write_layers_model(tmp_path / "b", seed=1)
    write_layers_model(tmp_path / "c", seed=2)
    read = lambda d: (tmp_path / d / "model.weights.bin").read_bytes()  # noqa: E731
    assert read("a") == read("b") != read("c")


def test_layers_model_json_refuses_too_few_units():
    with pytest.raises(ValueError):
        layers_model_json([4], "w.bin")


# --- string weights -------------------------------------------------------------------

def test_encode_strings():
    assert encode_strings(["ab", b"\xff", "\u00e9"]) == (
        b"\2\0\0\0ab" + b"\1\0\0\0\xff" + b"\2\0\0\0\xc3\xa9")
    assert encode_strings([]) == b""


def test_string_model_is_cut_inside_its_string_data(tmp_path):
    samples = {s.name: s for s in write_samples(tmp_path)}
    m = verify(tmp_path, samples["string-table"])
    (group,) = m.groups
    assert group.expected_size is None
    assert [w.dtype for w in group.weights] == ["float32", "string"]
    first = (tmp_path / "string-table" / group.paths[0]).stat().st_size
    assert 16 < first < 16 + 4 + 3  # the boundary falls inside the first label
    assert len(group.paths) == 2


# --- recut ----------------------------------------------------------------------------

def test_recut_round_trips_and_can_be_repeated(tmp_path):
    samples = {s.name: s for s in write_samples(tmp_path)}
    base = tmp_path / "antispoof"
    original = (base / "antispoof.bin").read_bytes()
    before = json.loads((base / "antispoof.json").read_text())
    for size in (100_000, 853_098, 1 << 20, 300_000):
        paths = recut(base, "antispoof.json", size)
        count = -(-len(original) // size)
        assert paths == [f"group1-shard{k}of{count}.bin" for k in range(1, count + 1)]
        assert [(base / p).stat().st_size for p in paths[:-1]] == [size] * (count - 1)
        assert b"".join((base / p).read_bytes() for p in paths) == original
        after = json.loads((base / "antispoof.json").read_text())
        assert after["weightsManifest"][0]["paths"] == paths
        after["weightsManifest"][0]["paths"] = before["weightsManifest"][0]["paths"]
        assert json.dumps(after) == json.dumps(before)  # nothing else changed, order kept
        verify(tmp_path, samples["antispoof"])
        on_disk = sorted(p.name for p in base.iterdir())
        assert on_disk == sorted([*paths, "antispoof.json"])  # old shards and temps gone


def test_recut_of_several_groups_and_a_bare_manifest(tmp_path):
    base = tmp_path / "m"
    base.mkdir()
    (base / "a.bin").write_bytes(b"A" * 10)
    (base / "sub").mkdir()
    (base / "sub" / "b1").write_bytes(b"B" * 7)
    (base / "sub" / "b2").write_bytes(b"C" * 5)
    doc = [{"paths": ["./a.bin"], "weights": [{"name": "a", "shape": [10], "dtype": "bool"}]},
           {"paths": ["sub/b1", "sub/b2"],
            "weights": [{"name": "b", "shape": [3], "dtype": "int32"}]},
           {"paths": [], "weights": []}]
    (base / "w.json").write_text(json.dumps(doc))
    paths = recut(base, "w.json", 4)
    assert paths == ["group1-shard1of3.bin", "group1-shard2of3.bin", "group1-shard3of3.bin",
                     "group2-shard1of3.bin", "group2-shard2of3.bin", "group2-shard3of3.bin",
                     "group3-shard1of1.bin"]
    assert b"".join((base / p).read_bytes() for p in paths[3:6]) == b"B" * 7 + b"C" * 5
    assert (base / "group3-shard1of1.bin").read_bytes() == b""
    m = parse_manifest((base / "w.json").read_bytes(), manifest_url="http://h/w.json")
    assert m.kind == "weights-manifest" and m.files == paths
    for g in m.groups:
        check_group_bytes(g, read_chunks(base, g.paths))
    assert not (base / "a.bin").exists() and not (base / "sub" / "b1").exists()


def test_recut_refuses_bad_arguments(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError):
        recut(tmp_path, "x.json", 1024)
    with pytest.raises(ValueError):
        recut(tmp_path, "x.json", 0)


# --- big models -----------------------------------------------------------------------

def test_big_model_is_cut_in_distinct_shards_and_checks_out(tmp_path):
    sample = make_big_model(tmp_path, 10 << 20, shard_size=4 << 20, seed=7)
    assert sample.name == "big" and sample.kind == "layers-model"
    assert abs(sample.size - (10 << 20)) < 4 * (1024 * 1024 + 1024)  # within one layer
    m = verify(tmp_path, sample)
    count = -(-sample.size // (4 << 20))
    assert m.files == [f"group1-shard{k}of{count}.bin" for k in range(1, count + 1)]
    base = tmp_path / "big"
    sizes = [(base / p).stat().st_size for p in m.files]
    assert sizes[:-1] == [4 << 20] * (count - 1) and sum(sizes) == sample.size
    digests = {sha256(base / p) for p in m.files}
    assert len(digests) == count
    head = (base / m.files[0]).read_bytes()[: 1 << 16]
    values = struct.unpack(f"<{len(head) // 4}f", head)
    assert all(math.isfinite(v) and abs(v) < 2 for v in values)
    doc = json.loads((base / "model.json").read_text())
    assert doc["modelTopology"]["class_name"] == "Sequential"
    assert {w["shape"][0] for w in doc["weightsManifest"][0]["weights"]} == {1024}


def test_big_model_follows_its_seed_and_handles_small_sizes(tmp_path):
    a = make_big_model(tmp_path / "a", 3 << 20, shard_size=1 << 20, seed=1)
    b = make_big_model(tmp_path / "b", 3 << 20, shard_size=1 << 20, seed=1)
    c = make_big_model(tmp_path / "c", 3 << 20, shard_size=1 << 20, seed=2)
    shard = "big/group1-shard2of3.bin"
    assert a.size == b.size == c.size
    assert sha256(tmp_path / "a" / shard) == sha256(tmp_path / "b" / shard)
    assert sha256(tmp_path / "a" / shard) != sha256(tmp_path / "c" / shard)
    tiny = make_big_model(tmp_path, 1000, shard_size=300, name="tiny")
    m = verify(tmp_path, tiny)
    assert len(m.files) == -(-tiny.size // 300) and tiny.size <= 1000
    with pytest.raises(ValueError):
        make_big_model(tmp_path, 0)


def test_public_surface():
    import shardsync.daemon.demo.recut as recut_module
    import shardsync.daemon.demo.samples as samples

    for module in (samples, recut_module):
        assert all(hasattr(module, name) for name in module.__all__), module.__name__
