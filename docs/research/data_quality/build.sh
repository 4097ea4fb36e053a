export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/quality2/src
P=/work/main/.venv/bin/polymodal
/usr/bin/time -f "build s15k %e s" $P data corrupt jsonl:/tmp/q/s10k/noisy.jsonl --out /tmp/q2/s15k --swap 0 --duplicates 0.5 --broken 0 --seed 6 --json
/usr/bin/time -f "build s30k %e s" $P data corrupt jsonl:/tmp/q2/s15k/noisy.jsonl --out /tmp/q2/s30k --swap 0 --duplicates 0.99 --broken 0 --seed 7 --json
