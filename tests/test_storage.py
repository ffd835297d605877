from __future__ import annotations

from worldgen.storage import CompressingSerializer, open_checkpointer, open_store


def test_compressing_serializer_round_trips_and_compresses_large_values():
    serde = CompressingSerializer()
    big = {"trace": [{"transition": "philosopher", "status": "skipped", "reason": "x" * 40}] * 20}
    type_, data = serde.dumps_typed(big)
    assert type_ == "msgpack+zlib" and len(data) < len(CompressingSerializer.__mro__[1]().dumps_typed(big)[1])
    assert serde.loads_typed((type_, data)) == big
    small = {"a": 1}
    assert serde.dumps_typed(small)[0] == "msgpack"
    assert serde.loads_typed(serde.dumps_typed(small)) == small


def test_checkpointer_uses_integer_versions_and_keeps_string_ones(tmp_path):
    saver, conn = open_checkpointer(tmp_path)
    assert saver.get_next_version(None, None) == 1 and saver.get_next_version(4, None) == 5
    legacy = saver.get_next_version("00000000000000000000000000000003.0.5", None)
    assert isinstance(legacy, str) and legacy.startswith("00000000000000000000000000000004.")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_store_is_usable(tmp_path):
    store, conn = open_store(tmp_path)
    store.put(("worlds", "w"), "k", {"v": 1})
    assert store.get(("worlds", "w"), "k").value == {"v": 1}
    conn.close()
