"""A trained run opened once: the one place that opens a run for every command that predicts with it.

``Run.open(run_dir)`` (or a list of run folders: an ensemble whose probabilities are averaged, ``load_runs``)
gives the device, model, config, checkpoint and post-processing rule; ``run.cache(...)`` the cache it reads,
checked once (a readable index of this format, read in the run's channel order); ``run.split(name)`` a split's
volumes (``RUN/splits.json``); ``run.engine(...)`` the engine its windows go through, built once.
``evaluate``, ``tune-postprocessing``, ``report``, ``predict`` and the notebooks all open runs here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tumorlib.core.config import Config
from tumorlib.core.device import resolve_device
from tumorlib.inference.engines import Engine
from tumorlib.inference.postprocess import PostProcessing, run_postprocessing
from tumorlib.inference.predictor import inference_engine, load_runs, run_checkpoint

__all__ = ["Run"]


@dataclass
class Run:
    """A trained run, or an ensemble of runs, opened for prediction.

    Attributes:
        run_dirs: the run folders (one for a single run); the first gives the splits, the post-processing
            rule and the default output folder.
        device: where the model runs.
        model: the network in eval mode, or a ``RunEnsemble``.
        config: the (first) run's config.
        cache_dir, index: the cache ``cache`` resolved and checked (None before).
    """

    run_dirs: list[Path]
    device: torch.device
    model: torch.nn.Module
    config: Config
    cache_dir: Path | None = None
    index: dict[str, Any] | None = None
    _engines: dict[tuple[str, bool], Engine] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, run_dir: str | os.PathLike | Sequence[str | os.PathLike],
             device: str | torch.device | None = None) -> Run:
        """Load a run folder (or several: an ensemble) onto ``device`` (None: the one device rule).

        Raises:
            FileNotFoundError, ValueError: see ``tumorlib.inference.predictor.load_runs``.
        """
        dirs = [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else [Path(d) for d in run_dir]
        dev = resolve_device(device)
        model, config = load_runs(dirs, dev)
        return cls(dirs, dev, model, config)

    @property
    def run_dir(self) -> Path:
        """The first run's folder."""
        return self.run_dirs[0]

    @property
    def checkpoint(self) -> Path:
        """The first run's checkpoint (``RUN/checkpoints/best_model.pth``)."""
        return run_checkpoint(self.run_dir)

    @property
    def postprocessing(self) -> PostProcessing:
        """The run's rule (``RUN/postprocessing.json`` or the config), read anew: tuning may just have written it."""
        return run_postprocessing(self.run_dir, self.config)

    def cache(self, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
              progress: bool = False) -> Path:
        """The cache the run reads (``tumorlib.data.resolve.resolve_cache``: built first where needed), its
        index loaded and its channel order checked against the run's; kept as ``cache_dir`` and ``index``.

        Raises:
            CacheError: the folder holds other data, or its Kaggle channel order differs from the run's.
        """
        from tumorlib.data.cache import check_cache_order, load_cache_index
        from tumorlib.data.resolve import resolve_cache

        cache = Path(resolve_cache(self.config, data_dir, cache_dir, progress=progress))
        index = load_cache_index(cache)
        check_cache_order(cache, index, self.config.kaggle_channel_order)
        self.cache_dir, self.index = cache, index
        return cache

    def cached_ids(self) -> list[int]:
        """The volumes of the cache (``cache`` first)."""
        if self.index is None:
            raise RuntimeError("open the run's cache first (Run.cache)")
        return sorted(int(k) for k in self.index["volumes"])

    def split(self, name: str = "test", volume_ids: Sequence[int] | None = None) -> list[int]:
        """The volume ids of one split (``train``, ``val``, ``test`` or ``all``) of the run's cache, or
        ``volume_ids`` checked to be in it.

        Raises:
            ValueError: an unknown split, an empty one, or volumes that are not in the cache.
        """
        from tumorlib.data.splits import run_split

        cached = self.cached_ids()
        if volume_ids is None:
            ids = run_split(self.run_dir, self.config, cached, name)
        else:
            ids = [int(v) for v in volume_ids]
            missing = sorted(set(ids) - set(cached))
            if missing:
                raise ValueError(f"volumes {missing} are not in the cache {self.cache_dir}")
        if not ids:
            raise ValueError(f"the {name} split of {self.run_dir} is empty")
        return ids

    def engine(self, engine: str | Engine = "torch", amp: bool = True) -> Engine | tuple[Engine, ...]:
        """What runs the windows (``inference_engine``), built once per choice and precision switch."""
        if not isinstance(engine, str):
            return engine
        key = (engine, bool(amp))
        if key not in self._engines:
            self._engines[key] = inference_engine(self.model, self.config, engine, self.device, amp,
                                                  checkpoint=self.checkpoint)
        return self._engines[key]
