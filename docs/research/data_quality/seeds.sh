# noisy vs filtered: the same captioning recipe (configs/shapes/quality-captioner.yaml, 600 steps x 64),
# seeds 0/1/2, evaluated on the CLEAN w11 test split. One run at a time.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/quality2/src
P=/work/main/.venv/bin/polymodal
cd /work/quality2
for s in 0 1 2; do
  for d in filtered noisy; do
    if [ $d = noisy ]; then T=jsonl:/tmp/q/n11/noisy.jsonl; else T=jsonl:/tmp/q2/filtered.jsonl; fi
    if [ $d = noisy ] && [ $s = 0 ]; then R=/tmp/q/runs/captioner; else
      R=/tmp/q2/runs/$d-s$s
      /usr/bin/time -f "$d s$s train %e s" $P train configs/shapes/quality-captioner.yaml --set seed=$s --set data.train=$T -o $R > /tmp/q2/train-$d-s$s.log 2>&1
    fi
    /usr/bin/time -f "$d s$s eval %e s" $P eval --model $R/step-000600 --data /tmp/q/w11 --task captioning --split test --out /tmp/q2/eval-$d-s$s.json --json > /dev/null
    echo done $d $s $(date)
  done
done
