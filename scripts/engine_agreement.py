"""Labels of --engine auto vs torch float32 on a trained run's test volumes (no TTA and 8-flip TTA).

Usage: .venv/bin/python scripts/engine_agreement.py RUN CACHE
"""
import sys, time
import numpy as np
import torch
from tumorlib.core.regions import Decoder
from tumorlib.data.cache import load_cached_volume
from tumorlib.inference.engines import make_engine
from tumorlib.inference.predictor import predict_volume
from tumorlib.inference.run import Run

run = Run.open(sys.argv[1], "cpu")
run.cache(None, sys.argv[2], progress=False)
ea = run.engine("auto")
et = make_engine(run.model, "torch", "cpu", "float32", run.config.patch_size, run.config.sw_batch_size)
print(f"trained run {sys.argv[1]}: auto = {ea.name} {ea.precision}", flush=True)
rd = Decoder.of(run.config)
for tta in (False, True):
    eq = n = 0; ta = tt = 0.0
    for vid in run.split("test"):
        img, _ = load_cached_volume(run.cache_dir, vid, index=run.index)
        img = torch.from_numpy(np.asarray(img, np.float32))
        t = time.perf_counter(); a = rd.labels(predict_volume(run.model, img, run.config, "cpu", tta=tta, engine=ea)); ta += time.perf_counter() - t
        t = time.perf_counter(); b = rd.labels(predict_volume(run.model, img, run.config, "cpu", tta=tta, engine=et)); tt += time.perf_counter() - t
        eq += int((a == b).sum()); n += a.size
    print(f"tta={tta}: labels equal {100 * eq / n:.4f} % of {n} voxels; auto {ta:.1f} s, torch float32 {tt:.1f} s "
          f"({tt / ta:.2f}x)", flush=True)
