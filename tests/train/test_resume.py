"""A run killed with SIGKILL mid-run and resumed ends with the weights of an uninterrupted run.

The killed run is a real subprocess that kills itself at a fixed point: while collating a
micro-batch half-way between two checkpoints, in the middle of a gradient accumulation. No
timing is involved, so the test means the same on a fast and a slow machine. Dropout (GPT-2),
BatchNorm statistics (conv stem), gradient accumulation and the data order all have to be
restored for the weights to agree.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from _helpers import processor_for, run_config
from _synthetic import collator, records
from polymodal.train import train

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"
STEPS, EVERY = 24, 6
# The collator's calls: 1 to check a batch, 1 for the dry step, then one per micro-batch (2 per
# step). Call 2 + 17 collates micro-batch 17: step 9 of 24, after the checkpoint of step 6.
KILL_AT_CALL = 2 + 17

SCRIPT = f"""
import sys, torch
sys.path.insert(0, {str(HERE)!r})
torch.set_num_threads(1)
from _helpers import run_config, processor_for
from _synthetic import records, collator
from polymodal.train import train
import os, signal
collate, calls = collator(processor_for("captioner-tiny")), [0]

def collate_then_die(items):
    calls[0] += 1
    if calls[0] == {KILL_AT_CALL}:
        os.kill(os.getpid(), signal.SIGKILL)
    return collate(items)

train(run_config("captioner-tiny", "captioning", sys.argv[1], steps={STEPS}, lr=1e-3, batch_size=8,
                 optim={{"grad_accum": 2}}, checkpointing={{"every": {EVERY}, "keep_last": 2}},
                 logging={{"every": 1}}),
      train_records=records("captioning", 96, 0), collate_fn=collate_then_die)
"""


def _train(out, resume=False):
    cfg = run_config("captioner-tiny", "captioning", out, steps=STEPS, lr=1e-3, batch_size=8, optim={"grad_accum": 2},
                     checkpointing={"every": EVERY, "keep_last": 2}, logging={"every": 1})
    return train(cfg, resume=resume, train_records=records("captioning", 96, 0),
                 collate_fn=collator(processor_for("captioner-tiny")))


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    straight = _train(tmp_path / "straight")

    killed_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(killed_dir)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    done = sorted(p.name for p in killed_dir.glob("step-*"))
    assert done == [f"step-{EVERY:06d}"], done  # killed after the first checkpoint, before the second
    assert (killed_dir / "metrics.jsonl").read_text().count('"step": 8,') == 1  # it trained on past it

    resumed = _train(killed_dir, resume=True)
    assert resumed.step == STEPS

    a = load_file(str(straight.last_checkpoint / "model.safetensors"))
    b = load_file(str(resumed.last_checkpoint / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-5, f"weights differ by {worst} after resuming from {sorted(done)}"
    # ... and so does every training loss logged after the resumed checkpoint.
    la = {r["step"]: r["loss"] for r in straight.history if "loss" in r}
    lb = {r["step"]: r["loss"] for r in resumed.history if "loss" in r}
    assert sorted(lb) == list(range(1, STEPS + 1))  # the killed run's rows past the checkpoint are dropped
    for s in la:
        assert abs(la[s] - lb[s]) < 1e-4, (s, la[s], lb[s])
    state = json.loads((resumed.last_checkpoint / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["samples"] == STEPS * 16


def test_resume_restores_optimizer_and_schedule(tmp_path):
    """Resuming at the last checkpoint of a finished run changes nothing; the schedule continues."""
    first = _train(tmp_path / "run")
    opt = torch.load(first.last_checkpoint / "optimizer.pt", weights_only=True)
    assert opt["state"], "the optimizer state (AdamW moments) is saved"
    sched = torch.load(first.last_checkpoint / "scheduler.pt", weights_only=True)
    assert sched["last_epoch"] == STEPS
    ckpts = sorted(p.name for p in (tmp_path / "run").glob("step-*"))
    assert ckpts == [f"step-{STEPS - EVERY:06d}", f"step-{STEPS:06d}"]  # keep_last: 2
    again = _train(tmp_path / "run", resume=True)
    assert again.step == STEPS
