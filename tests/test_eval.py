"""`interplab eval`: an SAE saved by SAELens, sparsify or interplab scored on the yardstick beside PCA and
the built-in SAE; its numbers are exactly `interplab.metrics.evaluate`'s; bad input is one line, exit 2."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_cli import assert_user_error, cli

from interplab.decompose import create, load
from interplab.decompose.sparsify import load_sparsify
from interplab.errors import UserError
from interplab.experiments.eval_sae import EvalConfig, evaluate_folder, load_folder
from interplab.metrics import evaluate
from interplab.metrics.loss_curve import default_ns
from interplab.store import harvest_rows
from interplab.subjects import load_subject

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saelens"  # in the repo: never skipped
TINY = {"d_model": 16, "seq_len": 32}  # the SAELens fixtures read d_in = 16
SITE = "resid_post.0"
FAST = {"train_tokens": 1024, "n_batches": 2, "batch_size": 4, "n_boot": 50, "sae_steps": 60, "loss_curve": False}
CURVE = {"loss_curve": True, "curve_rank_batches": 1, "curve_singles": 4}  # on where a test reads the curves

pytestmark = pytest.mark.usefixtures("quiet_single_thread")


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`interplab ARGS` in this process (what the console script runs): exit code, stdout, stderr."""
    from interplab.cli import main

    monkeypatch.setattr(sys, "argv", ["interplab", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny():
    return load_subject("tiny-llama", **TINY)


def _cfg(**over) -> EvalConfig:
    return EvalConfig(subject="tiny-llama", subject_config=TINY, site=SITE, **{**FAST, **over})


def _same(got: dict, want: dict) -> None:
    """Every headline number and CI of `evaluate` equals the one eval wrote (JSON turns NaN to None)."""
    for key, value in want.items():
        if key in ("ci", "details"):
            continue
        assert (got[key] is None and math.isnan(value)) or got[key] == value, key
    assert got["ci"] == json.loads(json.dumps(want["ci"]))


def _fixture(name: str) -> Path:
    path = FIXTURES / name
    assert path.is_dir(), f"SAELens fixture {path} is missing from the repository"
    return path


def test_saelens_fixture_beside_baselines(tmp_path, tiny):
    path = _fixture("topk")
    result = evaluate_folder(path, _cfg(**CURVE), tmp_path / "run")
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    scores = data["metrics"]["scores"]
    assert list(scores) == ["topk", "pca", "sae-topk"]
    setup = data["metrics"]["setup"]
    assert setup["topk"]["k"] == 4 and setup["pca"]["k"] == 4 and setup["sae-topk"]["k"] == 4  # the fixture's L0
    assert setup["sae-topk"]["n_components"] == 64  # as wide as the SAE under test
    for name in scores:
        assert scores[name]["l0"] <= 4 + 1e-9  # every method at the same budget
    want = evaluate(load(path), tiny, SITE, n_batches=2, batch_size=4, seed=0, n_boot=50)
    _same(scores["topk"], want)
    assert {"fvu", "ce_score_mean", "delta_ce_nats", "kl_score", "bits_per_token", "interp_score"} <= set(want)
    assert (tmp_path / "run" / "index.html").is_file() and (tmp_path / "run" / "figures" / "yardstick.png").is_file()
    assert data["key_figure"] == "yardstick" and result.tables["yardstick"]["columns"] == ["metric", *scores]
    curves = data["metrics"]["loss_curve"]  # every method on the loss curve, on the same inputs
    assert list(curves) == list(scores) and (tmp_path / "run" / "figures" / "loss_curve.png").is_file()
    for name, c in curves.items():
        assert c["ns"] == default_ns(setup[name]["n_components"]) and c["width"] == setup[name]["n_components"]
        assert all(math.isfinite(v) for v in c["frac_mean"]) and len(c["frac_mean_ci"]) == len(c["ns"])
        assert c["loss_clean"] == curves["pca"]["loss_clean"]  # paired: the same scoring batches
    assert "50% / 90%" in data["summary"]
    off = evaluate_folder(path, _cfg(baselines=False), tmp_path / "off")
    assert "loss_curve" not in off.metrics and "loss_curve" not in off.figures


@pytest.mark.parametrize("arch", ["standard", "jumprelu"])
def test_other_saelens_architectures(arch, tmp_path, tiny):
    path = _fixture(arch)
    evaluate_folder(path, _cfg(baselines=False), tmp_path / arch)
    got = json.loads((tmp_path / arch / "results.json").read_text())["metrics"]["scores"][arch]
    _same(got, evaluate(load(path), tiny, SITE, n_batches=2, batch_size=4, seed=0, n_boot=50))


def _sparsify_folder(root: Path, d_in: int = 16, m: int = 48, k: int = 5, **cfg) -> dict[str, torch.Tensor]:
    """A folder as sparsify's SparseCoder.save_to_disk writes it: cfg.json and the module's state dict."""
    g = torch.Generator().manual_seed(1)
    state = {"encoder.weight": torch.randn(m, d_in, generator=g) / 4, "encoder.bias": torch.randn(m, generator=g) / 10,
             "W_dec": torch.randn(m, d_in, generator=g) / 4, "b_dec": torch.randn(d_in, generator=g) / 10}
    root.mkdir(parents=True)
    save_file(state, str(root / "sae.safetensors"))
    fields = {"activation": "topk", "expansion_factor": 3, "normalize_decoder": True, "num_latents": m, "k": k,
              "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d_in, **cfg}
    (root / "cfg.json").write_text(json.dumps(fields))
    return state


def _sparsify_reference(state: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """sparsify's own inference, written out: ReLU of the encoder on x - b_dec, top k, decode."""
    pre = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])  # (n, m)
    top = pre.topk(k, dim=-1)
    codes = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)  # (n, m)
    return codes @ state["W_dec"] + state["b_dec"]  # (n, d)


def test_sparsify_folder_encodes_as_sparsify(tmp_path, tiny):
    state = _sparsify_folder(tmp_path / "ckpt" / "layers.0", k=5)
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(2))
    dec = load_sparsify(tmp_path / "ckpt" / "layers.0")
    torch.testing.assert_close(dec.forward(x).recon, _sparsify_reference(state, x, 5), rtol=1e-5, atol=1e-6)
    assert int((dec.transform(x) != 0).sum(1).max()) <= 5
    with pytest.raises(UserError, match="1 hookpoints .*layers.0"):
        load_folder(tmp_path / "ckpt")
    evaluate_folder(tmp_path / "ckpt" / "layers.0", _cfg(baselines=False), tmp_path / "run")
    got = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert got["setup"]["layers.0"]["format"] == "sparsify"
    _same(got["scores"]["layers.0"], evaluate(dec, tiny, SITE, n_batches=2, batch_size=4, seed=0, n_boot=50))


@pytest.mark.parametrize("cfg, needle", [({"activation": "groupmax"}, "groupmax"), ({"transcode": True}, "transcoder"),
                                         ({"k": 0}, "positive integer k")])
def test_sparsify_folders_interplab_does_not_read(tmp_path, cfg, needle):
    _sparsify_folder(tmp_path / "sae", **cfg)
    with pytest.raises(UserError, match=needle):
        load_folder(tmp_path / "sae")


def test_interplab_saved_sae_through_the_cli(tmp_path, tiny, monkeypatch, capsys):
    rows = harvest_rows(tiny, [SITE], 1024, 0, 16, cached=False)[SITE]  # (1024, 16)
    create("sae-topk", k=3, width=32, steps=60, seed=0).fit(rows).save(tmp_path / "mine")
    out = tmp_path / "run"
    r = cli("eval", str(tmp_path / "mine"), "--subject", "tiny-llama", "--site", SITE, "--set", "d_model=16",
            "--set", "seq_len=32", "--tokens", "1024", "--batches", "2", "--batch-size", "4", "--boot", "50",
            "--no-baselines", "--no-loss-curve", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "loss_curve" not in json.loads((out / "results.json").read_text())["metrics"]  # the flag reached EvalConfig
    assert r.stdout.strip().splitlines()[-1] == f"report: {(out / 'index.html').resolve()}"
    got = json.loads((out / "results.json").read_text())["metrics"]["scores"]["mine"]
    _same(got, evaluate(load(tmp_path / "mine"), tiny, SITE, n_batches=2, batch_size=4, seed=0, n_boot=50))
    # `interplab report` rebuilds the page from results.json, and writes the Markdown table
    (out / "index.html").unlink()
    code, stdout, err = run_main(monkeypatch, capsys, "report", str(out))
    assert code == 0 and (out / "index.html").is_file() and stdout.startswith("report: "), err


def test_report_markdown_to_stdout_and_file(tmp_path, monkeypatch, capsys):
    from cruxes_fixture import write_cruxes_run

    _, n = write_cruxes_run(tmp_path / "cruxes")
    code, out, err = run_main(monkeypatch, capsys, "report", str(tmp_path / "cruxes"), "--format", "md", "--out", "-")
    assert code == 0 and err == "" and out.startswith("# Verdicts of cruxes")
    assert sum(1 for ln in out.splitlines() if ln.startswith("| ") and "experiment |" not in ln) == n
    code, out, _ = run_main(monkeypatch, capsys, "report", str(tmp_path / "cruxes"), "--format", "md")
    assert code == 0 and (tmp_path / "cruxes" / "verdicts.md").is_file() and out.startswith("markdown: ")
    code, out, _ = run_main(monkeypatch, capsys, "report", str(tmp_path / "cruxes"))
    assert code == 0 and (tmp_path / "cruxes" / "index.html").is_file()
    assert (tmp_path / "cruxes" / "lpe" / "index.html").is_file()  # every experiment's page too


def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    fixture = str(_fixture("topk"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    base = ["--subject", "tiny-llama", "--site", SITE]
    assert_user_error(cli("eval", fixture, *base), "d_in=16", "width 64")  # the console script: exit 2, one line
    cases = [
        (("eval", str(tmp_path / "missing"), *base), ("does not exist",)),
        (("eval", str(tmp_path / "empty"), *base), ("holds no SAE", "cfg.json")),
        (("eval", str(tmp_path / "file"), *base), ("is a file",)),
        (("eval", fixture, "--subject", "tiny-llama", "--site", "resid_pots.0", "--set", "d_model=16"),
         ("unknown site 'resid_pots.0'", "resid_post.0")),
        (("eval", fixture, "--subject", "tiny-lama", "--site", SITE), ("unknown subject", "tiny-llama")),
        (("report", str(tmp_path / "empty")), ("neither results.json nor cruxes.json",)),
        (("report", str(tmp_path / "missing")), ("is not a folder",)),
        (("report", fixture, "--format", "pdf"), ("--format must be",)),
    ]
    for args, needles in cases:
        code, out, err = run_main(monkeypatch, capsys, *args)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert all(n in lines[0] for n in needles), lines[0]
