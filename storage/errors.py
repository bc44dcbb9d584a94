"""Errors inside storage/. None of them escapes `Store.apply`: each becomes an "invalid" result."""


class StorageError(Exception):
    """Base of every error storage/ raises."""


class InvalidCommand(StorageError):
    """A command's shape is wrong (missing field, wrong type); it changes nothing."""


class CorruptRecord(StorageError):
    """An index points at a record that is missing or unreadable."""
