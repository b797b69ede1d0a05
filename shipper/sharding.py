"""Which worker process follows a log file: a stable hash of the file's directory."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


def shard_of(directory: str, count: int) -> int:
    """The worker (0 to count - 1) that follows the files of `directory`.

    By directory because a file's rotated generations stay in it (Docker's `<id>-json.log.N`,
    the kubelet's `0.log.<time>`): one worker sees a container's every generation, in order.
    A keyed hash rather than `hash()`, whose value changes with every interpreter start.
    """
    digest = hashlib.blake2b(os.fsencode(directory), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """One worker's share of the files: those whose directory hashes to `index` of `count`."""

    index: int
    count: int

    def owns_directory(self, directory: str) -> bool:
        return self.count == 1 or shard_of(directory, self.count) == self.index

    def owns_path(self, path: str) -> bool:
        return self.owns_directory(os.path.dirname(path))
