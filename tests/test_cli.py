"""Every CLI command on tiny settings, and bad input: one line naming the fix, exit code 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def cli(*args: str, block: str | None = None) -> subprocess.CompletedProcess:
    """Run `interplab ARGS` in a fresh interpreter (optionally with package `block` made unimportable)."""
    pre = f"import sys; sys.modules[{block!r}] = None; " if block else ""
    code = pre + "import sys; from interplab.cli import main; sys.argv = ['interplab', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_list_commands():
    r = cli("list", "subjects")
    assert r.returncode == 0, r.stderr
    for name in ("tms", "synthetic", "maxofk", "mlp", "smollm2", "hf:", "tiny-llama"):
        assert name in r.stdout
    r = cli("list", "experiments")
    assert r.returncode == 0
    for name in ("decompose", "superposition", "hypotheses", "estimators", "lpe"):
        assert name in r.stdout
    r = cli("list", "sites", "tiny-llama")
    assert r.returncode == 0 and "resid_post.1" in r.stdout and "mlp_hidden.0" in r.stdout


def test_prepare_harvest_run_and_cruxes(tmp_path):
    assert cli("prepare", "mlp", "--quiet").returncode == 0
    out = tmp_path / "acts"
    r = cli("harvest", "tms", "--site", "hidden", "--tokens", "300", "--out", str(out), "--shard-tokens", "128",
            "--set", "steps=200", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["complete"]
    r = cli("run", "superposition-intro", "--small", "--set", "steps=50", "--set", "seeds=1", "--out",
            str(tmp_path / "r"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r" / "results.json").is_file() and (tmp_path / "r" / "index.html").is_file()
    assert json.loads((tmp_path / "r" / "results.json").read_text())["config"]["steps"] == 50  # --set beats --small
    assert "report:" in r.stdout.strip().splitlines()[-1]
    r = cli("run", "superposition-intro", "--help-config")
    assert r.returncode == 0 and "steps" in r.stdout


@pytest.mark.slow
def test_cruxes_writes_an_index(tmp_path):
    r = cli("cruxes", "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "index.html").is_file()
    assert r.stdout.strip().splitlines()[-1].startswith("report: ")


@pytest.mark.parametrize(
    "args, needles",
    [
        (("list", "sites", "tmss"), ("unknown subject 'tmss'", "tms")),
        (("list", "nonsense"), ("cannot list 'nonsense'",)),
        (("run", "superposition-intr"), ("unknown experiment", "superposition-intro")),
        (("run", "superposition-intro", "--set", "stepz=3"), ("unknown config key 'stepz'", "steps")),
        (("run", "superposition-intro", "--set", "steps=many"), ("bad value for 'steps'",)),
        (("run", "superposition-intro", "--set", "steps"), ("key=value",)),
        (("run", "superposition-intro", "--config", "/nonexistent.toml"), ("does not exist",)),
        (("harvest", "mlp", "--site", "hiden.0", "--tokens", "10", "--out", "/tmp/x"), ("unknown site 'hiden.0'", "hidden.0")),
        (("harvest", "mlp", "--site", "out", "--tokens", "10", "--out", "/tmp/x", "--dtype", "f32"), ("dtype",)),
        (("harvest", "mlp", "--site", "out", "--tokens", "10", "--out", "/tmp/x", "--set", "width=-3"), ("width",)),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needles):
    assert_user_error(cli(*args), *needles)


def test_bad_config_file_and_corrupt_manifest(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("steps = = 3")
    assert_user_error(cli("run", "superposition-intro", "--config", str(bad)), "does not parse")
    (tmp_path / "acts").mkdir()
    (tmp_path / "acts" / "manifest.json").write_text("{not json")
    r = cli("harvest", "mlp", "--site", "out", "--tokens", "10", "--out", str(tmp_path / "acts"))
    assert_user_error(r, "manifest.json", "delete")


def test_missing_optional_package_names_the_install(tmp_path):
    r = cli("list", "sites", "tiny-llama", block="transformers")
    assert_user_error(r, "transformers", "pip install")
