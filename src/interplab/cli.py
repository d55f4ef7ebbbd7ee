"""The `interplab` command line. Choices and help come from the registries; no logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from interplab import ui
from interplab.errors import UserError

app = typer.Typer(
    name="interplab",
    help="Settle claims about neural networks by measurement: run experiments, harvest activations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Config override key=value (repeatable).")]


def _subjects():
    from interplab.subjects import SUBJECTS

    return SUBJECTS


def _experiments():
    from interplab.experiments import EXPERIMENTS

    return EXPERIMENTS


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="subjects, experiments or sites")] = "subjects",
    subject: Annotated[Optional[str], typer.Argument(help="For `list sites`: the subject.")] = None,
    sets: Sets = None,
) -> None:
    """List registered subjects or experiments, or the canonical sites of a subject."""
    from rich.table import Table

    from interplab.config import parse_set
    from interplab.errors import did_you_mean

    table = Table(show_header=True, header_style="bold")
    if what == "subjects":
        reg = _subjects()
        table.add_column("subject"), table.add_column("what it is")
        for name in reg:
            table.add_row("hf:<folder or hub id>" if name == "hf" else name, reg.help(name))
    elif what == "experiments":
        reg = _experiments()
        table.add_column("experiment"), table.add_column("what it measures")
        for name in reg:
            table.add_row(name, reg.help(name))
    elif what == "sites":
        if subject is None:
            raise UserError("`interplab list sites` needs a subject, e.g. `interplab list sites tms`")
        from interplab.subjects import load_subject

        subj = load_subject(subject, **parse_set(sets))
        table.add_column("site"), table.add_column("module"), table.add_column("reads")
        for name, site in subj.sites.items():
            table.add_row(name, site.module, site.io)
    else:
        choices = ["subjects", "experiments", "sites"]
        raise UserError(f"cannot list '{what}'{did_you_mean(what, choices)}; choose one of: {', '.join(choices)}")
    from rich.console import Console

    Console().print(table)


@app.command()
def prepare(
    subjects: Annotated[Optional[list[str]], typer.Argument(help="Subjects to prepare (default: smollm2).")] = None,
    quiet: Quiet = False,
) -> None:
    """Build what subjects need once (convert models, tokenise text, train toy models) into the cache."""
    ui.set_quiet(quiet)
    import torch

    from interplab.subjects import load_subject

    for name in subjects or ["smollm2"]:
        ui.info(f"preparing {name} ...")
        subj = load_subject(name)
        subj.sample(1, torch.Generator().manual_seed(0))  # builds and caches the input source too
        typer.echo(f"{name}: ready")


@app.command()
def harvest(
    subject: Annotated[str, typer.Argument(help="Subject name (see `interplab list subjects`).")],
    site: Annotated[list[str], typer.Option("--site", help="Site to record (repeatable).")],
    tokens: Annotated[int, typer.Option(help="Rows to record per site (tokens for LMs).", min=1)],
    out: Annotated[Path, typer.Option(help="Output folder; rerunning into it resumes.")],
    batch_size: Annotated[int, typer.Option(help="Inputs per forward pass.", min=1)] = 16,
    shard_tokens: Annotated[int, typer.Option(help="Rows per shard.", min=1)] = 32768,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the input stream.")] = 0,
    early_stop: Annotated[bool, typer.Option(help="Stop forward passes after the last site.")] = True,
    sets: Sets = None,
    quiet: Quiet = False,
) -> None:
    """Record activations at sites into checksummed safetensors shards (resumable)."""
    ui.set_quiet(quiet)
    from interplab.config import build, parse_set
    from interplab.store import HarvestConfig, harvest as run_harvest
    from interplab.subjects import load_subject
    from interplab.subjects.sites import resolve

    subject_cfg = parse_set(sets)
    cfg = build(HarvestConfig, dict(subject=subject, subject_config=subject_cfg, sites=site, tokens=tokens,
                                    batch_size=batch_size, shard_tokens=shard_tokens, dtype=dtype, seed=seed,
                                    early_stop=early_stop))
    subj = load_subject(subject, **subject_cfg)
    for s in site:
        resolve(subj.model, s, dict(subj.sites))
    from interplab.parallel import World

    world = World.from_env()  # under torchrun: each rank harvests a range of the shards
    path = run_harvest(subj, cfg, out)
    world.close()
    if world.main:
        typer.echo(f"harvest complete: {path / 'manifest.json'}")


@app.command("train-sae")
def train_sae(
    data: Annotated[Path, typer.Argument(help="An activation store folder (from `interplab harvest`).")],
    out: Annotated[Path, typer.Option(help="Folder for the trained SAE (SAELens format).")],
    site: Annotated[Optional[str], typer.Option(help="Site of the store to train on (needed when it holds several).")] = None,
    sae: Annotated[str, typer.Option(help="sae-topk, sae-batchtopk, sae-jumprelu or sae-relu.")] = "sae-topk",
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="SAE or trainer setting key=value (repeatable): "
                                                      "width, k, steps, lr, batch_size, device, decoder_norm ...")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint folder; rerunning with it resumes.")] = None,
    quiet: Quiet = False,
) -> None:
    """Train an SAE on harvested activations; under `torchrun --nproc_per_node N` on N processes."""
    ui.set_quiet(quiet)
    from interplab.config import parse_set
    from interplab.decompose.train_cli import train_sae_on_store

    path = train_sae_on_store(data, site, sae, parse_set(sets), out, checkpoint)
    if path is not None:
        typer.echo(f"saved: {path}")


@app.command()
def run(
    experiment: Annotated[str, typer.Argument(help="Experiment name (see `interplab list experiments`).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML, YAML or JSON config file.")] = None,
    sets: Sets = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default runs/EXPERIMENT).")] = None,
    help_config: Annotated[bool, typer.Option("--help-config", help="Show the config keys and exit.")] = False,
    small: Annotated[bool, typer.Option("--small", help="Same as --scale small.")] = False,
    scale: Annotated[str, typer.Option("--scale", help="small (what `cruxes` runs, minutes on a CPU) or "
                                       "default (the full study).")] = "default",
    quiet: Quiet = False,
) -> None:
    """Run one experiment; writes results.json, figures and index.html."""
    ui.set_quiet(quiet)
    from interplab.config import describe, parse_set
    from interplab.experiments import run_experiment
    from interplab.report.terminal import print_result

    exp = _experiments().get(experiment)
    if help_config:
        for name, typ, default, doc in describe(exp.Config):
            typer.echo(f"{name} ({typ}, default {default}): {doc}")
        return
    if scale not in ("small", "default"):
        raise UserError(f"--scale must be 'small' or 'default', not '{scale}'")
    scale = "small" if small else scale
    out = out or Path("runs") / experiment
    overrides = {**(exp.small if scale == "small" else {}), **parse_set(sets)}  # --set wins over the scale
    result = run_experiment(experiment, overrides, out, config_file=config, scale=scale)
    print_result(result)
    typer.echo(f"report: {(out / 'index.html').resolve()}")


@app.command()
def cruxes(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/cruxes"),
    fresh: Annotated[bool, typer.Option(help="Rerun experiments that already have results.")] = False,
    only: Annotated[Optional[list[str]], typer.Option(help="Run only these experiments (repeatable).")] = None,
    jobs: Annotated[Optional[int], typer.Option(help="Experiments run at once, each on one thread "
                                                "(default: one per core).", min=1)] = None,
    quiet: Quiet = False,
) -> None:
    """Run every experiment at its small default scale and print the table of verdicts."""
    ui.set_quiet(quiet)
    from interplab.experiments import run_cruxes

    reg = _experiments()
    for name in only or []:
        reg.get(name)
    index = run_cruxes(out, fresh=fresh, only=only, jobs=jobs)
    typer.echo(f"report: {Path(index).resolve()}")


@app.command("eval")
def eval_(
    path: Annotated[Path, typer.Argument(help="Folder of a saved SAE: SAELens or interplab (cfg.json + "
                                         "sae_weights.safetensors) or one sparsify hookpoint (cfg.json + sae.safetensors).")],
    subject: Annotated[str, typer.Option(help="Subject the SAE was trained on (see `interplab list subjects`).")],
    site: Annotated[str, typer.Option(help="Site it reads (see `interplab list sites SUBJECT`).")],
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="Subject setting key=value (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default runs/eval/<folder name>).")] = None,
    tokens: Annotated[int, typer.Option(help="Training-split activations: your SAE's L0, the baselines' fit.",
                                        min=64)] = 16_384,
    batches: Annotated[int, typer.Option(help="Held-out evaluation batches.", min=1)] = 8,
    batch_size: Annotated[Optional[int], typer.Option(help="Model inputs per evaluation batch.", min=1)] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps of the built-in sae-topk.", min=1)] = 2000,
    boot: Annotated[int, typer.Option(help="Bootstrap resamples of the evaluation batches.", min=0)] = 1000,
    baselines: Annotated[bool, typer.Option(help="Score sign-split PCA and interplab's sae-topk at the same L0.")] = True,
    loss_curve: Annotated[bool, typer.Option(help="Draw each method's loss-explained curve (loss recovered per "
                                             "feature read; the slowest part).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of activations, baselines and evaluation batches.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Score your own SAE on interplab's yardstick, beside PCA and the built-in SAE at the same L0."""
    ui.set_quiet(quiet)
    from interplab.config import build, parse_set
    from interplab.experiments.eval_sae import EvalConfig, evaluate_folder
    from interplab.report.terminal import print_result

    cfg = build(EvalConfig, dict(subject=subject, subject_config=parse_set(sets), site=site, train_tokens=tokens,
                                 n_batches=batches, batch_size=batch_size, sae_steps=steps, n_boot=boot,
                                 baselines=baselines, loss_curve=loss_curve, seed=seed))
    out = out or Path("runs") / "eval" / (path.resolve().name or "sae")
    print_result(evaluate_folder(path, cfg, out))
    typer.echo(f"report: {(out / 'index.html').resolve()}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by `interplab run`, `eval` or `cruxes`.")],
    format: Annotated[str, typer.Option("--format", help="html (rebuild the pages) or md (the verdict table as "
                                        "Markdown).")] = "html",
    out: Annotated[Optional[Path], typer.Option(help="For --format md: the file to write ('-' for stdout; "
                                                "default RUN_DIR/verdicts.md).")] = None,
) -> None:
    """Rebuild a run's HTML from its results.json, or write its verdict table as Markdown."""
    from interplab.report.html import atomic_write
    from interplab.report.markdown import verdicts_markdown
    from interplab.report.runs import entries_of, rebuild

    if format not in ("html", "md"):
        raise UserError(f"--format must be 'html' or 'md', not '{format}'")
    if format == "html":
        typer.echo(f"report: {rebuild(run_dir).resolve()}")
        return
    text = verdicts_markdown(entries_of(run_dir), title=f"Verdicts of {run_dir.resolve().name}")
    if str(out) == "-":
        typer.echo(text, nl=False)
        return
    path = out or run_dir / "verdicts.md"
    atomic_write(path, text)
    typer.echo(f"markdown: {path.resolve()}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; completed work on disk is kept and a rerun resumes", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
