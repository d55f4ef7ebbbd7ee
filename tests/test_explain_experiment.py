"""The explanations experiment end to end on tiny settings: results, ledgers, and the controls' verdicts."""

from __future__ import annotations

import json

from interplab.experiments import run_experiment

TINY = {"seeds": 3, "vocab": 16, "steps": 400, "large_k": 5, "large_seeds": 1, "large_brute": 1, "prior_models": 2,
        "control_vocab": 16}


def test_explanations_runs_and_its_controls_come_out_right(tmp_cache, tmp_path, quiet_single_thread):
    run_experiment("explanations", TINY, tmp_path / "out", scale="small")
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    by = {v["crux"]: v for v in data["verdicts"]}
    for crux in ("explain-mechanism", "explain-heuristic", "explain-surprise"):
        controls = by[crux]["controls"]
        assert controls["positive"]["verdict"] == "supported", (crux, controls)
        assert controls["negative"]["verdict"] != "supported", (crux, controls)
        assert by[crux]["status"] == "counted"
    assert by["explain-sound"]["status"] == "harness check" and by["explain-sound"]["statistic"] <= 0
    model = data["metrics"]["models"]["k4_s0"]
    ledgers = model["ledgers"]["explanations"]
    assert set(ledgers) == {"no explanation", "brute force", "cubic", "subcubic", "subcubic-rank1", "independence"}
    for lg in ledgers.values():  # every bit is auditable: the lines add up to the total
        assert abs(sum(line["bits"] for line in lg["lines"]) + lg["behaviour_bits"] - lg["total_bits"]) < 1e-6
    assert data["metrics"]["models"]["k5_s0"]["truth"] is not None  # brute force at the larger k too
    assert {"proofs", "surprise"} <= set(data["tables"]) and (tmp_path / "out" / "figures" / "frontier.png").exists()
