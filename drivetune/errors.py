"""The library's errors, in one place. Libraries raise these (never a command-line type); the command line
(`drivetune.cli`) reports any `InputError` as `drivetune COMMAND: error: MESSAGE` with exit code 2.

Every error here is an `InputError`, and so also a `ValueError`: bad input (a file, a config, an argument) that the
user can fix, with a message naming the problem.
"""

from __future__ import annotations

import os


class DrivetuneError(Exception):
    """Base of drivetune's own errors."""


class InputError(DrivetuneError, ValueError):
    """Bad input the user can fix (arguments, files, configs); the command line exits 2 on it."""


class ConfigError(InputError):
    """A config file or override that does not fit its dataclass. `where` is the dotted location of the problem
    (`FILE.a.b`) and `problem` the rest of the message."""

    def __init__(self, where: str, problem: str | None = None) -> None:
        super().__init__(where if problem is None else f"{where}: {problem}")
        self.where, self.problem = where, problem


class SourceError(InputError):
    """A source spec that names nothing readable."""


class TFRecordError(InputError):
    """A corrupt or truncated TFRecord; the message names the file and the record's byte offset."""

    def __init__(self, path: str | os.PathLike, offset: int, problem: str):
        self.path, self.offset, self.problem = str(path), offset, problem
        super().__init__(f"{path}: record at byte offset {offset}: {problem}")


class WomdError(InputError):
    """A Scenario that cannot be read or written; the message names the scenario and/or file."""


class SceneError(InputError):
    """A scene whose arrays are inconsistent (wrong shapes, NaN, dangling indices)."""


class ShardError(InputError):
    """A shard or manifest that cannot be used (unknown schema version, checksum mismatch, missing scenario)."""


class IngestLockedError(InputError):
    """Another ingest is writing into the same shard directory."""


class DuplicateScenarioError(InputError):
    """The inputs hold the same scenario id more than once."""


class VocabError(InputError):
    """A vocabulary file or array set that is malformed or fails its content hash."""


class CheckpointError(InputError):
    """A checkpoint directory that is missing files, malformed, or does not fit its model."""


class CheckpointVersionError(CheckpointError):
    """A checkpoint of another model definition (`model_version` in its meta; absent = 1)."""


class RolloutError(InputError):
    """Rollouts that do not fit their scenario (ids, shapes, non-finite values)."""


class SubmissionError(InputError):
    """A submission that breaks the challenge rules or cannot be read."""
