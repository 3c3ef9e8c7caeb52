"""Resumable evaluation: per-sample results of each (model, attack, images) point, saved as they come.

AutoAttack on a thousand images takes minutes to hours; a crash, a pre-emption or the end of a session must
not throw that away. An :class:`EvalState` folder holds one file per point, keyed by everything the result
depends on (the weights' checksum, the attack's settings, the images, the seed, the batch size), written
atomically as batches finish, and within a batch as a staged attack (AutoAttack, part by part) reports its
progress (:class:`~agkd_bml.attacks.base.Progress`). Each batch is seeded by its own index, so a rerun that
skips finished points and continues an unfinished one at its next batch gets exactly an uninterrupted run's
result. A file whose key differs from the point asked for is never used: asking for a point under other
settings makes a new file, and a file that does not match its own name is refused. """

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agkd_bml import distributed
from agkd_bml.errors import UserError
from agkd_bml.fileio import atomic_write, hold_lock, release_lock
from agkd_bml.provenance import tensor_digest

#: Save an unfinished point at most this often (seconds); every batch of a slow attack is saved.
SAVE_EVERY_S = 30.0


def model_digest(model: nn.Module) -> str:
    """The checksum of a model's parameters and buffers (what its predictions depend on)."""
    return tensor_digest(*model.state_dict().values())


class NotSaved(UserError):
    """A point asked of a read-only :class:`EvalState` (``saved_only``) that is not saved finished."""


@dataclass(kw_only=True)
class Point:
    """The saved progress of one (model, attack, images) point."""

    key: dict[str, Any]
    batches: list[torch.Tensor] = field(default_factory=list)  #: per-sample results of finished batches
    done: bool = False
    #: per finished batch, what a cascade's parts broke in it (``AutoAttack.fooled_by``); empty for others
    tallies: list[dict[str, int]] = field(default_factory=list)
    #: the unfinished batch after ``batches``: ``{"batch": index, "progress": what the attack reported}``
    partial: dict[str, Any] | None = None


class EvalState:
    """A folder of :class:`Point` files (one per point, named by the hash of its key).

    ``settings`` (the command's eps, images, seed, batch size...) are written to ``settings.json`` on first
    use; a later evaluation with other settings is refused with a one-line error rather than left to fill the
    folder with points no table of the first one would read. Other attacks or models with the same settings
    share the folder (finished points are reused). With ``saved_only``, it hands out finished points only and
    raises :class:`NotSaved` for any other, so a table can show what another process has already computed
    without computing anything itself. """

    def __init__(self, folder: str | Path, settings: dict[str, Any] | None = None, *,
                 saved_only: bool = False) -> None:
        self.folder = Path(folder)
        self.saved_only = saved_only
        self._saved_at: dict[str, float] = {}
        #: the settings of a new folder, written with its first point (no folder before there is work to keep)
        self._new_settings: dict[str, Any] | None = None
        if settings is not None:
            self._check_settings(json.loads(json.dumps(settings)))

    def _check_settings(self, settings: dict[str, Any]) -> None:
        path = self.folder / "settings.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"evaluation state {path} cannot be read ({exc}); delete the folder or use "
                                "another --state") from exc
            def shown(v: Any) -> str:
                return "default" if v is None else repr(v)

            diff = [f"{k} {shown(saved.get(k))} (now {shown(settings.get(k))})"
                    for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
            if diff:
                raise UserError(f"evaluation state {self.folder} was written with other settings: "
                                f"{', '.join(diff)}; use another --state / --out, or delete it to start over")
            return
        self._new_settings = settings

    def _path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.folder / f"{digest}.pt"

    def load(self, key: dict[str, Any]) -> Point:
        """The saved progress of ``key`` (empty when none is saved).

        An unfinished point is locked for this process until :meth:`save` finishes it: two processes computing
        the same (model, attack) point into one folder would overwrite each other's progress, so the second is
        refused with a line naming the first. Different points of one folder may be computed in parallel
        (``reproduce capacity --only`` does).
        """
        point = self._load(key)
        if not (self.saved_only or point.done) and distributed.current().main:
            path = self._path(key)
            attack = key.get("attack")
            name = attack.get("name", "clean") if isinstance(attack, dict) else attack
            hold_lock(path.with_suffix(".lock"), f"the evaluation of {name} in {self.folder}")
        return point

    def _load(self, key: dict[str, Any]) -> Point:
        path = self._path(key)
        if not path.exists():
            if self.saved_only:
                raise NotSaved(f"no saved result in {self.folder} for attack {key.get('attack')!r}")
            return Point(key=key)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            saved = json.loads(raw["key"])
        except Exception as exc:  # a torn or foreign file: name it rather than guess
            raise UserError(f"evaluation state {path} cannot be read ({exc}); delete it to recompute that "
                            "point") from exc
        if saved != json.loads(json.dumps(key)):
            raise UserError(f"evaluation state {path} was written with other settings; delete it or use "
                            "another --state")
        if self.saved_only and not raw["done"]:
            raise NotSaved(f"the saved result {path} is not finished")
        return Point(key=key, batches=list(raw["batches"]), done=bool(raw["done"]),
                     tallies=list(raw.get("tallies", [])), partial=raw.get("partial"))

    def save(self, point: Point, *, force: bool = False) -> None:
        """Write ``point`` atomically (unfinished points at most every
        :data:`SAVE_EVERY_S` unless ``force``)."""
        path = self._path(point.key)
        now = time.monotonic()
        if not (force or point.done) and now - self._saved_at.get(str(path), 0.0) < SAVE_EVERY_S:
            return
        if self._new_settings is not None:
            settings, self._new_settings = self._new_settings, None
            atomic_write(self.folder / "settings.json",
                         lambda f: f.write(json.dumps(settings, sort_keys=True).encode()))
        buf = io.BytesIO()
        torch.save({"key": json.dumps(point.key, sort_keys=True), "batches": point.batches,
                    "done": point.done,
                    "tallies": point.tallies, "partial": point.partial}, buf)
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        self._saved_at[str(path)] = now
        if point.done:
            release_lock(path.with_suffix(".lock"))
