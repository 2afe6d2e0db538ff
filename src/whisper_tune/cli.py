"""The ``whisper-tune`` command: a thin click layer over the library.

Errors a user can fix print one line (and a hint) and exit with their class's code (docs/errors.md);
anything else is a bug and keeps its traceback. Other libraries' log records and warnings go to the run's
run.log, not the terminal (``console.route_library_output``). ``--debug`` shows tracebacks for everything
and those records on the terminal too. Nothing here imports torch at import time, so ``--help`` is
instant.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from whisper_tune.backend.registry import KNOWN_BACKENDS, Registry
from whisper_tune.backend.setup import InProcessTrainer
from whisper_tune.config.docs import backend_options_markdown, config_reference_markdown, with_options_block
from whisper_tune.config.presets import list_presets
from whisper_tune.config.schema import REPO_ID, UncheckedOptions
from whisper_tune.config_loading import dump_yaml, load_config, resolve_config
from whisper_tune.console import Reporter, route_library_output
from whisper_tune.disk import write_text
from whisper_tune.errors import ConfigError, InterruptedRun, WhisperTuneError
from whisper_tune.execution.external import outside_launch
from whisper_tune.execution.worker import exit_now
from whisper_tune.export.exporter import FORMATS
from whisper_tune.export.exporter import export as export_model
from whisper_tune.models.adapters import merge_adapter
from whisper_tune.reading import read_text
from whisper_tune.runs.directory import run_dir_path
from whisper_tune.runs.model_ref import resolve_model, resolve_run
from whisper_tune.runs.push import push as push_model
from whisper_tune.runs.run import check as check_run
from whisper_tune.runs.run import plan as make_plan
from whisper_tune.runs.run import prepare as prepare_data
from whisper_tune.runs.run import run as run_pipeline
from whisper_tune.transcribe import transcribe_files
from whisper_tune.version import __version__

F = TypeVar("F", bound=Callable[..., Any])

OVERRIDES_HELP = (
    "CONFIG (a preset name or YAML file) may come first instead of --config. Trailing KEY=VALUE items "
    "override any config field, e.g. training.max_steps=100 or data.extra_eval.0.split=test."
)


#: click parameter names of backend flags: "backend_flag__" + the flag's position in the listing
FLAG_PARAM = "backend_flag__"


class BackendFlagsCommand(click.Command):
    """A command that also takes the installed backends' own flags (``--num-processes``, ``--ipus``),
    listed from the registry when the command is used (``--help`` included), not when the CLI is
    imported. The callback gets them as ``backend_flags``: {flag name: value}."""

    _backend_params: list[click.Option] | None = None

    def backend_params(self) -> list[click.Option]:
        if self._backend_params is None:
            taken = {opt for p in self.params for opt in [*p.opts, *p.secondary_opts]}
            self._backend_params = backend_flag_options(taken | {"--help", "-h"})
        return self._backend_params

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        own = len(self.params)
        return [*params[:own], *self.backend_params(), *params[own:]]

    def invoke(self, ctx: click.Context) -> Any:
        names = {p.name: p.opts[0] for p in self.backend_params()}
        ctx.params["backend_flags"] = {
            names[key]: ctx.params.pop(key) for key in list(ctx.params) if key in names
        }
        return super().invoke(ctx)


def backend_flag_options(taken: set[str]) -> list[click.Option]:
    """One click option per flag the installed backends declare (a flag several declare is listed once).
    A flag that would shadow one of the command's own options is left out."""

    try:
        declared = Registry().flags()
    except WhisperTuneError:  # two packages register one name: the command itself reports it
        return []
    options = []
    for n, (flag_name, owners) in enumerate(sorted(declared.items())):
        first = next(iter(owners.values()))
        option = click.Option(
            [flag_name, f"{FLAG_PARAM}{n}"],
            type=flag_type(first.type, first.min),
            default=None,
            metavar=first.metavar,
            help=f"{first.help.rstrip('.')} ({flag_setting(owners)}).",
        )
        if flag_name.startswith("--") and flag_name not in taken:
            options.append(option)
    return options


def flag_type(kind: str, minimum: float | None) -> click.ParamType[Any]:
    if kind == "int":
        return click.IntRange(min=None if minimum is None else int(minimum))
    if kind == "float":
        return click.FloatRange(min=minimum)
    return click.STRING


def flag_setting(owners: dict[str, Any]) -> str:
    """What a flag sets, for its help: 'sets backend.num_processes; backends accelerate, cuda-lora' (the
    key per backend when they differ)."""
    keys = {flag.key for flag in owners.values()}
    if len(keys) == 1:
        return f"sets {keys.pop()}; backend{'s' if len(owners) > 1 else ''} {', '.join(owners)}"
    return "sets " + ", ".join(f"{flag.key} for {name}" for name, flag in owners.items())


def config_options(func: F) -> F:
    """[CONFIG] / --config / --backend / --model plus key=value overrides; the command is a
    ``BackendFlagsCommand``, which adds the installed backends' own flags."""
    func = click.argument("overrides", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")(func)
    func = click.option(
        "--model",
        "model",
        default=None,
        help="Model: hub id, local directory, CTranslate2 directory or pip:tiny.en (sets model.name).",
    )(func)
    func = click.option("--backend", "-b", default=None, help="Backend name (sets backend.name).")(func)
    func = click.option(
        "--config",
        "-c",
        "config",
        default=None,
        help="Preset name (see 'config list') or path to a YAML file.",
    )(func)
    return func


def split_config_argument(config: str | None, overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """``run configs/x.yaml k=v`` is ``run --config configs/x.yaml k=v``: a first item without '=' is
    the config (a YAML path or preset name)."""
    items = list(overrides)
    if items and "=" not in items[0]:
        if config is not None:
            raise ConfigError(
                f"two configs given: --config {config} and '{items[0]}'",
                hint="give the preset or YAML file once, as the first argument or with --config",
            )
        return items[0], items[1:]
    return config, items


def build_config(
    config: str | None,
    overrides: Sequence[str],
    *,
    require_backend: bool = True,
    resolved: bool = False,
    **flags: Any,
) -> Any:
    """The validated config (``resolved``: with the backend defaults it holds,
    ``config_loading.Resolved``)."""

    config, items = split_config_argument(config, overrides)
    build = resolve_config if resolved else load_config
    return build(config, items, require_backend=require_backend, **flags)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="whisper-tune")
@click.option(
    "--debug",
    is_flag=True,
    help="Show full tracebacks, also for configuration and data errors, and other libraries' warnings "
    "(transformers, peft, ...: always in the run's run.log) on the terminal too.",
)
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and results; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Fine-tune OpenAI's Whisper on the hardware you have.

    \b
    Quick start (CPU, offline):  whisper-tune run --config quickstart
    One GPU with LoRA:           whisper-tune run --backend cuda-lora --config ...
    Graphcore IPUs:              whisper-tune run --backend ipu --ipus 4 --config ...
    """
    ctx.obj = {"debug": debug, "quiet": quiet}


def _reporter(ctx: click.Context) -> Any:
    """The console reporter; silent on the ranks other than 0 of a torchrun / accelerate launch (rank 0
    speaks for the run)."""
    outside = outside_launch()
    if outside is not None and not outside.main:
        return Reporter.silent()
    return Reporter(quiet=ctx.obj["quiet"], verbose=ctx.obj["debug"])


def _echo_summary(summary: Any) -> None:
    if not summary.reports:
        return
    click.echo(f"run directory: {summary.run_dir}")
    for line in summary.lines:
        click.echo(line)


DATA_HELP = (
    "Your data: an audiofolder, a CSV/JSONL manifest or a prepared directory. Sets data.dataset, trains on "
    "its 'train' split, evaluates on the first of eval/test/validation/valid/dev it has (else holds out "
    "a seeded 10%, data.test_size), and drops the config's own extra eval sets. KEY=VALUE overrides win."
)


@cli.command(cls=BackendFlagsCommand, epilog=OVERRIDES_HELP)
@config_options
@click.option("--data", "data", default=None, metavar="DIR_OR_MANIFEST", help=DATA_HELP)
@click.pass_context
def run(
    ctx: click.Context, /, config: str | None, overrides: tuple[str, ...], data: str | None, **flags: Any
) -> None:
    """Fine-tune: evaluate before, train, evaluate after, write the run directory."""

    reporter = _reporter(ctx)  # first, so that what --data chose is shown
    summary = run_pipeline(
        build_config(config, overrides, data=data, **flags), reporter=reporter, echo_summary=False
    )
    _echo_summary(summary)


@cli.command("eval", cls=BackendFlagsCommand, epilog=OVERRIDES_HELP)
@config_options
@click.option(
    "--data",
    "data",
    default=None,
    metavar="DIR_OR_MANIFEST",
    help="Dataset to evaluate (sets data.dataset; a local one is evaluated on the first of "
    "eval/test/validation/valid/dev it has, without the config's extra eval sets).",
)
@click.option("--split", default=None, help="Split to evaluate (sets data.eval_split).")
@click.pass_context
def eval_cmd(
    ctx: click.Context,
    /,
    config: str | None,
    overrides: tuple[str, ...],
    data: str | None,
    split: str | None,
    **flags: Any,
) -> None:
    """Evaluate a model (WER/CER raw and normalised) without training."""

    reporter = _reporter(ctx)
    extra = [f"data.eval_split={split}"] if split else []
    summary = run_pipeline(
        build_config(config, [*overrides, *extra], data=data, **flags),
        reporter=reporter,
        train=False,
        echo_summary=False,
    )
    _echo_summary(summary)


@cli.command(cls=BackendFlagsCommand, epilog=OVERRIDES_HELP)
@config_options
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the prepared splits into (train/, eval/, ...).",
)
@click.pass_context
def prepare(
    ctx: click.Context, /, config: str | None, overrides: tuple[str, ...], out: Path, **flags: Any
) -> None:
    """Decode, resample to 16 kHz, filter and tokenise a dataset once: audio and labels on disk (log-mel
    features are computed per batch while training); later runs train from it (data.dataset=OUT)."""

    sets = prepare_data(build_config(config, overrides, **flags), out, reporter=_reporter(ctx))
    for name, info in sets.report().items():
        click.echo(f"{name}: {info['samples']} samples, {info['audio_minutes']} min -> {info['path']}")


@cli.command(cls=BackendFlagsCommand, epilog=OVERRIDES_HELP)
@config_options
@click.option("--data", "data", default=None, metavar="DIR_OR_MANIFEST", help="As for 'run': " + DATA_HELP)
@click.pass_context
def plan(
    ctx: click.Context, /, config: str | None, overrides: tuple[str, ...], data: str | None, **flags: Any
) -> None:
    """Show what the backend will do: devices, batch per device and global, placement, and the command
    that runs it."""

    resolved = build_config(config, overrides, resolved=True, data=data, **flags)
    the_plan = make_plan(resolved.config)
    click.echo(f"backend:            {the_plan.backend}")
    click.echo(f"devices:            {the_plan.devices}")
    click.echo(f"processes:          {the_plan.processes}")
    click.echo(f"batch per device:   {the_plan.batch_per_device}")
    click.echo(f"grad accumulation:  {the_plan.gradient_accumulation_steps}")
    click.echo(f"global batch:       {the_plan.global_batch}")
    for line in the_plan.placement:
        click.echo(f"placement:          {line}")
    for key, label in (
        ("training.method", "method"),
        ("training.learning_rate", "learning rate"),
        ("training.precision", "precision"),
    ):
        click.echo(f"{label + ':':20}{_value_and_origin(resolved, key)}")
    for line in the_plan.notes:
        click.echo(f"note:               {line}")
    launch = the_plan.launch.resolved(run_dir_path(resolved.config))
    if launch.mode == "command":
        named = "" if resolved.config.output.run_name else " (named at its start; output.run_name fixes it)"
        click.echo(
            f"launch:             whisper-tune run writes the files below into its run directory{named}, "
            "then executes:"
        )
    for line in launch.describe():
        click.echo(f"launch:             {line}")
    same = _same_arguments(config, overrides, {**flags, "data": data})
    click.echo(f"run it:             {shlex.join(['whisper-tune', 'run', *same])}")
    torchrun = _torchrun_line(resolved.config, the_plan, config, overrides, {**flags, "data": data})
    if torchrun:
        click.echo(f"or with torchrun:   {torchrun}")


def _same_arguments(
    config: str | None, overrides: Sequence[str], flags: dict[str, Any], drop: Sequence[str] = ()
) -> list[str]:
    """The arguments ``plan`` was given, for a ``whisper-tune run`` of the same configuration."""
    config, items = split_config_argument(config, overrides)
    args = ["--config", config] if config else []
    for name in ("backend", "model", "data"):
        if flags.get(name):
            args += [f"--{name}", str(flags[name])]
    for flag, value in (flags.get("backend_flags") or {}).items():
        if value is not None and flag not in drop:
            args += [flag, str(value)]
    return args + items


def _torchrun_line(
    config: Any, the_plan: Any, config_arg: str | None, overrides: Sequence[str], flags: dict[str, Any]
) -> str | None:
    """The same run started by torchrun (each process a rank of the one run, execution/external.py), for a
    backend that trains in this Python environment over several processes of one machine."""
    options = config.backend.options
    if the_plan.processes < 2 or getattr(options, "num_machines", 1) != 1:
        return None
    if not isinstance(Registry().get(config.backend.name), InProcessTrainer):
        return None
    same = _same_arguments(config_arg, overrides, flags, drop=("--num-processes",))
    torchrun = ["torchrun", "--standalone", "--nproc_per_node", str(the_plan.processes)]
    return shlex.join([*torchrun, "-m", "whisper_tune", "run", *same])


def _value_and_origin(resolved: Any, key: str) -> str:
    """``0.001 (cuda-lora default: why)`` / ``(set in the config)`` / ``(whisper-tune default)``."""
    section, field = key.split(".")
    part = getattr(resolved.config, section)
    value = getattr(part, field)
    default = resolved.backend_defaults.get(key)
    if default is not None:
        origin = f"{resolved.config.backend.name} default: {default.reason}"
    elif field in part.model_fields_set:
        origin = "set in the config"
    elif key == "training.learning_rate":
        origin = f"whisper-tune default for training.method {resolved.config.training.method}"
    else:
        origin = "whisper-tune default"
    return f"{value} ({origin})"


@cli.command()
@click.argument("source")
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write hf/, ct2-float16/, ct2-int8/ and export.json into.",
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["hf", "ct2-float16", "ct2-int8"]),
    help="Formats to write (repeatable; default all three). hf is always written: CT2 is converted from it.",
)
@click.option(
    "--clips",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Eval clips for the parity check: a prepared directory or an audio folder with metadata.csv "
    "(default: the run's prepared eval set).",
)
@click.option("--max-clips", type=click.IntRange(min=1), default=32, show_default=True, help="Clips decoded.")
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=None,
    help="Allowed normalised-WER difference in points for every format "
    "(default: hf 1.0, ct2-float16 1.0, ct2-int8 2.0).",
)
@click.option("--language", default=None, help="Language of a model that is not a run (runs use theirs).")
@click.option("--task", type=click.Choice(["transcribe", "translate"]), default=None, help="Whisper task.")
@click.option("--check/--no-check", default=True, show_default=True, help="Run the WER parity check.")
@click.option(
    "--check-only",
    is_flag=True,
    help="Export nothing: re-run the parity check on the formats already in --out (e.g. after editing).",
)
@click.pass_context
def export(
    ctx: click.Context,
    /,
    source: str,
    out: Path,
    formats: tuple[str, ...],
    clips: Path | None,
    max_clips: int,
    tolerance: float | None,
    language: str | None,
    task: str | None,
    check: bool,
    check_only: bool,
) -> None:
    """Export a run (LoRA merged, or full) or a model to Hugging Face + CTranslate2, then check that
    the exported models transcribe eval clips with the source's WER (docs/export.md)."""

    result = export_model(
        source,
        out,
        formats=formats or FORMATS,
        clips=clips,
        max_clips=max_clips,
        tolerance=tolerance,
        language=language,
        task=task,
        check=check,
        check_only=check_only,
        reporter=_reporter(ctx),
    )
    for line in result.lines:
        click.echo(line)
    click.echo(f"report: {result.out_dir / 'export.json'}")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model",
    default=None,
    help="Model: pip:tiny.en, hub id, Hugging Face / exported / CTranslate2 directory, or a run directory.",
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A run directory: its final model (a LoRA adapter is merged) with the run's language/task.",
)
@click.option("--language", default=None, help="Language code or name (multilingual models).")
@click.option("--task", type=click.Choice(["transcribe", "translate"]), default=None, help="Whisper task.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "srt"]),
    default="text",
    show_default=True,
    help="Output format (json and srt carry timestamps).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Output file (one input) or directory (several: <name>.txt/.json/.srt); default stdout.",
)
@click.pass_context
def transcribe(
    ctx: click.Context,
    /,
    files: tuple[Path, ...],
    model: str | None,
    run_dir: Path | None,
    language: str | None,
    task: str | None,
    fmt: str,
    output: Path | None,
) -> None:
    """Transcribe audio files of any length (chunked in 30-s windows) with a model, a run or an export."""

    if (model is None) == (run_dir is None):
        raise ConfigError("give exactly one of --model and --run")
    ref = (
        resolve_run(run_dir, language, task)
        if run_dir is not None
        else resolve_model(str(model), language, task, keep_ct2=True)
    )
    transcribe_files(list(files), ref, fmt=fmt, output=output, emit=click.echo, reporter=_reporter(ctx))  # type: ignore[arg-type]


@cli.command()
@click.argument("adapter_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the merged model into (safetensors, processor and generation config).",
)
@click.option("--base", default=None, help="Base model; default: the adapter's base_model_name_or_path.")
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="dtype of the merged weights.",
)
def merge(adapter_dir: Path, out: Path, base: str | None, dtype: str) -> None:
    """Fold a LoRA adapter (a cuda-lora run's final/ directory) into its base: a plain Whisper model."""

    merged = merge_adapter(adapter_dir, out, base=base, dtype=dtype)  # type: ignore[arg-type]
    click.echo(f"merged model: {merged}")


@cli.command()
@click.argument("source", metavar="RUN_OR_EXPORT", type=click.Path(path_type=Path))
@click.option(
    "--repo-id", required=True, metavar="ORG/NAME", help="The Hub repo to push to (created if missing)."
)
@click.option(
    "--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility)."
)
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; upload nothing.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hf", "ct2-float16", "ct2-int8"]),
    default=None,
    help="Of an export directory: which format to push (default hf).",
)
@click.pass_context
def push(
    ctx: click.Context, /, source: Path, repo_id: str, private: bool, dry_run: bool, fmt: str | None
) -> None:
    """Upload a run's final model (or LoRA adapter), or an export, with its model card (README.md) to a
    Hub repo. Needs a token with write access (HF_TOKEN or 'hf auth login'); HF_ENDPOINT picks the Hub."""

    if not REPO_ID.fullmatch(repo_id):
        raise ConfigError(f"--repo-id '{repo_id}' is not a Hub repo id ORG/NAME")
    result = push_model(source, repo_id, private=private, dry_run=dry_run, fmt=fmt, reporter=_reporter(ctx))
    for line in result.lines:
        click.echo(line)


@cli.command()
def backends() -> None:
    """List installed backends, whether they can run here and why not; and known ones not installed."""

    registry = Registry()
    for name in registry.names():
        info = registry.info(name)
        try:
            backend = registry.get(name)
            probe = backend.probe()
            if probe.available:
                status = "available" + (f": {probe.mode}" if probe.mode else "")
            else:
                status = f"unavailable: {probe.reason}"
            if probe.install_hint and not probe.available:
                status += f" ({probe.install_hint})"
            description = backend.description
        except WhisperTuneError as exc:
            status, description = f"broken: {exc.message}", ""
        except ImportError as exc:  # registered, but its module cannot be imported
            status, description = f"broken: cannot import it ({exc})", ""
        origin = f"{info.distribution} {info.version}" if info else "in-process"
        click.echo(f"{name:12} {status}\n{'':12} {description} [{origin}]")
    for name, known in KNOWN_BACKENDS.items():
        if name not in registry.names():
            click.echo(f"{name:12} not installed: {known.install}\n{'':12} {known.description}")


@cli.group("config")
def config_group() -> None:
    """Show, validate, list and document configurations."""


@config_group.command("show", cls=BackendFlagsCommand, epilog=OVERRIDES_HELP)
@config_options
def config_show(config: str | None, overrides: tuple[str, ...], **flags: Any) -> None:
    """Print the fully resolved configuration as YAML (every default filled in; a backend's defaults
    are marked with a comment)."""

    resolved = build_config(config, overrides, require_backend=False, resolved=True, **flags)
    comments = {
        key: f"{resolved.config.backend.name} default: {d.reason}"
        for key, d in resolved.backend_defaults.items()
    }
    click.echo(dump_yaml(resolved.config, comments), nl=False)


@config_group.command("validate", cls=BackendFlagsCommand, epilog=OVERRIDES_HELP)
@config_options
def config_validate(config: str | None, overrides: tuple[str, ...], **flags: Any) -> None:
    """Validate a configuration as 'run' would before it loads the model: the core sections, the backend's
    options and checks (if it is installed), every data set (splits and columns) and the model name. A
    configuration for other hardware validates here: what this machine lacks is printed as a warning."""

    resolved = build_config(config, overrides, require_backend=False, **flags)
    for issue in check_run(resolved):
        where = "this machine cannot run it: " if issue.hardware or issue.run_only else ""
        hint = f" ({issue.hint})" if issue.hint else ""
        click.echo(f"warning: {where}{issue.loc}: {issue.message}{hint}", err=True)
    checked = "data sets and model name; the model is not loaded"
    name = resolved.backend.name
    if isinstance(resolved.backend.options, UncheckedOptions):
        click.echo(
            f"valid (core sections, {checked}); backend '{name}' is not installed here, so its own options "
            "and checks were not run"
        )
    else:
        click.echo(f"valid (core sections, backend '{name}' options and checks, {checked})")


@config_group.command("list")
def config_list() -> None:
    """List the shipped presets."""

    for name, path in list_presets().items():
        click.echo(f"{name:40} {path}")


@config_group.command("docs")
@click.option(
    "--backend",
    "-b",
    "backend_name",
    default=None,
    help="Print this installed backend's option table instead (generated from its Options model).",
)
@click.option(
    "--into",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="With --backend: rewrite the generated options block of this file (the backend's README) "
    "instead of printing it.",
)
def config_docs(backend_name: str | None, into: Path | None) -> None:
    """Print the configuration reference (Markdown), generated from the field descriptions."""

    if backend_name is None:
        if into is not None:
            raise click.UsageError("--into needs --backend")
        click.echo(config_reference_markdown(), nl=False)
        return

    block = backend_options_markdown(Registry().get(backend_name))
    if into is None:
        click.echo(block, nl=False)
        return
    text = with_options_block(read_text(into, ConfigError, "a Markdown file"), block, str(into))
    write_text(into, text, f"the {backend_name} options")
    click.echo(f"wrote the {backend_name} options into {into}")


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to one line and an exit code. A rank of a torchrun /
    accelerate launch leaves without tearing the interpreter down (``worker.exit_now``: a DDP model's
    process group can deadlock the interpreter's shutdown). Other libraries' log records and warnings go
    to the run's run.log, and to the terminal only with --debug (``console``)."""
    code = _main(argv)
    if argv is None and outside_launch() is not None:
        exit_now(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    signal.signal(signal.SIGTERM, _on_sigterm)
    with route_library_output(debug=debug):
        return _run_cli(args, debug)


def _run_cli(args: list[str], debug: bool) -> int:
    try:
        cli.main(args=args, prog_name="whisper-tune", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return InterruptedRun.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except WhisperTuneError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"  hint: {exc.hint}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        click.echo("interrupted", err=True)
        return InterruptedRun.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
