"""Two processes (DDP over gloo, started by torchrun) with per-process batch 4 give the loss
curve of one process with batch 8: the same global batches, averaged gradients, the same
schedule, and the ITC negatives gathered from both processes.

The models here have no dropout and no BatchNorm, which would (legitimately) make the two
runs draw different masks and batch statistics; with them the curves agree to float precision.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"

SCRIPT = f"""
import json, os, sys, torch
sys.path.insert(0, {str(HERE)!r})
torch.set_num_threads(1)
from _synthetic import records, collator
from polymodal.processing import Processor
from polymodal.train import train

VIT = {{"type": "vit", "config": {{"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 2, "intermediate_size": 128}}}}
BERT = {{"type": "hf_text", "pretrained": None, "pool": "cls", "config": {{"model_type": "bert", "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}}}}
GPT = {{"type": "gpt2", "config": {{"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 32,
       "add_cross_attention": True, "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0,
       "vocab_size": 30522, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}}}
PROC = {{"image": {{"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}}, "tokenizer": "minilm", "max_length": 16}}
batch_size, out = int(sys.argv[1]), sys.argv[2]
curves = {{}}
for name, task, spec in [("lm", "captioning", {{"type": "encoder_decoder", "vision": VIT, "decoder": GPT}}),
                         ("itc", "retrieval", {{"type": "dual_encoder", "vision": VIT, "text": BERT, "embed_dim": 32}})]:
    cfg = {{"task": task, "model": {{"spec": spec, "processor": PROC}},
           "optim": {{"lr": 1e-3, "max_steps": 6, "batch_size": batch_size, "warmup_steps": 2}},
           "checkpointing": {{"every": 0}}, "logging": {{"every": 1, "progress": False, "plot": False}},
           "output_dir": f"{{out}}/{{name}}", "precision": "no"}}
    res = train(cfg, train_records=records(task, 64, 0), collate_fn=collator(Processor.from_spec(PROC)))
    curves[name] = [r["loss"] for r in res.history if "loss" in r]
if int(os.environ.get("RANK", "0")) == 0:
    print("CURVES " + json.dumps(curves))
"""


def _curves(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("CURVES ")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(line[-1][len("CURVES "):])


def test_two_process_ddp_matches_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this Python")
    (tmp_path / "script.py").write_text(SCRIPT)
    one = _curves([sys.executable, "script.py", "8", "one"], tmp_path)
    two = _curves([str(torchrun), "--standalone", "--nproc_per_node", "2", "script.py", "4", "two"], tmp_path)
    for name in ("lm", "itc"):
        assert len(one[name]) == len(two[name]) == 6
        for a, b in zip(one[name], two[name]):
            assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (name, one[name], two[name])
    assert one["lm"][-1] < one["lm"][0]  # and it trained
