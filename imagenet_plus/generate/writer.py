"""Encoding images and writing generated shards on a background thread.

The model runs on the main thread; JPEG encoding and tar writing run on a writer thread fed by a bounded
queue, so they overlap with the next batch (PIL releases the GIL while encoding). A shard is written as
``NNNNN.tar.partial`` and renamed when complete, then its stats JSON is written: the shard is done when both
exist (:func:`~imagenet_plus.contract.generated.generated_done`).
"""

from __future__ import annotations

import io
import json
import queue
import threading
from pathlib import Path
from typing import Any

from imagenet_plus.contract import ShardStats, stats_path
from imagenet_plus.io.tar import PartialTarWriter

#: Format name for PIL per image extension.
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encode_image(image: Any, image_format: str, quality: int) -> bytes:
    """Encode a PIL image with an explicit quality (webdataset would write quality 100)."""
    buf = io.BytesIO()
    fmt = PIL_FORMATS[image_format]
    if fmt == "PNG":
        image.save(buf, format=fmt)
    else:
        image.convert("RGB").save(buf, format=fmt, quality=quality)
    return buf.getvalue()


class ShardWriterThread:
    """Encodes images and writes shards on a background thread, in plan order.

    Commands go through a bounded queue: ``begin(path)``, ``put(position, key, image, meta)`` (any
    order; samples are written in position order), ``end(stats)`` (commit the tar, then its stats
    JSON). Errors on the thread are re-raised on the next call from the main thread.
    """

    def __init__(self, image_format: str, quality: int, max_queue: int = 64) -> None:
        self.image_format = image_format
        self.quality = quality
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="shard-writer", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _send(self, msg: tuple[str, Any] | None) -> None:
        while True:
            self._check()
            try:
                self._queue.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue

    def begin(self, path: Path) -> None:
        self._send(("begin", path))

    def put(self, position: int, key: str, image: Any, meta: dict[str, Any]) -> None:
        self._send(("sample", (position, key, image, meta)))

    def end(self, stats: ShardStats) -> None:
        self._send(("end", stats))

    def close(self) -> None:
        """Finish all queued work and stop the thread (re-raises its error, if any)."""
        if self._thread.is_alive():
            self._send(None)
            self._thread.join()
        self._check()

    def _loop(self) -> None:
        writer: PartialTarWriter | None = None
        buffered: dict[int, dict[str, Any]] = {}
        next_pos = 0
        try:
            while True:
                msg = self._queue.get()
                if msg is None:
                    return
                kind, payload = msg
                if kind == "begin":
                    writer, buffered, next_pos = PartialTarWriter(payload), {}, 0
                elif kind == "sample":
                    position, key, image, meta = payload
                    buffered[position] = {
                        "__key__": key,
                        self.image_format: encode_image(image, self.image_format, self.quality),
                        "cls": str(meta["label"]).encode(),
                        "json": json.dumps(meta, sort_keys=True).encode(),
                    }
                    while next_pos in buffered and writer is not None:
                        writer.write(buffered.pop(next_pos))
                        next_pos += 1
                elif kind == "end":
                    assert writer is not None and not buffered, "shard ended with samples missing"
                    writer.commit()
                    payload.write(stats_path(writer.path))
                    writer = None
        except BaseException as exc:  # handed to the main thread
            self._error = exc
            if writer is not None:
                writer.abort()
            # drain so that the main thread never blocks on a full queue
            while True:
                try:
                    if self._queue.get_nowait() is None:
                        return
                except queue.Empty:
                    return
