"""The SQLite files under a world's root: checkpoints (SqliteSaver) and content (SqliteStore)."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path
from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.store.sqlite import SqliteStore

__all__ = ["CompactSqliteSaver", "CompressingSerializer", "open_checkpointer", "open_store"]


_COMPRESS_FROM = 512  # bytes; smaller values gain nothing from zlib


class CompressingSerializer(JsonPlusSerializer):
    """LangGraph's serializer, zlib-compressing the larger msgpack values.

    A checkpoint repeats the same channel names and block keys in every step; compressed,
    the ~9 checkpoints a pass writes take about half the space.
    """

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        type_, data = super().dumps_typed(obj)
        if type_ == "msgpack" and len(data) >= _COMPRESS_FROM:
            packed = zlib.compress(data, 6)
            if len(packed) < len(data):
                return "msgpack+zlib", packed
        return type_, data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, payload = data
        if type_ == "msgpack+zlib":
            return super().loads_typed(("msgpack", zlib.decompress(payload)))
        return super().loads_typed(data)


class CompactSqliteSaver(SqliteSaver):
    """A SqliteSaver with integer channel versions and compressed checkpoints.

    The stock saver's versions are 52-character strings with a random suffix (for savers
    shared between processes); a world has one writer, and small versions keep each
    checkpoint small. A database that already holds string versions keeps them.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn, serde=CompressingSerializer())

    def get_next_version(self, current: Any, channel: None = None) -> Any:
        if isinstance(current, str):
            return super().get_next_version(current, channel)
        return (current or 0) + 1


def _connect(path: Path, *, autocommit: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None if autocommit else "DEFERRED")
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL survives a killed process (what resume is for); only an OS crash can
    # lose the last transactions
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def open_checkpointer(root: Path) -> tuple[CompactSqliteSaver, sqlite3.Connection]:
    # transactional, so each checkpoint's rows commit together (and once)
    conn = _connect(root / "checkpoints.sqlite", autocommit=False)
    return CompactSqliteSaver(conn), conn


def open_store(root: Path) -> tuple[SqliteStore, sqlite3.Connection]:
    conn = _connect(root / "store.sqlite", autocommit=True)  # SqliteStore issues its own BEGIN
    store = SqliteStore(conn)
    store.setup()
    return store, conn
