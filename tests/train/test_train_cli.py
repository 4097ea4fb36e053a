"""`polymodal train` turns config mistakes into one clear line and exit code 2."""
import yaml
from typer.testing import CliRunner

from polymodal.cli import app


def test_unknown_key_is_one_line_naming_key_and_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"recipe": "clip-tiny"}, "optim": {"learning_rate": 0.1}}))
    res = CliRunner().invoke(app, ["train", str(cfg)])
    assert res.exit_code == 2
    assert "optim.learning_rate" in res.output and str(cfg) in res.output and "Traceback" not in res.output


def test_bad_set_and_missing_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"recipe": "clip-tiny"}}))
    res = CliRunner().invoke(app, ["train", str(cfg), "--set", "optim.lr"])
    assert res.exit_code == 2 and "expected KEY=VALUE" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "no such config file" in res.output
    res = CliRunner().invoke(app, ["train", str(cfg)])
    assert res.exit_code == 2 and "data.train is missing" in res.output
