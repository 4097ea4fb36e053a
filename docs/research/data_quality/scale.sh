# scaling of dedup (defaults) and score (the captioner scorer) at 10k / 30k / 100k records
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/quality2/src
P=/work/main/.venv/bin/polymodal
M=/tmp/q/runs/captioner/step-000600
for d in /tmp/q/s10k /tmp/q2/s30k; do
  /usr/bin/time -f "$d dedup %e s, peak %M KB" $P data dedup jsonl:$d/noisy.jsonl --out /tmp/q2/$(basename $d).dedup.json --no-progress --json | cut -c1-400
  $P data measure-quality $d/truth.json --dedup /tmp/q2/$(basename $d).dedup.json --json | cut -c1-600
  /usr/bin/time -f "$d score %e s, peak %M KB" $P data score jsonl:$d/noisy.jsonl --model $M --out /tmp/q2/$(basename $d).cap.jsonl --no-progress --json | cut -c1-300
done
while [ ! -f /tmp/q2/s100k/truth.json ]; do sleep 5; done
d=/tmp/q2/s100k
/usr/bin/time -f "$d dedup %e s, peak %M KB" $P data dedup jsonl:$d/noisy.jsonl --out /tmp/q2/s100k.dedup.json --no-progress --json | cut -c1-400
$P data measure-quality $d/truth.json --dedup /tmp/q2/s100k.dedup.json --json | cut -c1-600
