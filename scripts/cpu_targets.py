"""The CPU targets (#34) on the machine it runs on: one full-size case with the full model (random weights),
--engine auto against torch float32, each warmed up, in one run; then auto with 8-flip TTA. The labels
agreement on a trained run: scripts/engine_agreement.py.

Usage: .venv/bin/python scripts/cpu_targets.py  (about 5 minutes on 2 cores)
"""
import time
import numpy as np
import torch
from tumorlib.core.config import get_config
from tumorlib.core.regions import Decoder
from tumorlib.inference.engines import make_engine
from tumorlib.inference.predictor import predict_volume
from tumorlib.nn.unet import model_from_config

print("torch threads", torch.get_num_threads(), flush=True)
config = get_config("full")
torch.manual_seed(0)
model = model_from_config(config).eval()
image = torch.randn(4, 155, 240, 240, generator=torch.Generator().manual_seed(0))
patch, b = config.patch_size, config.sw_batch_size
engines = {}
for name, (eng, prec) in {"auto": ("auto", "auto"), "torch float32": ("torch", "float32")}.items():
    t = time.perf_counter()
    e = make_engine(model, eng, "cpu", prec, patch, b)
    e(torch.randn(b, 4, *patch))  # warm: compiled, first call done
    engines[name] = e
    print(f"{name}: {e.name} {e.precision}, set-up + first call {time.perf_counter() - t:.1f} s", flush=True)
times, probs = {}, {}
for name, e in engines.items():
    t = time.perf_counter()
    probs[name] = predict_volume(model, image, config, "cpu", tta=False, engine=e)
    times[name] = time.perf_counter() - t
    print(f"full case 155x240x240, no TTA, {name}: {times[name]:.1f} s", flush=True)
print(f"auto is {times['torch float32'] / times['auto']:.2f}x torch float32", flush=True)
dec = Decoder.of(config)
la, lt = dec.labels(probs["auto"]), dec.labels(probs["torch float32"])
print(f"random weights: labels equal {100 * (la == lt).mean():.3f} %", flush=True)
t = time.perf_counter()
predict_volume(model, image, config, "cpu", tta=True, engine=engines["auto"])
print(f"full case, 8-flip TTA, auto: {time.perf_counter() - t:.1f} s", flush=True)
