"""The public API and the one query chain: README's example, API == CLI, benchmark fusion == query."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from conftest import REPO, unit_rows
from diffgap_search.cli import app
from diffgap_search.storage import read_embeddings, write_shard

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result


def test_public_names_are_exported():
    import diffgap_search

    for name in ("Index", "Engine", "Results", "Translator", "load_encoder"):
        assert getattr(diffgap_search, name).__name__ == name
    with pytest.raises(AttributeError):
        diffgap_search.Nothing  # noqa: B018


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    blocks = re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 5)], re.S)
    assert blocks, "the README's Python API section has a python block"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile("\n".join(blocks), "README.md (Python API)", "exec"), scope)  # noqa: S102
    results = scope["results"]
    assert results.ids.shape == (3, 5) and (results.ids[:, 0] == np.arange(3)).all()  # each clip finds itself first
    assert results.rows(0)[0]["rank"] == 1 and results.rows(0)[0]["path"] == "clips/0.wav"
    assert (tmp_path / "indexes" / "example" / "manifest.json").exists()


def test_api_search_equals_the_cli_query(tmp_path):
    from diffgap_search import Engine, Index

    xb, xq = unit_rows(500, 24, seed=1), unit_rows(7, 24, seed=2)
    index = Index.build(xb, out=tmp_path / "ix", index_type="flat", metadata={"path": [f"{i}.wav" for i in range(500)]})
    queries = tmp_path / "q.parquet"
    write_shard(queries, np.arange(7), xq)
    api = Engine(index).search(embeddings=xq, k=10)
    out = invoke("query", tmp_path / "ix", "--embeddings-file", queries, "--k", 10, "--json", "--device", "cpu").stdout
    hits = [json.loads(line) for line in out.splitlines()]
    cli = np.array([h["id"] for h in hits]).reshape(7, 10)
    np.testing.assert_array_equal(api.ids, cli)
    np.testing.assert_allclose(api.scores, np.array([h["score"] for h in hits]).reshape(7, 10), rtol=1e-6)
    assert [h["rank"] for h in hits[:10]] == list(range(1, 11))
    # and both equal brute force
    np.testing.assert_array_equal(api.ids, np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :10])
    table = api.to_arrow()
    assert table.num_rows == 70 and {"query", "rank", "id", "score", "path"} <= set(table.column_names)


def test_in_memory_index_equals_the_folder_index_and_adds(tmp_path):
    from diffgap_search import Index

    xb = unit_rows(300, 16, seed=3)
    memory = Index.build(xb[:200], index_type="flat")
    folder = Index.build(xb[:200], out=tmp_path / "ix", index_type="flat")
    q = unit_rows(5, 16, seed=4)
    np.testing.assert_array_equal(memory.search(q, 8).ids, folder.search(q, 8).ids)
    grown, grown_folder = memory.add(xb[200:]), folder.add(xb[200:])
    assert len(grown) == len(grown_folder) == 300 and len(memory) == 200  # add returns a new version
    np.testing.assert_array_equal(grown.search(q, 8).ids, grown_folder.search(q, 8).ids)
    np.testing.assert_array_equal(grown.ids, np.arange(300))


def test_embed_shards_add_to_an_index_built_from_embed_shards(tmp_path):
    """embed writes file-local ids: build-index numbers them, add continues after the largest (README's workflow)."""
    from diffgap_search.storage import write_shard as write

    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write(a, np.arange(40), unit_rows(40, 8, seed=5), pa.table({"path": [f"a{i}" for i in range(40)]}), local_ids=True)
    write(b, np.arange(25), unit_rows(25, 8, seed=6), pa.table({"path": [f"b{i}" for i in range(25)]}), local_ids=True)
    assert not read_embeddings(a).has_ids
    invoke("build-index", "--embeddings", a, "--out", tmp_path / "ix", "--index-type", "flat", "--device", "cpu")
    out = invoke("add", tmp_path / "ix", "--embeddings", b).stdout
    assert "added 25 vectors" in out and "65 in all" in out
    from diffgap_search import Index

    index = Index.open(tmp_path / "ix", device="cpu")
    np.testing.assert_array_equal(index.ids, np.arange(65))
    assert index.metadata([40])[0]["path"] == "b0"


# -- benchmark --model's fusion is the query chain ---------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny translator (16-d audio side, 8-d query side) trained and calibrated on synthetic pairs."""
    from diffgap_search.diffusion.network import NetworkConfig
    from diffgap_search.diffusion.train import TrainConfig, train
    from diffgap_search.pairs import write_pairs
    from diffgap_search.synthetic import GapConfig, make_pairs

    root = tmp_path_factory.mktemp("calibrated")
    gap = GapConfig(dim_a=16, dim_b=8)
    p = make_pairs(1300, gap, seed=1)
    write_pairs(root / "train.parquet", p.a[:800], p.b[:800])
    config = TrainConfig(epochs=3, batch_size=64, lr=1e-3, interval=20, network=NetworkConfig(hidden=32, emb=32, blocks=2),
                         val_queries=50, val_steps=2)
    train(root / "train.parquet", root / "model", config, progress=False, log=lambda s: None)
    rows = np.arange(800, 1300)
    groups = rows // 2 * 2  # two queries share a clip
    write_pairs(root / "val.parquet", p.a[groups[:200]], p.b[rows[:200]], group_id=groups[:200])
    write_pairs(root / "test.parquet", p.a[groups[200:]], p.b[rows[200:]], group_id=groups[200:])
    invoke("calibrate", "--model", root / "model", "--pairs", root / "val.parquet", "--device", "cpu")
    return root


def test_benchmark_fusion_equals_the_query_chain_both_ways(calibrated, tmp_path):
    from diffgap_search.pairs import read_pairs

    root = calibrated
    invoke("benchmark", "--pairs", root / "test.parquet", "--model", root / "model", "--methods", "fusion",
           "--out", tmp_path / "res", "--device", "cpu")
    record = json.loads((tmp_path / "res.json").read_text())
    fusion = {r["direction"]: r["R@1"] for r in record["rows"] if r["method"] == "fusion"}

    test = read_pairs(root / "test.parquet")
    gallery, _ = test.gallery()
    # query->audio: an index of the test clips (id = clip), every caption a query
    write_shard(tmp_path / "clips.parquet", np.arange(len(gallery)), gallery)
    write_shard(tmp_path / "captions.parquet", np.arange(len(test)), test.b)
    invoke("build-index", "--embeddings", tmp_path / "clips.parquet", "--out", tmp_path / "clips", "--index-type", "flat", "--device", "cpu")
    out = invoke("query", tmp_path / "clips", "--embeddings-file", tmp_path / "captions.parquet", "--model", root / "model",
                 "--k", 1, "--json", "--device", "cpu").stdout
    top = np.array([json.loads(line)["id"] for line in out.splitlines()])
    assert fusion["query->audio"] == pytest.approx(float((top == test.group).mean()))
    # audio->query: an index of the test captions (id = row), every clip a query; any caption of the clip is a hit
    invoke("build-index", "--embeddings", tmp_path / "captions.parquet", "--out", tmp_path / "caps", "--index-type", "flat", "--device", "cpu")
    out = invoke("query", tmp_path / "caps", "--embeddings-file", tmp_path / "clips.parquet", "--model", root / "model",
                 "--k", 1, "--json", "--device", "cpu").stdout
    top = np.array([json.loads(line)["id"] for line in out.splitlines()])
    assert fusion["audio->query"] == pytest.approx(float((test.group[top] == np.arange(len(gallery))).mean()))
    assert 0 < fusion["query->audio"] < 1  # the comparison can fail


def test_engine_warns_once_when_the_direction_it_needs_is_undertrained(calibrated, tmp_path):
    import shutil

    from diffgap_search import Engine, Index, Translator
    from diffgap_search.pairs import read_pairs

    model = tmp_path / "model"
    shutil.copytree(calibrated / "model", model)
    test = read_pairs(calibrated / "test.parquet")
    index = Index.build(test.gallery()[0], index_type="flat")
    warnings: list[str] = []
    healthy = Engine(index, Translator.load(model), warn=warnings.append)
    healthy.search(embeddings=test.b[:4], k=3)
    assert warnings == []
    config = json.loads((model / "config.json").read_text())
    config["training"]["direction_steps"] = {"to-audio": 1000, "from-audio": 3}
    (model / "config.json").write_text(json.dumps(config))
    engine = Engine(index, Translator.load(model), warn=warnings.append)
    engine.search(embeddings=test.b[:4], k=3)
    engine.search(embeddings=test.b[4:8], k=3)
    assert len(warnings) == 1 and "from-audio direction is under-trained" in warnings[0] and "3" in warnings[0]
