# mean ± sd (sample sd, n-1) over seeds of the clean-test metrics of the noisy and filtered runs
import json, statistics as st, glob
keys = ["cider_d", "bleu_4", "meteor", "rouge_l", "chair_i", "chair_s", "object_recall"]
print("| train data | seeds | " + " | ".join(keys) + " |")
print("|---|---|" + "---|" * len(keys))
for d in ["noisy", "filtered"]:
    runs = [json.load(open(f))["metrics"] for f in sorted(glob.glob(f"/tmp/q2/eval-{d}-s*.json"))]
    cells = []
    for k in keys:
        v = [r[k] for r in runs]
        cells.append(f"{st.mean(v):.3f} ± {st.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}")
    print(f"| {d} | {len(runs)} | " + " | ".join(cells) + " |")
for d in ["noisy", "filtered"]:
    for f in sorted(glob.glob(f"/tmp/q2/eval-{d}-s*.json")):
        m = json.load(open(f))["metrics"]; print(f.split("/")[-1], round(m["cider_d"], 3), round(m["chair_i"], 3))
