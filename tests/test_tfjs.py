"""Tests of shardsync.daemon.tfjs, .groupcheck and .entrypoint (the entry-point rewrite).

Real manifests from /work/shared's fixtures (copied into daemon/demo/sample_data/) and hostile
ones built here; group checks run on the real shard bytes, streamed in small chunks.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from shardsync.daemon.entrypoint import manifest_groups, rewrite_paths, shard_relpath
from shardsync.daemon.errors import ManifestError
from shardsync.daemon.groupcheck import GroupChecker, check_group_bytes
from shardsync.daemon.tfjs import (
    Group,
    Weight,
    manifest_filename,
    parse_manifest,
    shard_url,
)
from shardsync.store import IntegrityError, UnsafePathError

SAMPLES = Path(__file__).resolve().parent.parent / "daemon" / "demo" / "sample_data"

REAL = [
    ("face-api", "tiny_face_detector_model-weights_manifest.json", "weights-manifest"),
    ("face-api", "face_landmark_68_tiny_model-weights_manifest.json", "weights-manifest"),
    ("human", "blazeface.json", "graph-model"),
    ("human", "antispoof.json", "graph-model"),
]

URL = "https://models.example.com/tfjs/m/model.json"


def chunks(path: Path, size: int = 4096):
    with open(path, "rb") as f:
        while block := f.read(size):
            yield block


def group_chunks(base: Path, group: Group, size: int = 4096):
    for p in group.paths:
        yield from chunks(base / p, size)


def model_json(groups, **extra) -> bytes:
    doc = {"modelTopology": {"node": []}, "format": "graph-model", **extra,
           "weightsManifest": groups}
    return json.dumps(doc).encode()


def one_group(weights, paths=("g1.bin",)) -> bytes:
    return model_json([{"paths": list(paths), "weights": weights}])


def w(name="w", shape=(2,), dtype="float32", **kw):
    return {"name": name, "shape": list(shape), "dtype": dtype, **kw}


# --- real manifests -------------------------------------------------------------------

@pytest.mark.parametrize(("folder", "name", "kind"), REAL)
def test_real_manifests_parse_and_their_shards_check_out(folder, name, kind):
    base = SAMPLES / folder
    url = f"https://cdn.example.com/{folder}/{name}"
    m = parse_manifest((base / name).read_bytes(), manifest_url=url)
    assert m.kind == kind
    assert m.filename == name
    assert len(m.files) == 1 and (base / m.files[0]).is_file()
    (group,) = m.groups
    size = (base / m.files[0]).stat().st_size
    assert group.expected_size == size == m.expected_size
    assert check_group_bytes(group, group_chunks(base, group, 1000)) == size
    assert check_group_bytes(group, size) == size


def test_real_quantization_is_counted_by_the_quantized_dtype():
    face = parse_manifest((SAMPLES / "face-api" / REAL[0][1]).read_bytes(), manifest_url=URL)
    conv0 = face.groups[0].weights[0]
    assert (conv0.dtype, conv0.quantization, conv0.shape) == ("float32", "uint8", [3, 3, 3, 16])
    assert conv0.nbytes == 3 * 3 * 3 * 16
    spoof = parse_manifest((SAMPLES / "human" / "antispoof.json").read_bytes(), manifest_url=URL)
    first = spoof.groups[0].weights[0]
    assert first.quantization == "float16" and first.nbytes == 2 * first.count
    blaze = parse_manifest((SAMPLES / "human" / "blazeface.json").read_bytes(), manifest_url=URL)
    assert {x.dtype for x in blaze.groups[0].weights} == {"float32", "int32"}


def test_short_and_long_real_shard_is_refused_naming_group_and_weight():
    base = SAMPLES / "human"
    m = parse_manifest((base / "blazeface.json").read_bytes(), manifest_url=URL)
    (group,) = m.groups
    data = (base / "blazeface.bin").read_bytes()
    with pytest.raises(IntegrityError) as info:
        check_group_bytes(group, [data[:-1]], model="blazeface")
    err = info.value
    last = group.weights[-1].name
    assert (err.expected, err.actual, err.model, err.file) == (
        len(data), len(data) - 1, "blazeface", "blazeface.bin")
    assert "weight group 1" in str(err) and repr(last) in str(err)
    with pytest.raises(IntegrityError, match="1 bytes more than its weights"):
        check_group_bytes(group, [data, b"\0"])
    with pytest.raises(IntegrityError, match=repr(group.weights[0].name)):
        check_group_bytes(group, 3)  # a 404 page's worth of bytes


# --- structure ------------------------------------------------------------------------

def test_layers_model_and_format_inference():
    layers = {"modelTopology": {"class_name": "Sequential", "config": {}},
              "weightsManifest": [{"paths": ["w.bin"], "weights": [w()]}]}
    assert parse_manifest(json.dumps(layers).encode(), manifest_url=URL).kind == "layers-model"
    layers["format"] = "layers-model"
    assert parse_manifest(json.dumps(layers).encode(), manifest_url=URL).kind == "layers-model"
    graph = {"modelTopology": {"node": [], "library": {}},
             "weightsManifest": [{"paths": ["w.bin"], "weights": [w()]}]}
    assert parse_manifest(json.dumps(graph).encode(), manifest_url=URL).kind == "graph-model"


def test_groups_files_and_sizes_in_order():
    data = model_json([
        {"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"],
         "weights": [w("a", [3, 4]), w("b", [], "int32"), w("c", [5], "bool"),
                     w("d", [2], "complex64")]},
        {"paths": ["sub/group2-shard1of1.bin"],
         "weights": [w("e", [7], quantization={"dtype": "uint16", "min": 0, "scale": 1}),
                     w("f", [0, 9])]},
        {"paths": [], "weights": []},
    ])
    m = parse_manifest(data, manifest_url=URL)
    assert m.files == ["group1-shard1of2.bin", "group1-shard2of2.bin", "sub/group2-shard1of1.bin"]
    assert [g.expected_size for g in m.groups] == [48 + 4 + 5 + 16, 14, 0]
    assert [g.index for g in m.groups] == [0, 1, 2]
    assert m.expected_size == 73 + 14


@pytest.mark.parametrize(("doc", "why"), [
    (b"{not json", "not valid JSON"),
    (b'[{"paths": ["a"], "weights": [{"name": "x", "shape": [NaN], "dtype": "float32"}]}]',
     "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"42", "neither"),
    (b"null", "neither"),
    (b'"model.json"', "neither"),
    (b"[]", "no weight groups"),
    (b'{"weightsManifest": []}', "no modelTopology"),
    (b'{"modelTopology": {}}', "no weightsManifest"),
    (b'{"format": "graph-model", "modelTopology": {}, "weightsManifest": {}}', "not a list"),
    (b'{"modelTopology": [], "weightsManifest": []}', "modelTopology is not"),
    (b'{"format": "tfjs-pb", "modelTopology": {}, "weightsManifest": []}', "unknown format"),
    (b'["g1.bin"]', "weight group 1 is not a JSON object"),
    (b'[{"weights": []}]', "'paths' is missing"),
    (b'[{"paths": "g1.bin", "weights": []}]', "'paths' is missing or not a list"),
    (b'[{"paths": [1], "weights": []}]', "not a list of strings"),
    (b'[{"paths": ["a"]}]', "'weights' is missing"),
    (b'[{"paths": ["a"], "weights": {}}]', "'weights' is missing or not a list"),
    (b'[{"paths": [], "weights": [{"name": "x", "shape": [1], "dtype": "float32"}]}]',
     "has weights but no paths"),
    (b'[{"paths": ["a"], "weights": [7]}]', "weight 1 is not a JSON object"),
    (b'[{"paths": ["a"], "weights": [{"shape": [1], "dtype": "float32"}]}]', "has no name"),
])
def test_malformed_manifests_are_refused(doc, why):
    with pytest.raises(ManifestError, match=why) as info:
        parse_manifest(doc, manifest_url="https://h/x/weights_manifest.json")
    assert info.value.file == "weights_manifest.json"
    assert "weights_manifest.json" in str(info.value)


@pytest.mark.parametrize(("weight", "why"), [
    (w(dtype="float64"), "unknown dtype 'float64'"),
    (w(dtype=None), "unknown dtype None"),
    ({"name": "w", "shape": "3", "dtype": "float32"}, "shape '3' is not a list"),
    ({"name": "w", "dtype": "float32"}, "shape None is not a list"),
    (w(shape=[2, -1]), "-1, not a non-negative integer"),
    (w(shape=[2.0]), "2.0, not a non-negative integer"),
    (w(shape=[True]), "True, not a non-negative integer"),
    (w(shape=["2"]), "'2', not a non-negative integer"),
    (w(quantization={"dtype": "int4"}), "unknown quantization dtype 'int4'"),
    (w(quantization=None), "unknown quantization dtype None"),
    (w(dtype="int32", quantization={"dtype": "float16"}), "int32 weights cannot be quantized"),
    (w(dtype="string", quantization={"dtype": "uint8"}), "string weights cannot be quantized"),
])
def test_bad_weights_are_refused_naming_the_weight(weight, why):
    with pytest.raises(ManifestError, match=why) as info:
        parse_manifest(one_group([weight]), manifest_url=URL)
    assert "weight group 1" in str(info.value) and info.value.file == "model.json"


def test_total_over_the_cap_is_refused():
    huge = one_group([w("big", [1 << 20, 1 << 20, 1 << 20])])
    with pytest.raises(ManifestError, match="max_model_bytes") as info:
        parse_manifest(huge, manifest_url=URL)
    assert info.value.actual == 4 << 60 and info.value.expected == 8 << 30
    exact = one_group([w("a", [256])])
    assert parse_manifest(exact, manifest_url=URL, max_total=1024).expected_size == 1024
    with pytest.raises(ManifestError):
        parse_manifest(exact, manifest_url=URL, max_total=1023)
    # string weights count at least their length prefixes
    strings = one_group([w("s", [300], "string")])
    with pytest.raises(ManifestError, match="more than the cap"):
        parse_manifest(strings, manifest_url=URL, max_total=1000)


@pytest.mark.parametrize("path", [
    "../x", "/etc/passwd", "a\\b", "http://x/y", "a//b", "a\x00b", "C:x", "./../x", "a/./b",
    "a/../b", "", "a/", "a?b", "a#b", "%2e%2e/x", ".tmp-x",
])
def test_unsafe_paths_are_refused(path):
    with pytest.raises(UnsafePathError) as info:
        parse_manifest(one_group([w()], paths=[path]), manifest_url=URL)
    assert info.value.file == repr(path)
    with pytest.raises(UnsafePathError):
        rewrite_paths(one_group([w()], paths=[path]), "versions/v1/")


def test_a_leading_dot_slash_is_the_same_file():
    m = parse_manifest(one_group([w()], paths=["./model.weights.bin"]), manifest_url=URL)
    assert m.files == ["model.weights.bin"]
    assert shard_url(URL, "./model.weights.bin") == shard_url(URL, "model.weights.bin")


@pytest.mark.parametrize(("groups", "clash"), [
    ([["a.bin", "a.bin"]], "a.bin"),
    ([["a.bin"], ["b.bin", "a.bin"]], "a.bin"),
    ([["./a.bin"], ["a.bin"]], "a.bin"),
    ([["model.json"]], "model.json"),
    ([["a"], ["a/b"]], "a"),
    ([["model.json/x"]], "model.json"),
])
def test_paths_that_would_overwrite_each_other_are_refused(groups, clash):
    doc = model_json([{"paths": p, "weights": []} for p in groups])
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc, manifest_url=URL)
    assert info.value.file == clash
    assert repr(clash) in str(info.value)


# --- string weights -------------------------------------------------------------------

def encode_strings(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


STRING_GROUP = [w("f", [2]), w("labels", [3], "string"), w("i", [1], "int32"),
                w("empty", [0], "string"), w("tail", [2], "string")]


LABELS = [b"cat", "\u00e9l\u00e8ve".encode(), b""]  # 3, 7 and 0 bytes of UTF-8


def string_group_bytes() -> bytes:
    return (b"\1" * 8 + encode_strings(LABELS) + b"\2" * 4
            + encode_strings([b"x" * 70000, b"yz"]))


def parsed_string_group() -> Group:
    m = parse_manifest(one_group(STRING_GROUP, paths=["s1.bin", "s2.bin"]), manifest_url=URL)
    assert m.groups[0].expected_size is None and m.expected_size is None
    return m.groups[0]


@pytest.mark.parametrize("size", [1, 3, 4, 5, 7, 64 << 10, 1 << 20])
def test_string_weights_are_walked_in_any_chunking(size):
    group = parsed_string_group()
    data = string_group_bytes()
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    assert check_group_bytes(group, iter(pieces)) == len(data)


def test_string_weights_need_the_bytes_not_a_size():
    with pytest.raises(ValueError, match="string weights"):
        check_group_bytes(parsed_string_group(), 123)


def test_string_length_prefix_too_big_is_named():
    group = parsed_string_group()
    data = bytearray(string_group_bytes())
    data[8 + 4 + 3] = 9  # second label claims 9 bytes instead of 7 (offset: f, then "cat")
    with pytest.raises(IntegrityError) as info:
        check_group_bytes(group, [bytes(data)], model="m")
    msg = str(info.value)
    assert "weight group 1" in msg and "s1.bin, s2.bin" in msg
    assert info.value.actual == len(data)
    # the walk is shifted by 2 bytes, so the third label's prefix reads as ~32 MiB
    assert "'labels' (element 3 of 3)" in msg and "length prefix is wrong" in msg


def test_string_length_prefix_too_small_leaves_extra_bytes():
    group = parsed_string_group()
    good = string_group_bytes()
    bad = good[:-6] + struct.pack("<I", 1) + b"yz"  # last element claims 1 byte, holds 2
    with pytest.raises(IntegrityError, match="past its last weight") as info:
        check_group_bytes(group, [bad])
    assert (info.value.expected, info.value.actual) == (len(good) - 1, len(good))


def test_string_group_truncated_inside_a_prefix_and_before_a_weight():
    group = parsed_string_group()
    data = string_group_bytes()
    with pytest.raises(IntegrityError, match=r"'labels' \(element 1 of 3\)") as info:
        check_group_bytes(group, [data[:10]])  # 2 bytes into the first prefix
    assert info.value.expected == "at least 12"
    with pytest.raises(IntegrityError, match="end of weight 'f'"):
        check_group_bytes(group, [data[:5]])
    with pytest.raises(IntegrityError, match="end of weight 'i'"):
        check_group_bytes(group, [data[:8 + 4 + 3 + 4 + 7 + 4]])  # right after labels
    with pytest.raises(IntegrityError, match=r"'tail' \(element 2 of 2\)"):
        check_group_bytes(group, [data[:-1]])
    with pytest.raises(IntegrityError, match="past its last weight"):
        check_group_bytes(group, [data, b"!"])


def test_group_checker_feeds_incrementally():
    weights = [Weight("a", [4], "float32"), Weight("s", [1], "string")]
    group = Group(paths=["x.bin"], weights=weights, expected_size=None)
    checker = GroupChecker(group)
    for piece in (b"\0" * 10, b"\0" * 6 + b"\3\0", b"\0\0ab", b"c"):
        checker.feed(piece)
    assert checker.finish() == 16 + 4 + 3


# --- URLs and names -------------------------------------------------------------------

def tfjs_parse_url(url: str) -> tuple[str, str]:
    """tfjs-core io/http.ts parseUrl, transcribed, to compare with on ordinary URLs."""
    last_slash = url.rfind("/")
    last_q = url.rfind("?")
    return url[:last_slash] + "/", url[last_q:] if last_q > last_slash else ""


@pytest.mark.parametrize("url", [
    "https://tfhub.dev/google/tfjs-model/movenet/1/default/1/model.json?tfjs-format=file",
    "https://storage.googleapis.com/tfjs-models/savedmodel/bodypix/resnet50/float/model.json",
    "http://127.0.0.1:8080/m/model.json",
    "http://host/model.json",
    "http://host/a/model.json?",
    "https://host/a/b/c/weights_manifest.json?v=3&sig=abc",
])
def test_shard_url_matches_tfjs(url):
    prefix, suffix = tfjs_parse_url(url)
    assert shard_url(url, "group1-shard1of2.bin") == prefix + "group1-shard1of2.bin" + suffix
    assert shard_url(url, "sub/x.bin") == prefix + "sub/x.bin" + suffix


def test_shard_url_where_tfjs_would_build_a_broken_url():
    assert shard_url("https://h/m/model.json?next=/a/b", "s.bin") == "https://h/m/s.bin?next=/a/b"
    assert shard_url("https://h/m/model.json#frag", "s.bin") == "https://h/m/s.bin"
    assert shard_url("https://h/m/model.json?q=1#f", "s.bin") == "https://h/m/s.bin?q=1"
    assert shard_url("https://h?q=1", "s.bin") == "https://h/s.bin?q=1"


@pytest.mark.parametrize("url", ["ftp://h/m.json", "file://h/m.json", "file://", "m.json",
                                 "https:///m.json", "https://@/m.json"])
def test_shard_url_and_filename_refuse_non_http_urls(url):
    with pytest.raises(ManifestError):
        shard_url(url, "a.bin")
    with pytest.raises(ManifestError):
        manifest_filename(url)


def test_file_urls_resolve_like_http_ones():
    """file:///path is an origin too (daemon/filesource.py): shards beside the manifest."""
    assert shard_url("file:///usb/m/model.json", "./g/s.bin") == "file:///usb/m/g/s.bin"
    assert manifest_filename("file:///usb/m/a%20b.json") == "a b.json"


def test_shard_url_refuses_unsafe_paths():
    with pytest.raises(UnsafePathError):
        shard_url(URL, "../../secret")
    with pytest.raises(UnsafePathError):
        shard_url(URL, "https://evil.example/x")


def test_manifest_filename():
    assert manifest_filename("https://h/a/model.json?tfjs-format=file") == "model.json"
    assert manifest_filename("https://h/a/my%20model.json") == "my model.json"
    for bad in ("https://h/a/", "https://h", "https://h/a/..", "https://h/a%2Fb.json",
                "https://h/versions"):
        with pytest.raises(ManifestError):
            manifest_filename(bad)


# --- the published entry point --------------------------------------------------------

def test_rewrite_paths_changes_only_paths():
    original = (SAMPLES / "human" / "blazeface.json").read_bytes()
    out = rewrite_paths(original, "versions/abc123/")
    before, after = json.loads(original), json.loads(out)
    assert list(before) == list(after)  # top-level keys, in order
    assert after["weightsManifest"][0]["paths"] == ["versions/abc123/blazeface.bin"]
    after["weightsManifest"][0]["paths"] = before["weightsManifest"][0]["paths"]
    assert after == before
    assert json.dumps(after) == json.dumps(before)  # key order kept at every depth
    m = parse_manifest(out, manifest_url=URL)
    assert m.files == ["versions/abc123/blazeface.bin"]


def test_rewrite_paths_on_bare_manifest_and_dot_slash():
    doc = [{"paths": ["./a.bin", "b.bin"], "weights": [w("\u00e9", [1])]},
           {"paths": ["c"], "weights": []}]
    out = rewrite_paths(json.dumps(doc).encode(), "versions/v/")
    assert [g["paths"] for g in json.loads(out)] == [["versions/v/a.bin", "versions/v/b.bin"],
                                                     ["versions/v/c"]]
    assert "\u00e9".encode() in out
    assert json.loads(rewrite_paths(json.dumps(doc).encode(), ""))[0]["paths"] == ["a.bin",
                                                                                    "b.bin"]


@pytest.mark.parametrize("prefix", ["versions/v", "/abs/", "../v/", "a//", "versions/v/../"])
def test_rewrite_paths_refuses_bad_prefixes(prefix):
    with pytest.raises(UnsafePathError):
        rewrite_paths(one_group([w()]), prefix)


@pytest.mark.parametrize("data", [b"nope", b"{}", b"7", b'[{"weights": []}]'])
def test_rewrite_paths_refuses_non_manifests(data):
    with pytest.raises(IntegrityError):
        rewrite_paths(data, "v/")


def test_entry_helpers():
    doc = {"weightsManifest": [{"paths": []}]}
    assert manifest_groups(doc) is doc["weightsManifest"]
    assert manifest_groups([]) == [] and manifest_groups({"weightsManifest": 3}) is None
    assert manifest_groups("x") is None
    assert shard_relpath("././a/b.bin") == "a/b.bin"
    with pytest.raises(UnsafePathError):
        shard_relpath(3)  # type: ignore[arg-type]


def test_public_surface():
    import shardsync.daemon.entrypoint as entrypoint
    import shardsync.daemon.groupcheck as groupcheck
    import shardsync.daemon.tfjs as tfjs
    import shardsync.store as store

    for module in (tfjs, groupcheck, entrypoint, store):
        assert all(hasattr(module, name) for name in module.__all__), module.__name__
    # The store knows no model format: the entry-point rewrite is the daemon's, injected.
    assert not hasattr(store, "rewrite_paths") and callable(entrypoint.rewrite_paths)


# What a subprocess reports: the parse's and the rewrite's peak RSS above the
# interpreter's baseline (measured before the manifest is even read, so the 43 MiB of
# bytes count against the 60 MiB too), and the kind and first shard path it found.
_RSS_PROBE = """
import resource, sys
from shardsync.daemon.entrypoint import rewrite_paths
from shardsync.daemon.tfjs import parse_manifest
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
base = rss()
data = open(sys.argv[1], "rb").read()
m = parse_manifest(data, manifest_url="https://h/m/model.json")
parsed = rss()
out = rewrite_paths(data, "versions/v/")
print(m.kind, m.files[0], parsed - base, rss() - base, out.count(b"versions/v/a.bin"))
"""


def write_hostile(path: Path, node: bytes, size: int) -> None:
    """A legal graph-model model.json of ``size`` bytes, its topology ``node`` repeated."""
    per = 1 << 16
    count = size // (len(node) + 1)
    with open(path, "wb") as f:
        f.write(b'{"format": "graph-model", "modelTopology": {"node": [' + node)
        for done in range(1, count, per):
            f.write((b"," + node) * min(per, count - done))
        f.write(b']}, "weightsManifest": [{"paths": ["a.bin"], "weights": '
                b'[{"name": "w", "shape": [1], "dtype": "float32"}]}]}')


@pytest.mark.parametrize("node", [b"{}", b'{"name": "n", "attr": {"v": {"list": {"i": [1, 2]}}}}'],
                         ids=["empty-nodes", "nested-nodes"])
def test_a_43_mib_topology_is_parsed_in_bounded_memory(tmp_path, node):
    # Issue 14: 15 million {} nodes (43 MiB, under the manifest cap) took 1.43 GB with
    # json.loads. The topology is checked, never built: bytes + a few MiB.
    path = tmp_path / "model.json"
    write_hostile(path, node, 43 << 20)
    assert path.stat().st_size > 42 << 20
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    kind, first, parse_mib, rewrite_mib, rewritten = out
    assert (kind, first, rewritten) == ("graph-model", "a.bin", "1")
    assert int(parse_mib) < 60, f"parse peaked {parse_mib} MiB above the baseline"
    # The rewrite holds its output beside the input (both ~43 MiB), and no more.
    assert int(rewrite_mib) < 2 * 43 + 16, f"rewrite peaked {rewrite_mib} MiB above the baseline"


_GROUPS_PROBE = """
import resource, sys
from shardsync.daemon.errors import ManifestError
from shardsync.daemon.tfjs import parse_manifest
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
data = open(sys.argv[1], "rb").read()
try:
    parse_manifest(data, manifest_url="https://h/m/model.json")
    print("parsed", 0)
except ManifestError as exc:
    print(exc.reason.split()[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 - base)
"""


@pytest.mark.parametrize("bare", [True, False], ids=["weights-manifest", "model-json"])
def test_43_mib_of_weight_groups_are_refused_before_they_are_built(tmp_path, bare):
    # The weight groups are the one part built as Python objects: 15 million {} of them
    # would cost ~1 GB. They are counted first (MAX_GROUP_VALUES) and refused unbuilt.
    path = tmp_path / "model.json"
    count = (43 << 20) // 3
    with open(path, "wb") as f:
        f.write(b"[" if bare else b'{"modelTopology": {}, "weightsManifest": [')
        f.write(b"{}," * (count - 1) + b"{}")
        f.write(b"]" if bare else b"]}")
    out = subprocess.run([sys.executable, "-c", _GROUPS_PROBE, str(path)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out[0] == "the", out  # "the weight groups hold about ... JSON values, more than ..."
    assert int(out[1]) < 60, f"peaked {out[1]} MiB above the baseline"


def test_a_model_of_20000_weights_is_within_the_bound():
    weights = [{"name": f"layer{i}/kernel", "shape": [3, 3, 64, 64], "dtype": "float32"}
               for i in range(20_000)]
    doc = json.dumps({"modelTopology": {"node": []}, "format": "graph-model",
                      "weightsManifest": [{"paths": ["a.bin"], "weights": weights}]}).encode()
    m = parse_manifest(doc, manifest_url=URL)
    assert len(m.groups[0].weights) == 20_000
    assert json.loads(rewrite_paths(doc, "v/"))["weightsManifest"][0]["paths"] == ["v/a.bin"]


@pytest.mark.parametrize(("doc", "why"), [
    (b'{"modelTopology": {"node": [{}, {"a": NaN}]}, "weightsManifest": []}', "not valid JSON"),
    (b'{"modelTopology": {"node": [' + b"{}," * 50_000 + b'{]}, "weightsManifest": []}',
     "not valid JSON"),
    (b'{"modelTopology": {"x": "\xff"}, "weightsManifest": []}', "not valid JSON"),
    (b'{"modelTopology": {"x": 1}, "weightsManifest": []} x', "not valid JSON"),
    (b'{"modelTopology": ' + b"[" * 5000 + b"]" * 5000 + b', "weightsManifest": []}',
     "nested too deeply"),
    ("\ufeff{}".encode("utf-16"), "not valid JSON"),
])
def test_a_topology_that_is_not_json_is_still_refused(doc, why):
    # The topology is not built, but a browser's JSON.parse would refuse the whole file:
    # so does the scan, with the byte where it shows.
    with pytest.raises(ManifestError, match=why) as info:
        parse_manifest(doc, manifest_url=URL)
    assert info.value.file == "model.json"


def test_the_scan_agrees_with_json_loads_on_real_and_built_manifests():
    # The topology and the weight groups as json.loads sees them, for every sample model
    # and for a graph whose topology is far larger than the scan's windows.
    big = json.dumps({"modelTopology": {"versions": {}, "node": [
        {"name": f"n{i}", "op": "Const", "attr": {"value": {"tensor": {"dtype": "DT_FLOAT"}},
                                                  "s": ["\u00e9" * (i % 50)]}}
        for i in range(3000)]}, "weightsManifest": [{"paths": ["a.bin"], "weights": [w()]}]},
        ensure_ascii=False, indent=1).encode()
    docs = [(p.read_bytes(), kind) for p, kind in
            [(SAMPLES / d / f, k) for d, f, k in REAL]] + [(big, "graph-model")]
    for data, kind in docs:
        m = parse_manifest(data, manifest_url=URL)
        assert m.kind == kind
        assert m.files == [shard_relpath(p) for g in manifest_groups(json.loads(data)) or []
                           for p in g["paths"]]
        out = json.loads(rewrite_paths(data, "v/"))
        before = json.loads(data)
        for g in manifest_groups(before) or []:
            g["paths"] = ["v/" + shard_relpath(p) for p in g["paths"]]
        assert out == before
