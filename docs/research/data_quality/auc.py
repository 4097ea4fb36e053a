# ROC AUC of a scores column against truth.json's swapped records (lower value = more likely swapped)
import json, sys
from sklearn.metrics import roc_auc_score
truth, scores, field = sys.argv[1:4]
sw = {s["id"] for s in json.load(open(truth))["swapped"]}
rows = [r for r in map(json.loads, open(scores)) if r.get(field) is not None]
print(field, round(roc_auc_score([r["id"] in sw for r in rows], [-r[field] for r in rows]), 4))
