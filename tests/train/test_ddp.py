"""Two processes (DDP over gloo, started by torchrun) with per-process batch 4 give the loss
curve of one process with batch 8: the same global batches, averaged gradients, the same
schedule, and the ITC negatives gathered from both processes. Gradient accumulation 2 x 4
gives it too.

The models here have no dropout and no BatchNorm, which would (legitimately) make the runs
draw different masks and batch statistics; without them the curves agree to float precision.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _synthetic import NO_DROPOUT, PROCESSOR, collator, exact_config, records
from polymodal.processing import Processor
from polymodal.train import train

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"

SCRIPT = f"""
import json, os, sys, torch
sys.path.insert(0, {str(HERE)!r})
torch.set_num_threads(1)
from _synthetic import NO_DROPOUT, PROCESSOR, collator, exact_config, records
from polymodal.processing import Processor
from polymodal.train import train

batch_size, out = int(sys.argv[1]), sys.argv[2]
curves = {{}}
for name, (task, _) in NO_DROPOUT.items():
    res = train(exact_config(name, f"{{out}}/{{name}}", batch_size), train_records=records(task, 64, 0),
                collate_fn=collator(Processor.from_spec(PROCESSOR)))
    curves[name] = [r["loss"] for r in res.history if "loss" in r]
if int(os.environ.get("RANK", "0")) == 0:
    print("CURVES " + json.dumps(curves))
"""


def _curves(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    # A session of its own: on a hang, the launcher and its workers are killed together.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    line = [x for x in stdout.splitlines() if x.startswith("CURVES ")]
    assert line, stdout[-2000:] + stderr[-2000:]
    return json.loads(line[-1][len("CURVES "):])


def _close(a, b, what):
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (what, a, b)


def _one_process(tmp_path, batch_size, grad_accum=1):
    curves = {}
    for name, (task, _) in NO_DROPOUT.items():
        res = train(exact_config(name, tmp_path / f"{name}-{batch_size}x{grad_accum}", batch_size, grad_accum),
                    train_records=records(task, 64, 0), collate_fn=collator(Processor.from_spec(PROCESSOR)))
        curves[name] = [r["loss"] for r in res.history if "loss" in r]
    return curves


def test_two_process_ddp_matches_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this Python")
    (tmp_path / "script.py").write_text(SCRIPT)
    one = _one_process(tmp_path, 8)
    two = _curves([str(torchrun), "--standalone", "--nproc_per_node", "2", "script.py", "4", "two"], tmp_path)
    for name in NO_DROPOUT:
        _close(one[name], two[name], name)
    assert one["lm"][-1] < one["lm"][0]  # and it trained


def test_gradient_accumulation_matches_one_bigger_batch(tmp_path):
    """Only for the LM: ITC over two micro-batches of 4 sees fewer negatives than over 8, by design."""
    one = _one_process(tmp_path, 8)
    accumulated = _one_process(tmp_path, 4, grad_accum=2)
    _close(one["lm"], accumulated["lm"], "lm")
