export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/quality2/src
P=/work/main/.venv/bin/polymodal
d=/tmp/q2/s100k
/usr/bin/time -f "$d dedup %e s, peak %M KB" $P data dedup jsonl:$d/noisy.jsonl --out /tmp/q2/s100k.dedup.json --no-progress --json | cut -c1-400
$P data measure-quality $d/truth.json --dedup /tmp/q2/s100k.dedup.json --json | cut -c1-600
