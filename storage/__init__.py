"""raftmq's replicated state: queues and messages in one LMDB environment, changed only by apply."""

from storage.config import default_queue_config, normalize_queue_config
from storage.errors import CorruptRecord, InvalidCommand, StorageError
from storage.store import Store

__all__ = [
    "CorruptRecord",
    "InvalidCommand",
    "StorageError",
    "Store",
    "default_queue_config",
    "normalize_queue_config",
]
