"""``dynogen`` on the command line: a thin layer over ``dynogen.api``.

Every command maps its options onto one ``Config`` and calls the API function
of the same name. The options are declared once, in groups, in
``dynogen.cli.options``, and each is named as its ``Config``/TOML key.

The directory a command works on is its positional argument: RUN_DIR for
``run``, ``build``, ``export``, ``inspect`` and ``batch status|cancel``;
COLLECTION for ``grow``, ``replay`` and ``estimate`` (the next grow step);
``export`` takes either. The ``--out`` and ``--collection`` options they used
to take still work, hidden from ``--help``. (``--out`` of ``collect``, ``call``
and ``replay`` names what they write, not a directory they work on.)

Errors are caught in one place, ``Dynogen.invoke``: a ``DynogenError`` prints one
line (``dynogen: error: …``) and exits with ``dynogen.api.exit_code``'s code from
``dynogen.api.EXIT``: 0 done, 1 error, 3 budget reached, 4 fatal API error,
130 interrupted.

Plain click rather than typer: the option groups are decorators that add click
options, which typer (options read from each function's signature) cannot share.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import click

import dynogen
from dynogen.cli.options import (
    BATCH,
    COST,
    DATA,
    GENERATION,
    LIMITS,
    MODEL,
    OUTPUT,
    SOURCE,
    Command,
    config_option,
    directory,
    settings,
)
from dynogen.config import load_config
from dynogen.errors import DynogenError

__all__ = ["Dynogen", "app", "main"]

if TYPE_CHECKING:
    from dynogen import api
else:
    class _Lazy:
        """``dynogen.api`` imported when a command runs, not for ``--help`` (a light start)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(importlib.import_module("dynogen.api"), name)

    api = _Lazy()


class Dynogen(click.Group):
    """The ``dynogen`` group: commands listed in the order they are added, and the one
    place a ``DynogenError`` becomes a line on stderr and an exit code."""

    command_class = Command

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DynogenError as e:
            click.echo(f"dynogen: error: {e}", err=True)
            ctx.exit(api.exit_code(e))
        except KeyboardInterrupt:
            click.echo("dynogen: interrupted", err=True)
            ctx.exit(api.EXIT["interrupted"])


Dynogen.group_class = Dynogen


@click.group(cls=Dynogen, no_args_is_help=True,
             help="Grow instruction-tuning data from dataset metadata (after Dynosaur).")
@click.version_option(dynogen.__version__, "--version", prog_name="dynogen",
                      message="%(prog)s %(version)s", help="Print the version and exit.")
def app() -> None:
    pass


NO_BUILD = click.option("--no-build", is_flag=True, default=False,
                        help="Stop after the tasks; build instances later (run: `dynogen "
                        "build`; grow: `dynogen build COLLECTION` or the next grow finishes the "
                        "version).")
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
RUN_GROUPS = (SOURCE, MODEL, GENERATION, DATA, LIMITS, COST, BATCH)


def _done(outcome: Any) -> None:
    """Print a run-like outcome's message and exit with its code."""
    click.echo(outcome.message, err=outcome.exit_code != 0)
    click.get_current_context().exit(outcome.exit_code)


@app.command()
@directory("run_dir", "Run directory (resumed if it exists; default: `out` in --config, else "
           "runs/latest).", old=("--out",))
@NO_BUILD
@config_option
@settings(*RUN_GROUPS, OUTPUT)
def run(run_dir: str | None, no_build: bool, config_file: str | None, **values: Any) -> None:
    """Generate tasks from metadata with an LLM, then build instances from rows."""
    cfg = load_config(config_file, out=run_dir, **values)
    _done(api.run(cfg, handle_signals=True, build=not no_build))


@app.command()
@directory("run_dir", "A run directory (default runs/latest), or a collection: its version "
           "left unfinished by `grow --no-build`, built against the earlier versions and "
           "then complete.", default="runs/latest", old=("--out",))
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="local: one process writes instances.jsonl. ray: a Ray "
              "cluster writes instances/part-*.parquet (pip install 'dynogen[ray]'); the same "
              "set of instances.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="With --engine ray: join the cluster at ADDR (host:port, or 'auto'); "
              "without it a local Ray instance starts.")
@settings(DATA.pick("rows_per_split"), OUTPUT.pick("retry_skipped", "quiet"))
def build(run_dir: str, engine: str, ray_address: str | None, rows_per_split: int | str | None,
          retry_skipped: str | None, quiet: bool | None) -> None:
    """Build instances from a run directory's or a collection's tasks (no LLM calls); Ctrl-C
    stops it and the same command resumes it."""
    retry = (tuple(r.strip() for r in retry_skipped.split(",") if r.strip())
             if retry_skipped else None)
    _done(api.build(run_dir, rows_per_split=rows_per_split, quiet=bool(quiet),
                    retry_skipped=retry, engine=engine, ray_address=ray_address))


@app.command()
@click.option("--out", default="metadata", show_default=True, type=click.Path(),
              help="Folder for units-*.jsonl shards.")
@click.option("--shard-size", default=1000, show_default=True, help="Units per shard file.")
@config_option
@settings(SOURCE)
def collect(out: str, shard_size: int, config_file: str | None, **values: Any) -> None:
    """Read metadata from a source and write it as JSONL shards (input to `run`).

    With --source hub, also writes source.json (what was listed, and when), so a
    later incremental listing can start from --hub-modified-since.
    """
    from dynogen.io.hub_options import HubOptions

    cfg = load_config(config_file, **values)
    hub = HubOptions.from_config(cfg) if cfg.source == "hub" else None
    click.echo(api.collect(cfg.source, out, limit=cfg.limit, shard_size=shard_size, hub=hub))


@app.command()
@directory("collection", "A collection (see `grow`): estimate only its next step, the new "
           "and changed units.", old=("--collection",))
@JSON
@config_option
@settings(SOURCE, MODEL, GENERATION, DATA, LIMITS.pick("rpm", "tpm"),
          COST.without("budget_usd"))
def estimate(collection: str | None, as_json: bool, calibration: str | None,
             config_file: str | None, **values: Any) -> None:
    """Dry run: what `run` would send and cost (exact prompt tokens), with no LLM call."""
    import orjson

    from dynogen.commands.estimate import format_estimate

    # --calibration is estimate's own argument (expected output tokens, and the sizes
    # --max-tokens auto would take), not the run setting that requires auto.
    cfg = load_config(config_file, **values)
    est = api.estimate(cfg, calibration=calibration, collection=collection)
    click.echo(orjson.dumps(est.to_dict()).decode() if as_json else format_estimate(est))


@app.command()
@click.argument("requests", type=click.Path(dir_okay=False), metavar="REQUESTS",
                help="Batch API input file (JSONL).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Answers, in Batch API output format.")
@config_option
@settings(MODEL.without("local"), LIMITS, COST, BATCH, OUTPUT.pick("cache_path", "quiet"))
def call(requests: str, out: str, config_file: str | None, **values: Any) -> None:
    """Send a Batch API input file's requests (online, or as Batch API jobs) with run's
    limiter, budget and cache."""
    cfg = load_config(config_file, **values)
    _done(api.call(cfg, requests, out, handle_signals=True))


@app.command("inspect")
@directory("run_dir", "A run directory (what `dynogen run` wrote).", required=True)
@click.option("--kept", default=10, show_default=True, help="Kept tasks to show.")
@click.option("--per-reason", default=3, show_default=True,
              help="Dropped tasks to show per reason.")
@JSON
def inspect_cmd(run_dir: str, kept: int, per_reason: int, as_json: bool) -> None:
    """Show what the filters did: kept and dropped tasks with instances, shares per source."""
    import orjson

    from dynogen.commands.inspect import format_inspection

    ins = api.inspect(run_dir, kept=kept, per_reason=per_reason)
    click.echo(orjson.dumps(ins.to_dict()).decode() if as_json else format_inspection(ins))


@app.command()
@directory("target", "A run directory or a collection (default runs/latest).",
           default="runs/latest")
@click.option("--json", "as_json", is_flag=True, help="Print status.json as it is.")
@click.option("--watch", "watch_seconds", type=float, default=None, metavar="SECONDS",
              help="Print it again every SECONDS until the run ends (Ctrl-C to leave).")
def status(target: str, as_json: bool, watch_seconds: float | None) -> None:
    """What a run or a grow step is doing now: read from status.json, without the lock, from
    any terminal, for online and batch runs alike."""
    import time
    from pathlib import Path

    import orjson

    from dynogen.commands.watch import format_status

    while True:
        data = api.status(target)
        if as_json:
            click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        else:
            click.echo(format_status(data, Path(target)))
        running = data is not None and data.get("written_by_pid_alive") and data.get(
            "stage") in ("starting", "tasks", "instances")
        if watch_seconds is None or not running:
            return
        time.sleep(watch_seconds)
        click.echo("")


@app.command("serve-local")
@click.option("--port", default=8080, show_default=True,
              help="Port on 127.0.0.1 (0 picks a free one).")
def serve_local(port: int) -> None:
    """Serve the bundled SmolLM2-135M with llama.cpp on 127.0.0.1 until Ctrl-C."""
    from dynogen.execute.local_server import serve_forever

    serve_forever(port=port or None)


@app.command()
@directory("target", "A run directory (default runs/latest), or a collection: its merged "
           "view (every version, superseded tasks left out).", metavar="RUN_DIR|COLLECTION",
           default="runs/latest")
@click.option("--repo", required=True, metavar="ORG/NAME",
              help="The Hub dataset repository; created private if it does not exist.")
@click.option("--public", is_flag=True,
              help="Create the repository public (an existing repository keeps its visibility).")
@click.option("--dry-run", is_flag=True, help="Show what would be sent (each file's path, size, "
              "sha256 and action) and the card; send nothing.")
@click.option("--allow-restricted-licenses", is_flag=True, help="Let a public repository hold "
              "data from non-commercial, no-derivatives, 'other' or unknown-licence sources, "
              "once you have checked their terms.")
@click.option("--rows-per-shard", type=int, default=100_000, show_default=True, metavar="N",
              help="Rows per Parquet shard.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No upload progress bars.")
def publish(target: str, repo: str, public: bool, dry_run: bool,
            allow_restricted_licenses: bool, rows_per_shard: int, as_json: bool,
            quiet: bool) -> None:
    """Publish instances to a Hugging Face dataset repository as Parquet shards with a dataset
    card; sends only what changed, and the same command resumes a cut-off publish. The token
    comes from HF_TOKEN or a stored login (never a flag), the endpoint from HF_ENDPOINT."""
    if quiet:
        from huggingface_hub.utils.tqdm import disable_progress_bars

        disable_progress_bars()
    res = api.publish(target, repo=repo, public=public, dry_run=dry_run,
                      allow_restricted_licenses=allow_restricted_licenses,
                      rows_per_shard=rows_per_shard)
    if as_json:
        import dataclasses

        import orjson

        click.echo(orjson.dumps(dataclasses.asdict(res), default=str).decode())
        return
    click.echo(res.summary())
    if dry_run:
        for f in res.files:
            click.echo(f"  {f.action:9} {f.size:>12,}  {f.path}")
        click.echo("")
        click.echo(res.card)


@app.command()
@directory("target", "A run directory (default runs/latest), or a collection: its merged "
           "view (every version, superseded tasks left out).", metavar="RUN_DIR|COLLECTION",
           default="runs/latest", old=("--out", "--collection"))
@click.option("--format", "fmt", default="parquet", show_default=True, metavar="FORMAT",
              help="parquet or datasets (or jsonl, for a collection).")
@click.option("--dest", type=click.Path(), help="Where to write (default DIR/export).")
def export(target: str, fmt: str, dest: str | None) -> None:
    """Export instances to Parquet or a `datasets` folder."""
    from dynogen.store.collection import Collection

    if Collection(target).exists():
        path = api.export(fmt=fmt, dest=dest, collection=target)
    else:
        path = api.export(target, fmt=fmt, dest=dest)
    click.echo(f"exported to {path}")


# --- collections: grow and replay ----------------------------------------------------------
@app.command()
@directory("collection", "Collection folder (created if new).", required=True)
@NO_BUILD
@config_option
@settings(*RUN_GROUPS, OUTPUT.without("force_new", "cache_path"))
def grow(collection: str, no_build: bool, config_file: str | None, **values: Any) -> None:
    """Add a version to a collection with only what is new or changed in --source."""
    cfg = load_config(config_file, **values)
    _done(api.grow(collection, cfg, handle_signals=True, build=not no_build))


@app.command()
@directory("collection", "A collection with two versions or more.", required=True)
@click.option("--k", "k", type=int, required=True,
              help="Tasks to pick from the earlier versions.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Chosen tasks (JSONL: rank, task_id, instruction, dataset, config, "
              "version).")
@click.option("--strategy", default="diverse-instruction", show_default=True,
              help="diverse-instruction, diverse-data or random.")
@click.option("--ratio", default=0.1, show_default=True,
              help="Replayed instances per instance of the newest version.")
@click.option("--mixed-out", type=click.Path(dir_okay=False),
              help="Mixed training file (default: OUT's name + '-mixed.jsonl').")
@click.option("--embed-model", help="Embedding model at --base-url's /embeddings (default: "
              "local lexical TF-IDF, no model).")
@click.option("--embed-dims", default=256, show_default=True, help="Vector size kept per text.")
@click.option("--embed-batch", default=128, show_default=True,
              help="Texts per embeddings request.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random strategy.")
@config_option
@settings(MODEL.pick("base_url", "api_key_env"), LIMITS,
          COST.pick("budget_usd", "price_in", "free", "prices_file", "price_key"))
def replay(collection: str, k: int, out: str, strategy: str, ratio: float,
           mixed_out: str | None, embed_model: str | None, embed_dims: int, embed_batch: int,
           seed: int, config_file: str | None, **values: Any) -> None:
    """Pick tasks from a collection's earlier versions to replay beside its newest one."""
    embed = None
    if embed_model is not None:
        # An embeddings endpoint bills input only.
        price_out = 0.0 if values["price_in"] is not None else None
        embed = load_config(config_file, model=embed_model, price_out=price_out, quiet=True,
                            **values)
    res = api.replay(collection, k=k, strategy=strategy, out=out, ratio=ratio, mixed=mixed_out,
                     embed=embed, dims=embed_dims, batch=embed_batch, seed=seed)
    cos = f", mean cosine {res.mean_cosine}" if res.mean_cosine is not None else ""
    click.echo(f"replay: {len(res.chosen)} of {res.pool} earlier tasks ({res.strategy}{cos}) "
               f"-> {res.out}; mixed file {res.mixed}: {res.new_instances} new + "
               f"{res.replayed_instances} replayed instances")


# --- dynogen batch status|cancel -------------------------------------------------------------
@app.group(no_args_is_help=True, help="Inspect or cancel the Batch API jobs of a run started "
           "with --mode batch (works while the run polls).")
def batch() -> None:
    pass


BATCH_DIR = directory("run_dir", "The run directory (for call: OUT.batches).", required=True,
                      old=("--out",))
BATCH_URL = click.option("--base-url", help="The server (default: the one the run used).")


@batch.command("status")
@BATCH_DIR
@BATCH_URL
@click.option("--json", "as_json", is_flag=True, help="One JSON object a batch.")
def batch_status(run_dir: str, base_url: str | None, as_json: bool) -> None:
    """List the run's batches: state, request counts, age, cost so far."""
    import orjson

    from dynogen.execute.batch_admin import format_status

    rows = api.batch_status(run_dir, base_url=base_url)
    if as_json:
        for r in rows:
            click.echo(orjson.dumps(r).decode())
    else:
        click.echo(format_status(rows))


@batch.command("cancel")
@BATCH_DIR
@BATCH_URL
def batch_cancel(run_dir: str, base_url: str | None) -> None:
    """Cancel the run's running batches; finished answers are kept, a resume redoes the rest."""
    rows = api.batch_cancel(run_dir, base_url=base_url)
    for r in rows:
        click.echo(f"{r['name']}  {r['batch_id']}  {r['status']}")
    click.echo(f"{sum(r['status'] in ('cancelling', 'cancelled') for r in rows)} batches "
               "cancelled or cancelling")


def main(argv: list[str] | None = None) -> None:
    app.main(args=argv, prog_name="dynogen")


if __name__ == "__main__":
    main()
