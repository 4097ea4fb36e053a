export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/quality2/src
P=/work/main/.venv/bin/polymodal
/usr/bin/time -f "build s60k %e s" $P data corrupt jsonl:/tmp/q2/s30k/noisy.jsonl --out /tmp/q2/s60k --swap 0 --duplicates 0.99 --broken 0 --seed 8 --json
/usr/bin/time -f "build s100k %e s" $P data corrupt jsonl:/tmp/q2/s60k/noisy.jsonl --out /tmp/q2/s100k --swap 0 --duplicates 0.6835 --broken 0 --seed 9 --json
