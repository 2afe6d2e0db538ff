"""``data.streaming: true``: the training set is read as training goes, never written to disk.

``TrainStream`` is an ``IterableDataset`` over the training split (a hub dataset streamed by ``datasets``,
or any local source read lazily): each raw sample is decoded, resampled, filtered and tokenised when the
loop asks for it (``prepare.prepare_one``, the same code that prepares data on disk), and bad samples are
skipped and counted. The run is bounded by ``training.max_steps``, so only about steps x batch samples are
ever decoded. When the stream ends before the last step it starts again (a new pass, in the same order:
streams are not shuffled beyond what their source does).

Resuming a streamed run restarts the stream and skips the micro-batches the checkpoint had consumed —
they are read and decoded again to be skipped, so the run continues on exactly the samples it would
have seen, at the cost of re-reading them. Evaluation sets are still prepared to disk (they are small
and read twice).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from whisper_tune.data.preparation import Dropped, Filters, LabelTokenizer, prepare_one
from whisper_tune.data.sources import SplitSpec, iter_split
from whisper_tune.data.store import PCM_SCALE, DropReport


class TrainStream(IterableDataset[dict[str, Any]]):
    """Prepared samples ({"audio", "labels"}) of ``spec``, made on the fly."""

    def __init__(self, spec: SplitSpec, tokenizer: Any, filters: Filters, limit: int | None = None) -> None:
        self.spec, self.filters, self.limit = spec, filters, limit
        self.tokenizer = LabelTokenizer.of(tokenizer)
        self.read = 0
        self.kept = 0
        self.drops = DropReport()
        self.passes = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.passes += 1
        kept = 0
        for sample in iter_split(self.spec):
            if self.limit is not None and kept >= self.limit:
                break
            self.read += 1
            item = prepare_one(sample, self.tokenizer, self.filters)
            if isinstance(item, Dropped):
                self.drops.add(item.reason, item.key)
                continue
            kept += 1
            self.kept += 1
            yield {"audio": item.pcm.astype(np.float32) / PCM_SCALE, "labels": item.labels}

    def report(self) -> dict[str, Any]:
        """What the stream did: samples read and decoded, kept, dropped by reason, passes started."""
        return {
            "streamed": True,
            "read": self.read,
            "kept": self.kept,
            "passes": self.passes,
            "dropped": self.drops.to_json(),
        }


def open_stream(spec: dict[str, Any], data: Any, tokenizer: Any) -> TrainStream:
    """The training stream of a job: its split, the run's filters and tokenizer (with the prefix)."""
    return TrainStream(SplitSpec(**spec), tokenizer, Filters.from_config(data), data.max_train_samples)
