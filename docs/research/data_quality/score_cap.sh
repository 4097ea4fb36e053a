set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/quality2/src
P=/work/main/.venv/bin/polymodal
M=/tmp/q/runs/captioner/step-000600
for d in n11val n11test n11; do
  /usr/bin/time -f "$d score %e s" $P data score jsonl:/tmp/q/$d/noisy.jsonl --model $M --out /tmp/q2/$d.cap.jsonl --no-progress --json
done
