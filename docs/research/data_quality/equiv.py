# the vectorised aligned_cosine against the loop it replaces, on real candidate pairs of the 10k manifest
import importlib.util, json, time, numpy as np, sys
sys.path.insert(0, "/work/quality2/src")
from polymodal.data import quality as new
spec = importlib.util.spec_from_file_location("old", "/tmp/q2/quality_old.py"); old = importlib.util.module_from_spec(spec); sys.modules["old"] = old; spec.loader.exec_module(old)
from PIL import Image
recs = [json.loads(l) for l in open("/tmp/q/s10k/noisy.jsonl")][:600]
can = []
for r in recs:
    try: can.append(new.canonical(Image.open(r["image"]).convert("RGB")))
    except Exception: pass
can = np.stack(can); rng = np.random.default_rng(0)
i, j = rng.integers(0, len(can), 3000), rng.integers(0, len(can), 3000)
a, b = can[i], can[j]
b[:200] = np.roll(a[:200], 3, axis=2)        # shifted copies
t = time.time(); o = old.aligned_cosine(a, b); t1 = time.time() - t
t = time.time(); n = new.aligned_cosine(a, b); t2 = time.time() - t
print("pairs", len(a), "max abs diff", float(np.abs(o - n).max()), "old s", round(t1, 2), "new s", round(t2, 2))
