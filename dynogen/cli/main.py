"""``dynogen`` on the command line: a thin layer over ``dynogen.api``.

Every command maps flags onto one ``Config`` and calls the API function of
the same name. Errors print one line (``dynogen: error: …``) and exit with
a code from ``dynogen.api.EXIT``: 0 done, 1 error, 3 budget reached,
4 fatal API error, 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dynogen.config import load_config
from dynogen.errors import DynogenError

__all__ = ["app", "main"]

if TYPE_CHECKING:
    from dynogen import api
else:
    class _Lazy:
        """``dynogen.api`` imported when a command runs, not for ``--help`` (a light start)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(importlib.import_module("dynogen.api"), name)

    api = _Lazy()

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rendering it with rich costs ~0.3 s of CPU
    help="Grow instruction-tuning data from dataset metadata (after Dynosaur).",
)

SourceOpt = Annotated[str, typer.Option(
    "--source", help="Folder of dataset folders, a .jsonl metadata shard, 'samples' (bundled) "
    "or 'hub'.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Run directory (resumed if it exists).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model name sent to the server.")]
BaseUrlOpt = Annotated[str | None, typer.Option(
    "--base-url", help="OpenAI-compatible base URL (default: OPENAI_BASE_URL or OpenAI).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file.")]
ModeOpt = Annotated[str | None, typer.Option(
    "--mode", help="online (rate-limited calls, default) or batch (OpenAI Batch API jobs: "
    "half the price, answers within 24h).")]
CollectionOpt = Annotated[Path | None, typer.Option(
    "--collection", help="A collection (see `grow`): estimate its next step, export its merged "
    "view (every version, superseded tasks left out).")]
# Data policies (issue #10): the same names as Config fields and TOML keys.
LicensesOpt = Annotated[str | None, typer.Option(
    "--licenses", help="Licence allow-list: classes (permissive, share-alike, non-commercial, "
    "unknown, other) and SPDX ids, comma-separated, or 'any' "
    "(default permissive,share-alike).")]
LanguagesOpt = Annotated[str | None, typer.Option(
    "--languages", help="Language codes to keep (default en), or 'any'.")]
SplitsOpt = Annotated[str | None, typer.Option(
    "--splits", help="Splits rows are read from: train, validation (default both), split names, "
    "or 'all' (test splits included).")]
MaxShareOpt = Annotated[float | None, typer.Option(
    "--max-share", help="Largest share of kept tasks one source dataset may have (0-1].")]
MaxTokensOpt = Annotated[str | None, typer.Option(
    "--max-tokens", help="max_tokens per request (default 640), or auto: sized once from an "
    "earlier run's answers (--calibration) or this run's first 16, then recorded.")]
CalibrationOpt = Annotated[Path | None, typer.Option(
    "--calibration", help="For --max-tokens auto: an earlier run directory or its "
    "calibration.json.")]

# --- Hub listing options (for --source hub; see dynogen.io.hub_options) ----------------
HubSearchOpt = Annotated[str | None, typer.Option(
    "--hub-search", help="Hub: only datasets whose id contains this text.")]
HubTasksOpt = Annotated[str | None, typer.Option(
    "--hub-task-categories", help="Hub: comma-separated task categories, e.g. "
    "text-classification,question-answering.")]
HubSinceOpt = Annotated[str | None, typer.Option(
    "--hub-modified-since", help="Hub: only datasets modified since this ISO date/time "
    "(incremental listing).")]
HubDatasetsOpt = Annotated[int | None, typer.Option(
    "--hub-datasets", help="Hub: list at most N datasets.")]
HubSortOpt = Annotated[str | None, typer.Option(
    "--hub-sort", help="Hub: downloads or last_modified (newest first).")]
HubRpmOpt = Annotated[float | None, typer.Option(
    "--hub-rpm", help="Hub and viewer calls per minute (default 300).")]
HubConcurrencyOpt = Annotated[int | None, typer.Option(
    "--hub-concurrency", help="Hub and viewer calls in flight (default 8).")]
HubViewerOpt = Annotated[str | None, typer.Option(
    "--hub-viewer-url", help="Dataset viewer API base URL.")]


def _hub_flags(search: str | None, tasks: str | None, since: str | None, datasets: int | None,
               sort: str | None, rpm: float | None, concurrency: int | None,
               viewer: str | None) -> dict[str, Any]:
    return dict(hub_search=search, hub_task_categories=tasks, hub_modified_since=since,
                hub_datasets=datasets, hub_sort=sort, hub_rpm=rpm,
                hub_concurrency=concurrency, hub_viewer_url=viewer)

# --mode batch settings, shared by run and call (dynogen.execute.batch).
PollOpt = Annotated[float | None, typer.Option(
    "--poll-seconds", help="Batch mode: longest wait between polls of running batches "
    "(default 60; polling backs off up to it).")]
RoundsOpt = Annotated[int | None, typer.Option(
    "--batch-rounds", help="Batch mode: follow-up batches for failed or expired requests "
    "(default 3).")]
FileReqOpt = Annotated[int | None, typer.Option(
    "--batch-max-requests", help="Batch mode: requests per input file (max 50,000).")]
EnqueuedOpt = Annotated[int | None, typer.Option(
    "--batch-enqueued-tokens", help="Batch mode: prompt tokens allowed in running batches "
    "at once (your model's enqueued-token limit; default no cap).")]
BatchInOpt = Annotated[float | None, typer.Option(
    "--batch-price-in", help="$ per 1M input tokens in batch mode (default half --price-in).")]
BatchOutOpt = Annotated[float | None, typer.Option(
    "--batch-price-out", help="$ per 1M output tokens in batch mode (default half "
    "--price-out).")]


def _batch_flags(poll: float | None, rounds: int | None, file_requests: int | None,
                 enqueued: int | None, price_in: float | None,
                 price_out: float | None) -> dict[str, Any]:
    return {"poll_seconds": poll, "batch_rounds": rounds, "batch_max_requests": file_requests,
            "batch_enqueued_tokens": enqueued, "batch_price_in": price_in,
            "batch_price_out": price_out}


batch_app = typer.Typer(no_args_is_help=True, help="Inspect or cancel the Batch API jobs of a "
                        "run started with --mode batch (works while the run polls).")
app.add_typer(batch_app, name="batch")


@batch_app.command("status")
def batch_status(
    out: Annotated[Path, typer.Option("--out", help="The run directory (for call: OUT.batches).")],
    base_url: BaseUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a batch.")] = False,
) -> None:
    """List the run's batches: state, request counts, age, cost so far."""
    import orjson

    from dynogen.execute.batch_admin import format_status

    try:
        rows = api.batch_status(out, base_url=base_url)
    except DynogenError as e:
        _fail(e)
        return
    if as_json:
        for r in rows:
            typer.echo(orjson.dumps(r).decode())
    else:
        typer.echo(format_status(rows))


@batch_app.command("cancel")
def batch_cancel(
    out: Annotated[Path, typer.Option("--out", help="The run directory (for call: OUT.batches).")],
    base_url: BaseUrlOpt = None,
) -> None:
    """Cancel the run's running batches; finished answers are kept, a resume redoes the rest."""
    try:
        rows = api.batch_cancel(out, base_url=base_url)
    except DynogenError as e:
        _fail(e)
        return
    for r in rows:
        typer.echo(f"{r['name']}  {r['batch_id']}  {r['status']}")
    typer.echo(f"{sum(r['status'] in ('cancelling', 'cancelled') for r in rows)} batches "
               "cancelled or cancelling")


def _fail(err: DynogenError) -> None:
    typer.echo(f"dynogen: error: {err}", err=True)
    raise typer.Exit(api.exit_code(err))


def _config(config_file: Path | None, **flags: Any) -> Any:
    return load_config(config_file, **flags)


@app.command()
def run(
    source: SourceOpt = "samples",
    out: OutOpt = Path("runs/latest"),
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    local: Annotated[bool, typer.Option(
        "--local", help="Start the bundled llama.cpp server with SmolLM2-135M and use it.")
    ] = False,
    mode: ModeOpt = None,
    limit: Annotated[int | None, typer.Option(help="Process at most N units.")] = None,
    rows_per_split: Annotated[int | None, typer.Option(help="Rows read per split.")] = None,
    variants: Annotated[str | None, typer.Option(
        help="Prompt variants: description,no_description (default both).")] = None,
    max_tasks: Annotated[int | None, typer.Option(
        "--max-tasks", help="Tasks asked per unit and variant.")] = None,
    response_format: Annotated[str | None, typer.Option(
        help="json_schema (default), json_object or none.")] = None,
    max_tokens: MaxTokensOpt = None,
    calibration: CalibrationOpt = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute limit.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute limit.")] = None,
    max_in_flight: Annotated[int | None, typer.Option(
        help="Cap on requests in flight (default: from the limits and answer times).")] = None,
    budget_usd: Annotated[float | None, typer.Option(
        help="Hard budget in dollars for the whole run (across resumes).")] = None,
    price_in: Annotated[float | None, typer.Option(help="$ per 1M input tokens.")] = None,
    price_out: Annotated[float | None, typer.Option(help="$ per 1M output tokens.")] = None,
    free: Annotated[bool, typer.Option(help="Declare the server free (local models).")] = False,
    heldout_fraction: Annotated[float | None, typer.Option(
        help="Fraction of tasks held out (by task, not row).")] = None,
    licenses: LicensesOpt = None,
    languages: LanguagesOpt = None,
    splits: SplitsOpt = None,
    max_share: MaxShareOpt = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Request cache file to share across runs.")] = None,
    force_new: Annotated[bool, typer.Option(
        help="Discard an existing run in --out whose settings differ.")] = False,
    judge: Annotated[bool, typer.Option(
        "--judge", help="One more request per kept task: the model judges whether it is "
        "valid; invalid tasks are dropped with its reason.")] = False,
    poll_seconds: PollOpt = None, batch_rounds: RoundsOpt = None,
    batch_max_requests: FileReqOpt = None, batch_enqueued_tokens: EnqueuedOpt = None,
    batch_price_in: BatchInOpt = None, batch_price_out: BatchOutOpt = None,
    no_build: Annotated[bool, typer.Option(help="Stop after tasks; build later.")] = False,
    durability: Annotated[str | None, typer.Option(
        help="batched (default: synced about once a second) or always (every commit synced).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    hub_search: HubSearchOpt = None,
    hub_task_categories: HubTasksOpt = None,
    hub_modified_since: HubSinceOpt = None,
    hub_datasets: HubDatasetsOpt = None,
    hub_sort: HubSortOpt = None,
    hub_rpm: HubRpmOpt = None,
    hub_concurrency: HubConcurrencyOpt = None,
    hub_viewer_url: HubViewerOpt = None,
    config_file: ConfigOpt = None,
) -> None:
    """Generate tasks from metadata with an LLM, then build instances from rows."""
    try:
        cfg = _config(
            config_file, source=source, out=str(out), model=model, base_url=base_url,
            local=local or None, mode=mode, limit=limit, rows_per_split=rows_per_split,
            variants=variants, max_tasks_per_unit=max_tasks, response_format=response_format,
            max_tokens=max_tokens, calibration=str(calibration) if calibration else None,
            rpm=rpm, tpm=tpm, max_in_flight=max_in_flight, budget_usd=budget_usd,
            price_in=price_in, price_out=price_out, free=free or None,
            heldout_fraction=heldout_fraction, cache_path=str(cache) if cache else None,
            judge=judge or None,
            licenses=licenses, languages=languages, splits=splits, max_share=max_share,
            force_new=force_new or None, quiet=quiet or None, durability=durability,
            **_hub_flags(hub_search, hub_task_categories, hub_modified_since, hub_datasets,
                         hub_sort, hub_rpm, hub_concurrency, hub_viewer_url),
            **_batch_flags(poll_seconds, batch_rounds, batch_max_requests,
                           batch_enqueued_tokens, batch_price_in, batch_price_out),
        )
        outcome = api.run(cfg, handle_signals=True, build=not no_build)
    except DynogenError as e:
        _fail(e)
        return
    typer.echo(outcome.message, err=outcome.exit_code != 0)
    raise typer.Exit(outcome.exit_code)


@app.command()
def build(
    out: OutOpt = Path("runs/latest"),
    rows_per_split: Annotated[int | None, typer.Option(help="Rows read per split.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Build instances from a run directory's tasks (no LLM calls)."""
    try:
        outcome = api.build(out, rows_per_split=rows_per_split, quiet=quiet)
    except DynogenError as e:
        _fail(e)
        return
    typer.echo(outcome.message)


@app.command()
def collect(
    source: SourceOpt = "samples",
    out: Annotated[Path, typer.Option("--out", help="Folder for units-*.jsonl shards.")] = Path(
        "metadata"),
    limit: Annotated[int | None, typer.Option(help="At most N units.")] = None,
    shard_size: Annotated[int, typer.Option(help="Units per shard file.")] = 1000,
    hub_search: HubSearchOpt = None,
    hub_task_categories: HubTasksOpt = None,
    hub_modified_since: HubSinceOpt = None,
    hub_datasets: HubDatasetsOpt = None,
    hub_sort: HubSortOpt = None,
    hub_rpm: HubRpmOpt = None,
    hub_concurrency: HubConcurrencyOpt = None,
    hub_viewer_url: HubViewerOpt = None,
    config_file: ConfigOpt = None,
) -> None:
    """Read metadata from a source and write it as JSONL shards (input to `run`).

    With --source hub, also writes source.json (what was listed, and when), so a
    later incremental listing can start from --hub-modified-since.
    """
    from dynogen.io.hub_options import HubOptions

    try:
        cfg = _config(config_file, source=source, **_hub_flags(
            hub_search, hub_task_categories, hub_modified_since, hub_datasets, hub_sort,
            hub_rpm, hub_concurrency, hub_viewer_url))
        hub = HubOptions.from_config(cfg) if source == "hub" else None
        stats = api.collect(source, out, limit=limit, shard_size=shard_size, hub=hub)
    except DynogenError as e:
        _fail(e)
        return
    typer.echo(stats)


@app.command()
def estimate(
    source: SourceOpt = "samples",
    model: ModelOpt = None,
    limit: Annotated[int | None, typer.Option(help="At most N units.")] = None,
    variants: Annotated[str | None, typer.Option(help="Prompt variants.")] = None,
    max_tasks: Annotated[int | None, typer.Option("--max-tasks")] = None,
    max_tokens: MaxTokensOpt = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute limit.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute limit.")] = None,
    price_in: Annotated[float | None, typer.Option(help="$ per 1M input tokens.")] = None,
    price_out: Annotated[float | None, typer.Option(help="$ per 1M output tokens.")] = None,
    calibration: Annotated[Path | None, typer.Option(
        help="calibration.json (or a finished run directory) for expected output tokens.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    judge: Annotated[bool, typer.Option(
        "--judge", help="Include the judge's request per kept task.")] = False,
    licenses: LicensesOpt = None,
    languages: LanguagesOpt = None,
    splits: SplitsOpt = None,
    hub_search: HubSearchOpt = None,
    hub_task_categories: HubTasksOpt = None,
    hub_modified_since: HubSinceOpt = None,
    hub_datasets: HubDatasetsOpt = None,
    hub_sort: HubSortOpt = None,
    hub_rpm: HubRpmOpt = None,
    hub_concurrency: HubConcurrencyOpt = None,
    hub_viewer_url: HubViewerOpt = None,
    config_file: ConfigOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """Dry run: what `run` would send and cost (exact prompt tokens), with no LLM call."""
    import orjson

    from dynogen.commands.estimate import format_estimate

    try:
        cfg = _config(config_file, source=source, model=model, limit=limit, variants=variants,
                      max_tasks_per_unit=max_tasks, max_tokens=max_tokens,
                      rpm=rpm, tpm=tpm, price_in=price_in,
                      price_out=price_out, licenses=licenses, languages=languages,
                      splits=splits, judge=judge or None, **_hub_flags(
                          hub_search, hub_task_categories, hub_modified_since, hub_datasets,
                          hub_sort, hub_rpm, hub_concurrency, hub_viewer_url))
        est = api.estimate(cfg, calibration=calibration, collection=collection)
    except DynogenError as e:
        _fail(e)
        return
    if as_json:
        typer.echo(orjson.dumps(est.to_dict()).decode())
    else:
        typer.echo(format_estimate(est))


@app.command()
def call(
    requests: Annotated[Path, typer.Argument(help="Batch API input file (JSONL).")],
    out: Annotated[Path, typer.Option("--out", help="Answers, in Batch API output format.")],
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    mode: ModeOpt = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute limit.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute limit.")] = None,
    max_in_flight: Annotated[int | None, typer.Option(
        help="Cap on requests in flight (default: from the limits and answer times).")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="Hard budget in dollars.")] = None,
    price_in: Annotated[float | None, typer.Option(help="$ per 1M input tokens.")] = None,
    price_out: Annotated[float | None, typer.Option(help="$ per 1M output tokens.")] = None,
    free: Annotated[bool, typer.Option(help="Declare the server free.")] = False,
    cache: Annotated[Path | None, typer.Option("--cache", help="Request cache file.")] = None,
    poll_seconds: PollOpt = None, batch_rounds: RoundsOpt = None,
    batch_max_requests: FileReqOpt = None, batch_enqueued_tokens: EnqueuedOpt = None,
    batch_price_in: BatchInOpt = None, batch_price_out: BatchOutOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    config_file: ConfigOpt = None,
) -> None:
    """Send a Batch API input file's requests (online, or as Batch API jobs) with run's
    limiter, budget and cache."""
    try:
        cfg = _config(config_file, model=model, base_url=base_url, mode=mode, rpm=rpm, tpm=tpm,
                      max_in_flight=max_in_flight, budget_usd=budget_usd, price_in=price_in,
                      price_out=price_out, free=free or None,
                      cache_path=str(cache) if cache else None, quiet=quiet or None,
                      **_batch_flags(poll_seconds, batch_rounds, batch_max_requests,
                                     batch_enqueued_tokens, batch_price_in, batch_price_out))
        outcome = api.call(cfg, requests, out, handle_signals=True)
    except DynogenError as e:
        _fail(e)
        return
    typer.echo(outcome.message, err=outcome.exit_code != 0)
    raise typer.Exit(outcome.exit_code)


@app.command("inspect")
def inspect_cmd(
    out: Annotated[Path, typer.Argument(help="A run directory (the --out of `dynogen run`).")],
    kept: Annotated[int, typer.Option(help="Kept tasks to show.")] = 10,
    per_reason: Annotated[int, typer.Option(help="Dropped tasks to show per reason.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show what the filters did: kept and dropped tasks with instances, shares per source."""
    import orjson

    from dynogen.commands.inspect import format_inspection

    try:
        ins = api.inspect(out, kept=kept, per_reason=per_reason)
    except DynogenError as e:
        _fail(e)
        return
    typer.echo(orjson.dumps(ins.to_dict()).decode() if as_json else format_inspection(ins))


@app.command("serve-local")
def serve_local(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8080,
) -> None:
    """Serve the bundled SmolLM2-135M with llama.cpp on 127.0.0.1 until Ctrl-C."""
    from dynogen.execute.local_server import serve_forever

    try:
        serve_forever(port=port or None)
    except DynogenError as e:
        _fail(e)


@app.command()
def export(
    out: OutOpt = Path("runs/latest"),
    fmt: Annotated[str, typer.Option("--format", help="parquet or datasets (or jsonl, with "
                                     "--collection).")] = "parquet",
    dest: Annotated[Path | None, typer.Option(help="Where to write (default OUT/export).")] = None,
    collection: CollectionOpt = None,
) -> None:
    """Export instances.jsonl to Parquet or a `datasets` folder."""
    try:
        path = api.export(out, fmt=fmt, dest=dest, collection=collection)
    except DynogenError as e:
        _fail(e)
        return
    typer.echo(f"exported to {path}")


# --- collections: grow (and replay, below) -------------------------------------------------
@app.command()
def grow(
    collection: Annotated[Path, typer.Argument(help="Collection folder (created if new).")],
    source: SourceOpt = "samples",
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    mode: ModeOpt = None,
    local: Annotated[bool, typer.Option(
        "--local", help="Start the bundled llama.cpp server with SmolLM2-135M and use it.")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Read at most N units.")] = None,
    rows_per_split: Annotated[int | None, typer.Option(help="Rows read per split.")] = None,
    variants: Annotated[str | None, typer.Option(
        help="Prompt variants: description,no_description (default both).")] = None,
    max_tasks: Annotated[int | None, typer.Option(
        "--max-tasks", help="Tasks asked per unit and variant.")] = None,
    response_format: Annotated[str | None, typer.Option(
        help="json_schema (default), json_object or none.")] = None,
    max_tokens: MaxTokensOpt = None,
    calibration: CalibrationOpt = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute limit.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute limit.")] = None,
    max_in_flight: Annotated[int | None, typer.Option(help="Concurrent requests cap.")] = None,
    budget_usd: Annotated[float | None, typer.Option(
        help="Hard budget in dollars for this grow step (across its resumes).")] = None,
    price_in: Annotated[float | None, typer.Option(help="$ per 1M input tokens.")] = None,
    price_out: Annotated[float | None, typer.Option(help="$ per 1M output tokens.")] = None,
    free: Annotated[bool, typer.Option(help="Declare the server free (local models).")] = False,
    heldout_fraction: Annotated[float | None, typer.Option(
        help="Fraction of tasks held out (by task, not row).")] = None,
    judge: Annotated[bool, typer.Option(
        "--judge", help="One more request per kept task: the model judges whether it is "
        "valid; invalid tasks are dropped with its reason.")] = False,
    licenses: LicensesOpt = None,
    languages: LanguagesOpt = None,
    splits: SplitsOpt = None,
    max_share: MaxShareOpt = None,
    poll_seconds: PollOpt = None, batch_rounds: RoundsOpt = None,
    batch_max_requests: FileReqOpt = None, batch_enqueued_tokens: EnqueuedOpt = None,
    batch_price_in: BatchInOpt = None, batch_price_out: BatchOutOpt = None,
    durability: Annotated[str | None, typer.Option(
        help="batched (default: synced about once a second) or always (every commit synced).")
    ] = None,
    hub_search: HubSearchOpt = None,
    hub_task_categories: HubTasksOpt = None,
    hub_modified_since: HubSinceOpt = None,
    hub_datasets: HubDatasetsOpt = None,
    hub_sort: HubSortOpt = None,
    hub_rpm: HubRpmOpt = None,
    hub_concurrency: HubConcurrencyOpt = None,
    hub_viewer_url: HubViewerOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    config_file: ConfigOpt = None,
) -> None:
    """Add a version to a collection with only what is new or changed in --source."""
    try:
        cfg = _config(
            config_file, source=source, model=model, base_url=base_url, local=local or None,
            mode=mode,
            limit=limit, rows_per_split=rows_per_split, variants=variants,
            max_tasks_per_unit=max_tasks, response_format=response_format, rpm=rpm, tpm=tpm,
            max_tokens=max_tokens, calibration=str(calibration) if calibration else None,
            max_in_flight=max_in_flight, budget_usd=budget_usd, price_in=price_in,
            price_out=price_out, free=free or None, heldout_fraction=heldout_fraction,
            judge=judge or None, quiet=quiet or None, licenses=licenses, languages=languages,
            splits=splits, max_share=max_share, durability=durability, **_hub_flags(
                hub_search, hub_task_categories, hub_modified_since, hub_datasets, hub_sort,
                hub_rpm, hub_concurrency, hub_viewer_url),
            **_batch_flags(poll_seconds, batch_rounds, batch_max_requests,
                           batch_enqueued_tokens, batch_price_in, batch_price_out),
        )
        outcome = api.grow(collection, cfg, handle_signals=True)
    except DynogenError as e:
        _fail(e)
        return
    typer.echo(outcome.message, err=outcome.exit_code != 0)
    raise typer.Exit(outcome.exit_code)


@app.command()
def replay(
    collection: Annotated[Path, typer.Argument(help="A collection with two versions or more.")],
    k: Annotated[int, typer.Option("--k", help="Tasks to pick from the earlier versions.")],
    out: Annotated[Path, typer.Option("--out", help="Chosen tasks (JSONL: rank, task_id, "
                                      "instruction, dataset, config, version).")],
    strategy: Annotated[str, typer.Option(
        help="diverse-instruction, diverse-data or random.")] = "diverse-instruction",
    ratio: Annotated[float, typer.Option(
        help="Replayed instances per instance of the newest version.")] = 0.1,
    mixed_out: Annotated[Path | None, typer.Option(
        help="Mixed training file (default: OUT's name + '-mixed.jsonl').")] = None,
    embed_model: Annotated[str | None, typer.Option(
        help="Embedding model at --base-url's /embeddings (default: local lexical TF-IDF, "
        "no model).")] = None,
    base_url: BaseUrlOpt = None,
    embed_dims: Annotated[int, typer.Option(help="Vector size kept per text.")] = 256,
    embed_batch: Annotated[int, typer.Option(help="Texts per embeddings request.")] = 128,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute limit.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute limit.")] = None,
    max_in_flight: Annotated[int | None, typer.Option(help="Concurrent requests cap.")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="Hard budget for embeddings.")] = None,
    price_in: Annotated[float | None, typer.Option(help="$ per 1M input tokens.")] = None,
    free: Annotated[bool, typer.Option(help="Declare the server free.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random strategy.")] = 0,
    config_file: ConfigOpt = None,
) -> None:
    """Pick tasks from a collection's earlier versions to replay beside its newest one."""
    try:
        embed = None
        if embed_model is not None:
            embed = _config(config_file, model=embed_model, base_url=base_url, rpm=rpm, tpm=tpm,
                            max_in_flight=max_in_flight, budget_usd=budget_usd,
                            price_in=price_in, price_out=0.0 if price_in is not None else None,
                            free=free or None, quiet=True)
        res = api.replay(collection, k=k, strategy=strategy, out=out, ratio=ratio,
                         mixed=mixed_out, embed=embed, dims=embed_dims, batch=embed_batch,
                         seed=seed)
    except DynogenError as e:
        _fail(e)
        return
    cos = f", mean cosine {res.mean_cosine}" if res.mean_cosine is not None else ""
    typer.echo(f"replay: {len(res.chosen)} of {res.pool} earlier tasks ({res.strategy}{cos}) "
               f"-> {res.out}; mixed file {res.mixed}: {res.new_instances} new + "
               f"{res.replayed_instances} replayed instances")


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="dynogen")
    except KeyboardInterrupt:
        typer.echo("dynogen: interrupted", err=True)
        sys.exit(api.EXIT["interrupted"])


if __name__ == "__main__":
    main()
