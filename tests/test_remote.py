"""Remote nodes and stages (levels.md §9, check 39; world.md §3–4 per-node/per-stage
``endpoint_url``): the wire format, a node and a stage called through ``RemoteGraph``
against an in-process server (fast), and a stage served by ``langgraph dev`` (slow)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.langgraph_server import REPO, Server, inprocess_client
from tests.remote_blocks import Paint, Shout
from worldgen import World
from worldgen.artifacts import ArtifactStore
from worldgen.engine import Graph
from worldgen.remote import (
    RemoteCallError,
    decode_value,
    encode_value,
    serve_pipeline,
    serve_stage,
)
from worldgen.stage_graph import StageGraph

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------- helpers
def one_block_graph(name: str, block: Any, inp: str, out: str) -> Graph:
    """A graph of one block; a stage node (or `serve_pipeline`) holds it as a one-graph pipeline."""
    graph = Graph(name)
    graph.add_node("b", block)
    graph.expose_input("b", inp, inp)
    graph.expose_output("b", out, out)
    return graph


def creator_graph() -> StageGraph:
    """block2's prompt → paint (random weights) → block3; block2's prompt → shout → unused."""
    torch.manual_seed(0)
    sg = StageGraph("painter")
    sg.add_pipeline(one_block_graph("paint", Paint("paint_block"), "prompt", "image"))
    sg.add_pipeline(one_block_graph("shout", Shout("shout_block"), "text", "text"))
    sg.set_state_contract([2], [3], mapping_input=[("block2", "paint", "prompt"), ("block2", "shout", "text")],
                          mapping_output=[("block3", "paint", "image")])
    sg.validate(strict=True)
    return sg


class _World:
    def __init__(self, root: Path) -> None:
        self.artifacts = ArtifactStore(root)


STATE = {"block2": {"slots": [{"name": "scene", "kind": "image", "prompt": "a red hill", "params": {}}]}}


# ------------------------------------------------------------------- wire format
@pytest.mark.parametrize("value", [
    torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7,
    torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
    torch.tensor(3, dtype=torch.int64),
    torch.ones(2, 2, dtype=torch.bool)[:, 0],
])
def test_tensors_cross_the_wire_bit_exact(value):
    data = json.loads(json.dumps(encode_value(value, "tensor")))
    back = decode_value(data, "tensor")
    assert back.dtype == value.dtype and back.shape == value.shape and torch.equal(back, value)


def test_images_bytes_arrays_and_json_cross_the_wire():
    import numpy as np

    image = Image.new("RGB", (5, 3), (10, 200, 30))
    value = {"img": image, "raw": b"\x00\xff", "arr": np.arange(4, dtype=np.int16), "text": "hé", "n": [1, 2.5, None]}
    back = decode_value(json.loads(json.dumps(encode_value(value))))
    assert back["img"].size == (5, 3) and back["img"].getpixel((4, 2)) == (10, 200, 30)
    assert back["raw"] == b"\x00\xff" and back["arr"].dtype == np.int16 and back["arr"].tolist() == [0, 1, 2, 3]
    assert back["text"] == "hé" and back["n"] == [1, 2.5, None]


def test_wire_errors_name_the_port():
    with pytest.raises(TypeError, match="node 'n' port 'p' is a text port but holds Tensor"):
        encode_value(torch.zeros(1), "text", where="node 'n' port 'p'")
    with pytest.raises(TypeError, match=r"port 'q'.x: object has no wire format"):
        encode_value({"x": object()}, where="port 'q'")


# ---------------------------------------------------------------------- check 39
def test_check39_node_with_mocked_endpoint_gives_the_local_outputs(tmp_path):
    local = creator_graph()
    expected = local({**STATE, "world": _World(tmp_path / "local")})
    (item,) = expected["block3"]["items"]
    assert item["kind"] == "image" and item["slot"] == "image"

    calls: list[dict[str, Any]] = []
    client = inprocess_client({"pipeline": serve_pipeline(local.get_node("paint"))}, calls)
    local.set_node_endpoint("paint", "http://remote.test", "pipeline", sync_client=client)
    seen = []
    remote_world = _World(tmp_path / "remote")
    got = local.run({**STATE, "world": remote_world}, callbacks=lambda n, i, o: seen.append((n, o is None)))
    assert got["block3"] == expected["block3"]  # same pixels → same sha256, same ref
    assert remote_world.artifacts.path(item["uri"]).is_file()
    assert calls and calls[0]["input"] == {"inputs": {"prompt": "a red hill"}}
    assert sorted(seen) == [("paint", False), ("paint", True), ("shout", False), ("shout", True)]

    # a remote-only node (no local pipeline): same outputs from the declared ports
    sg = StageGraph("remote_only")
    sg.add_remote("paint", "http://remote.test", "pipeline", inputs={"prompt": "text"}, outputs={"image": "tensor"},
                  sync_client=client)
    sg.set_state_contract([2], [3])
    assert sg.validate().is_valid
    assert sg({**STATE, "world": _World(tmp_path / "only")}) == expected


def test_remote_stage_in_process_matches_local_and_brings_artifact_files(tmp_path):
    local = creator_graph()
    expected = local({**STATE, "world": _World(tmp_path / "local")})
    served = serve_stage(local, artifacts_root=tmp_path / "server")
    remote = StageGraph.from_config(local.to_config())
    remote.set_endpoint("http://remote.test", "stage",
                        sync_client=inprocess_client({"stage": served}))
    world = _World(tmp_path / "client")
    assert remote({**STATE, "world": world}) == expected
    (item,) = expected["block3"]["items"]
    assert world.artifacts.read_bytes(item["uri"]) == (tmp_path / "local" / item["uri"]).read_bytes()

    # a stage reading block 3 sends the files along: the served side re-stores them
    reader = StageGraph("reader")
    reader.add_runnable(lambda d: f"{len(d['items'])} items", "count", inputs=["items"], outputs=["text"])
    reader.set_state_contract([3], [4], mapping_input=[("block3", "count", "items")],
                              mapping_output=[("block4", "count", "text")])
    client = inprocess_client({"reader": serve_stage(reader, artifacts_root=tmp_path / "server2")})
    reader_remote = StageGraph("reader")
    reader_remote.set_state_contract([3], [4])
    reader_remote.set_endpoint("http://remote.test", sync_client=client)
    update = reader_remote({"block3": expected["block3"], "world": world})
    assert update == reader({"block3": expected["block3"], "world": world})
    assert update["block4"]["items"][0]["text"] == "1 items"
    assert (tmp_path / "server2" / item["uri"]).is_file()


def test_remote_stage_takes_the_action_argument_as_a_local_stage_does(tmp_path):
    echo = StageGraph("echo")
    echo.add_runnable(lambda d: d["a"], "echo", inputs=["a"], outputs=["text"])
    echo.set_state_contract([], [5], mapping_input=[("action", "echo", "a")],
                            mapping_output=[("block5", "echo", "text")])
    remote = StageGraph("echo")
    remote.set_state_contract([], [5])
    remote.set_endpoint("http://remote.test",
                        sync_client=inprocess_client({"echo": serve_stage(echo, artifacts_root=tmp_path)}))
    state = {"action": "from state"}
    for sg in (echo, remote):
        assert sg.update(state, action="from argument")["block5"]["text"] == "from argument", sg
        assert sg.update(state)["block5"]["text"] == "from state", sg


def test_remote_failure_names_node_and_url(tmp_path):
    sg = creator_graph()
    broken = serve_pipeline(one_block_graph("paint", Shout("s"), "text", "text"))  # wrong ports
    sg.set_node_endpoint("paint", "http://remote.test", "pipeline", sync_client=inprocess_client({"pipeline": broken}))
    with pytest.raises(RemoteCallError, match=r"remote node 'paint': remote call to http://remote.test \(assistant 'pipeline'\)"):
        sg({**STATE, "world": _World(tmp_path)})


def test_endpoint_url_round_trips_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGGRAPH_API_KEY", "sk-secret-1")
    sg = creator_graph()
    sg.set_node_endpoint("paint", "http://gpu-box:2024/", "pipeline")
    config = sg.to_config()
    assert config["pipelines"]["paint"]["endpoint_url"] == "http://gpu-box:2024"
    assert config["pipelines"]["paint"]["assistant_id"] == "pipeline"
    assert "endpoint_url" not in config["pipelines"]["shout"]
    assert "sk-secret" not in json.dumps(config)
    back = StageGraph.from_config(config)
    remote = back._nodes["paint"].remote
    assert remote is not None and remote.to_config() == {"endpoint_url": "http://gpu-box:2024", "assistant_id": "pipeline"}
    assert back._nodes["shout"].remote is None
    # the key is read from the environment when the call is set up, never stored
    assert remote.graph().sync_client.http.client.headers["x-api-key"] == "sk-secret-1"

    sg.set_endpoint("http://stage-box:2024", "stage", api_key_env="MY_STAGE_KEY")
    sg.save(tmp_path / "saved")
    text = (tmp_path / "saved" / "config.yaml").read_text()
    assert "stage-box" in text and "MY_STAGE_KEY" in text and "sk-secret" not in text
    loaded = StageGraph.load(tmp_path / "saved")
    assert loaded.remote.to_config() == {"endpoint_url": "http://stage-box:2024", "assistant_id": "stage",
                                         "api_key_env": "MY_STAGE_KEY"}
    assert loaded._nodes["paint"].remote.endpoint_url == "http://gpu-box:2024"

    only = StageGraph("only")
    only.add_remote("n", "http://x", "pipeline", inputs={"prompt": "text"}, outputs=["image"], optional_inputs=["prompt"])
    only.set_state_contract([2], [3])
    again = StageGraph.from_config(only.to_config())
    assert again.get_input_spec("n") == {"prompt": "text"} and again.get_output_spec("n") == {"image": "any"}
    assert again._nodes["n"].optional_inputs == {"prompt"}


# -------------------------------------------------------- slow: langgraph dev serves it
@pytest.fixture
def stage_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path / "saved-stage"
    sg = creator_graph()
    sg.save(folder)
    sg.get_node("paint").save(tmp_path / "saved-paint")  # for the node-level endpoint
    srv = Server(tmp_path / "langgraph-dev-stage.log", tmp_path / f"world-{uuid.uuid4().hex[:12]}", {
        "WORLDGEN_STAGE": str(folder),
        "WORLDGEN_PIPELINE": str(tmp_path / "saved-paint"),
        "WORLDGEN_STAGE_ARTIFACTS": str(tmp_path / "server-artifacts"),
        "WORLDGEN_IMPORTS": "tests.remote_blocks",
        "PYTHONPATH": str(REPO),
    })
    try:
        srv.wait_healthy()
        yield srv, folder
    finally:
        srv.stop()


@pytest.mark.slow
def test_world_with_a_stage_served_by_langgraph_dev_matches_the_local_world(tmp_path, log, stage_server):
    server, folder = stage_server
    local_stage = StageGraph.load(folder, validate=True)
    remote_stage = StageGraph.load(folder)
    remote_stage.set_endpoint(server.url, "stage")
    assert remote_stage.to_config()["endpoint_url"] == server.url

    finals = []
    for name, sg in (("local", local_stage), ("remote", remote_stage)):
        stages = {**log.stages(), "creator": sg.as_stage("creator")}
        with World(stages=stages, root=tmp_path / name) as world:
            result = world.invoke(num_steps=2)
            finals.append((world, result.state.model_dump(mode="json")))
            ran = result.ran()
            assert ran.count("creator") == 2 and "philosopher" in ran, ran
            for item in result.state.block3.items:
                assert world.artifacts.path(item).is_file(), f"{name}: {item.uri} missing"
    (_, local), (_, remote) = finals
    for key in ("block1", "block2", "block3", "block4", "block5"):
        assert remote[key] == local[key], key
    assert local["block3"]["items"], local
    assert (tmp_path / "server-artifacts" / local["block3"]["items"][0]["uri"]).is_file()

    # the same server, one node remote (a hybrid stage): the node's outputs are the local ones
    hybrid = StageGraph.load(folder)
    hybrid.set_node_endpoint("paint", server.url, "pipeline")
    state = {**STATE, "world": _World(tmp_path / "hybrid")}
    assert hybrid(state) == local_stage({**STATE, "world": _World(tmp_path / "local-again")})

