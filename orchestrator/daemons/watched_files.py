"""What a watcher reads from disk every tick, read again only when it changed.

Each tick looks at config.pbtxt and the model folder (the resident versions), labels.json,
paused.json and the journal. Between switches none of them changes, so one ``stat`` per file
stands in for reading and parsing it (``store/file_keys.py``): parsing config.pbtxt with protobuf's
text format alone took a quarter of the watcher's CPU.
"""

from __future__ import annotations

from orchestrator.store.file_keys import Cached, Keys
from orchestrator.store.labels import LABELS_FILE, read_labels
from orchestrator.store.modelconfig import CONFIG_FILE
from orchestrator.store.pause import PAUSE_FILE, pause_in_effect
from orchestrator.store.repository import ModelStore


class WatchedFiles:
    """One model's per-tick reads: the same answers as the store's, from a stat when nothing changed."""

    def __init__(self, store: ModelStore) -> None:
        self.resident = Cached(store.resident, store.folder / CONFIG_FILE, store.folder)
        self.labels = Cached(lambda: read_labels(store.state), store.state / LABELS_FILE)
        self.pause = Cached(lambda: pause_in_effect(store.state), store.state / PAUSE_FILE)
        self._journal = Keys(store.journal.path)

    def journal_changed(self) -> bool:
        """Whether the journal's live file changed since the last call that said so (an append, a rotation)."""
        changed, keys = self._journal.changed()
        if changed:
            self._journal.remember(keys)
        return changed
