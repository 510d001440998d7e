"""The ``cflab`` command.

One small function per subcommand (``cmd_<name>(args) -> int``) and one :func:`build_parser`
that registers them; add a subcommand by writing its function and an ``_add_<name>`` parser
helper, then listing it in :data:`SUBCOMMANDS`.

Exit codes: 0 success; 1 the data failed a limit the user set (:class:`DataOverLimit`: too
many quarantined rows for ``cflab validate --max-invalid-fraction`` or an audit's
``runtime.max_invalid_fraction``, too many failed work items); 2 anything else that stops a
command: usage, configuration, data or I/O errors, and any unexpected error. Every failure is
one line ``cflab: error: <message>`` on stderr, naming the key or path at fault; a traceback
only with ``--debug``.

Commands that run the audit flow check the whole config first (``preflight.check_audit``),
before Prefect is imported or a server started, and start a temporary Prefect server of their
own when ``PREFECT_API_URL`` is unset (``flows/temporary_server.py``: it never outlives cflab).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from counterfactual_lab.demo.inputs import prepare_demo
from counterfactual_lab.errors import DataOverLimit, TooManyFailedItems, UserError
from counterfactual_lab.report.terminal import printable
from counterfactual_lab.storage.files import credentials_hint, exists, is_credentials_error, join
from counterfactual_lab.storage.redaction import mask_known, remember_secrets
from counterfactual_lab.version import __version__

EXIT_OK = 0
EXIT_OVER_LIMIT = 1
EXIT_USAGE = 2

# Console verbosity (see flows/console.py): set from --verbose / --debug by main().
_verbosity = "quiet"


def status(message: str) -> None:
    """Say what cflab is doing (on stderr, so stdout stays the command's result)."""
    print(f"cflab: {printable(message)}", file=sys.stderr, flush=True)


def cmd_validate(args: argparse.Namespace) -> int:
    """Ingest and validate a dataset; write quarantine.parquet, validation.json, expectations.json."""
    # here, not at the top: it imports pydantic
    from counterfactual_lab.config.dataset_spec import DatasetSpec

    # here, not at the top: it imports polars, pyarrow, pydantic
    from counterfactual_lab.ingest.validation import ingest_and_validate, write_validation_outputs

    # here, not at the top: it imports pydantic
    from counterfactual_lab.storage.redaction import redact_text

    if args.spec:
        spec = DatasetSpec.from_yaml(args.spec)
        if args.dataset_uri:
            spec = spec.model_copy(update={"uri": args.dataset_uri})
    elif args.dataset_uri:
        spec = DatasetSpec.for_uri(args.dataset_uri)
    else:
        raise UserError("validate needs a DATASET_URI or --spec FILE")
    remember_secrets(spec.model_dump())  # inline credentials: masked in any error line
    if spec.storage_options_secret:  # a Prefect Secret block: read through the flows layer
        # here, not at the top: it imports Prefect
        from counterfactual_lab.flows.secrets import load_secret_options

        found = load_secret_options(spec.storage_options_secret, "dataset spec storage_options_secret")
        spec = spec.model_copy(update={"storage_options": {**found, **spec.storage_options}})
    outcome = ingest_and_validate(spec, batch_rows=args.batch_rows)
    write_validation_outputs(outcome, args.out)

    print(f"dataset: {printable(redact_text(spec.uri))}")
    print(f"rows read: {outcome.rows_in}")
    print(f"valid: {outcome.valid.height}")
    print(f"quarantined: {outcome.quarantined} ({outcome.quarantined_fraction:.1%})")
    for reason, count in sorted(outcome.by_reason.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {printable(reason)}: {count}")
    names = ", ".join(join(args.out, n) for n in ("quarantine.parquet", "validation.json", "expectations.json"))
    print(f"wrote {names}")
    if outcome.quarantined_fraction > args.max_invalid_fraction:
        print(
            f"cflab: quarantined fraction {outcome.quarantined_fraction:.3f} is over the limit "
            f"{args.max_invalid_fraction:.3f} (--max-invalid-fraction)",
            file=sys.stderr,
        )
        return EXIT_OVER_LIMIT
    return EXIT_OK


def cmd_sample_dataset(args: argparse.Namespace) -> int:
    """Write the synthetic sample dataset."""
    # here, not at the top: it imports pyarrow, pydantic
    from counterfactual_lab.demo.sample_dataset import write_sample_dataset

    if "://" in args.out and not args.out.startswith("file://"):
        raise UserError(
            f"sample-dataset writes to a local folder, not {args.out}; write it locally, then copy it "
            "(e.g. `aws s3 cp --recursive DIR s3://bucket/prefix`)"
        )
    out = write_sample_dataset(args.out, rows=args.rows, seed=args.seed, image_size=args.image_size, files=args.files)
    print(f"wrote {args.rows} rows to {out}")
    return EXIT_OK


def cmd_models_tiny(args: argparse.Namespace) -> int:
    """Build the tiny random-weight models (the demo's four, text2image, inpaint and clipseg, a
    generative VLM and the text models scoring its answers: toxicity, sentiment, a text embedder)."""
    # here, not at the top: it imports torch
    from counterfactual_lab.demo.tiny_models import ALL_TINY_MODEL_NAMES, build_tiny_models

    for name, path in build_tiny_models(args.dir, names=ALL_TINY_MODEL_NAMES).items():
        print(f"{name}: {path}")
    return EXIT_OK


def _run_audit_flow(config: str, dataset: str | None, out: str | None, evaluate: bool, force: bool = False,
                    prefect_home: Path | None = None) -> str:
    """Check the config, then run the Prefect audit flow (imported here: the library itself never
    imports Prefect) on ``PREFECT_API_URL`` or a temporary server (its state in ``prefect_home``
    when given)."""
    # here, not at the top: it imports pydantic
    from counterfactual_lab.config.audit_config import AuditConfig

    # here, not at the top: it imports pydantic
    from counterfactual_lab.runs.preflight import check_audit, check_config

    audit_config = AuditConfig.from_yaml(config)
    # inline credentials and URL passwords (also in --dataset/--out): masked in any error line
    remember_secrets(audit_config.model_dump(), dataset, out)
    # The spec and generation.params first: a typo is one line in about a second, before any
    # storage is asked anything (the completeness check below lists the dataset).
    spec = check_config(audit_config, dataset)
    remember_secrets(spec.model_dump())  # a spec file's inline credentials too
    if not force and not _needs_secret_block(audit_config, spec):
        # An unchanged complete run is answered from the output store alone: no Prefect, no torch.
        done = _complete_run(audit_config, dataset, out, evaluate)
        if done is not None:
            return done
    # Every key of the config (generation.params included), before Prefect starts a flow run or
    # a server: a bad config is one line in seconds and leaves no run folder.
    check_audit(audit_config, dataset, evaluate=evaluate)
    # the flows layer: the library never imports Prefect
    from counterfactual_lab.flows.temporary_server import prefect_api

    with prefect_api(status, prefect_home=prefect_home):
        # Prefect, once the server is up
        from counterfactual_lab.flows.audit import dataset_audit

        # Prefect's logging
        from counterfactual_lab.flows.console import configure_console

        configure_console(_verbosity)
        return dataset_audit(config_uri=config, dataset_uri=dataset, output_uri=out, evaluate=evaluate, force=force)


def _needs_secret_block(config, spec) -> bool:
    """True when the dataset's or the output's credentials live in a Prefect Secret block: only
    the flow (with Prefect) can read them, so the no-Prefect shortcut cannot locate the run."""
    return bool(spec.storage_options_secret or config.output.storage_options_secret)


def _complete_run(config, dataset: str | None, out: str | None, evaluate: bool) -> str | None:
    """The run folder when this exact run (same config, models and data) is already complete, else None.

    Best effort: whatever stops it from locating the run without Prefect (storage that wants
    credentials this process lacks, an unreachable endpoint, a bad model path) means "not known
    to be complete"; the flow then decides, after the full config check, and reports any real
    problem as its own one-line error.
    """
    # here, not at the top: it imports polars
    from counterfactual_lab.report.reviewed import REVIEW_APPLIED, REVIEW_NEEDS_RERUN, refresh_review

    # here, not at the top: it imports polars, pyarrow, pydantic
    from counterfactual_lab.runs.location import locate_run

    # here, not at the top: it imports polars
    from counterfactual_lab.runs.publisher import is_complete

    # here, not at the top: it imports pydantic
    from counterfactual_lab.storage.regular_files import UnreadableFile

    try:
        location = locate_run(config, dataset, out, evaluate)
        complete = is_complete(location.run_uri, location.storage_options)
        # People's labels arrived after the run: apply new ones; a different set of rejected sets
        # to leave out (review.exclude_rejected) needs the stages again, which the flow runs.
        review = refresh_review(location.run_uri, config.review.exclude_rejected, location.storage_options) \
            if complete else None
    except UnreadableFile:
        raise  # a FIFO or a huge file where the manifest should be: the flow would meet it too
    except Exception:  # noqa: BLE001 - a shortcut: any other failure falls through to the full path
        return None
    if not complete or review == REVIEW_NEEDS_RERUN:
        return None
    applied = "; people's new labels applied to it" if review == REVIEW_APPLIED else ""
    print(f"cflab: run {location.run_id} is already complete (same config, models and data){applied}; "
          "--force runs it again", file=sys.stderr)
    return location.run_uri


def cmd_generate(args: argparse.Namespace) -> int:
    """ingest → validate → generate → judge; writes counterfactuals.parquet, quarantine.parquet, manifest.json."""
    run_uri = _run_audit_flow(args.config, args.dataset, args.out, evaluate=False, force=args.force)
    print(f"run: {run_uri}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """The whole audit; prints where the report is."""
    # here, not at the top: it imports polars
    from counterfactual_lab.runs.publisher import REPORT_NAME

    run_uri = _run_audit_flow(args.config, args.dataset, args.out, evaluate=True, force=args.force)
    print(f"run: {run_uri}")
    print(f"report: {join(run_uri, REPORT_NAME)}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Print a finished run's headline metrics, or list the runs of an output folder."""
    # here, not at the top: it imports polars, pydantic
    from counterfactual_lab.report.text import report_text

    # here, not at the top: it imports polars
    from counterfactual_lab.runs.failure import failure_banner

    # here, not at the top: it imports polars
    from counterfactual_lab.runs.publisher import MANIFEST_NAME

    # here, not at the top: it imports polars
    from counterfactual_lab.runs.reader import read_run

    print(report_text(args.run_uri), end="")
    if exists(join(args.run_uri.rstrip("/"), MANIFEST_NAME)):  # one run, not a folder of runs
        run = read_run(args.run_uri)
        if run.failed:  # finished, but not an audit to rely on: exit 1 like the audit did
            raise TooManyFailedItems(failure_banner(run.manifest))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    """Two runs side by side (compare.html and a table), or the runs of an output folder over time (history.html)."""
    if args.history:
        if args.runs:
            raise UserError("cflab compare: give two runs (RUN_A RUN_B) or --history OUT, not both")
        # here, not at the top: it imports polars and matplotlib
        from counterfactual_lab.report.history import HISTORY_NAME, run_history

        history = run_history(args.history)
        print(history.text(), end="")
        print(f"history: {history.write(args.out or join(args.history.rstrip('/'), HISTORY_NAME))}")
        return EXIT_OK
    if len(args.runs) != 2:
        raise UserError(f"cflab compare needs two runs, RUN_A RUN_B (got {len(args.runs)}), or --history OUT")
    # here, not at the top: it imports polars and matplotlib
    from counterfactual_lab.report.compare import COMPARE_NAME, compare_runs

    comparison = compare_runs(args.runs[0], args.runs[1])
    print(comparison.text(), end="")
    print(f"compare: {comparison.write(args.out or COMPARE_NAME)}")
    return EXIT_OK


def cmd_review(args: argparse.Namespace) -> int:
    """People check a run's counterfactuals: serve the review page, import or export labels, or apply them."""
    # here, not at the top: it imports polars
    from counterfactual_lab.review.sets import review_sets

    # here, not at the top: it imports polars
    from counterfactual_lab.runs.reader import read_run

    run = read_run(args.run_uri)  # a missing run: one line, exit 2, nothing written
    sets = review_sets(run.counterfactuals, run.run_uri)  # a run without counterfactuals: likewise
    if args.apply:
        return _apply_review(run.run_uri)
    if args.import_file:
        return _import_labels(run, sets, args.import_file)
    # here, not at the top: it imports polars
    from counterfactual_lab.review.sample import resolve_sample

    sample = resolve_sample(run.run_uri, sets, args.size, args.seed)
    if args.export:
        return _export_labels(run, sample)
    return _serve_review(run, sample, args)


def _serve_review(run, sample, args: argparse.Namespace) -> int:
    # here, not at the top: it imports polars
    from counterfactual_lab.review.labels import LabelStore, check_reviewer

    # here, not at the top: it imports polars
    from counterfactual_lab.review.sample import write_sample_record

    # here, not at the top: it imports Starlette and uvicorn, which no other command needs
    from counterfactual_lab.review.server import ReviewSession, is_loopback, listen, serve

    reviewer = check_reviewer(args.reviewer if args.reviewer is not None else getpass.getuser())
    listening = listen(args.host, args.port)  # a port in use: one line, nothing written
    if args.reviewer is None:
        status(f"labelling as {reviewer!r} (your login name): each person needs their own name, --reviewer NAME")
    store = LabelStore(run.run_uri)
    store.remove_stale_temp_files()
    uri = write_sample_record(run.run_uri, sample)
    kept = sum(s.kept for s in sample.sets)
    status(f"sample: {len(sample.sets)} set(s), {kept} kept and {len(sample.sets) - kept} dropped by the judge "
           f"(seed {sample.seed}, --size {sample.size}); recorded in {uri}")
    if not is_loopback(args.host):
        status(f"--host {args.host}: the page is reachable from the network over plain HTTP; whoever has the "
               "printed address can label as " + reviewer)
    session = ReviewSession(run_id=run.run_id, reviewer=reviewer, sample=sample, store=store)

    def ready(address: str) -> None:
        print(f"review page: {address}", flush=True)
        status("open it in a browser; Ctrl-C stops the server (every answer is saved when given)")

    serve(session, listening, ready)
    labels = store.read()
    mine = labels.filter(labels["reviewer"] == reviewer).height if labels.height else 0
    print(f"stopped; {mine} answer(s) by {reviewer} saved in {store.uri}")
    print(f"next: cflab review {run.run_uri} --apply (the figures into the run and its report)")
    return EXIT_OK


def _apply_review(run_uri: str) -> int:
    # here, not at the top: it imports polars
    from counterfactual_lab.report.review_summary import review_lines

    # here, not at the top: it imports polars
    from counterfactual_lab.report.reviewed import apply_review

    applied = apply_review(run_uri)
    print("\n".join(review_lines({"review": applied.figures.manifest}, applied.figures.metrics)))
    if applied.not_yet_excluded:
        status(f"{len(applied.not_yet_excluded)} set(s) people rejected are still in the audit's metrics "
               "(review.exclude_rejected is on): audit the run again with its config to leave them out "
               "(the images are reused)")
    print(f"wrote {join(run_uri.rstrip('/'), 'review.parquet')}, the review rows of metrics.parquet and "
          f"{applied.report_uri}")
    return EXIT_OK


def _import_labels(run, sets, path: str) -> int:
    # here, not at the top: it imports polars
    from counterfactual_lab.review.interchange import read_import

    # here, not at the top: it imports polars
    from counterfactual_lab.review.labels import LabelStore

    labels = read_import(path, sets, run.run_id)  # every row checked before anything is written
    store = LabelStore(run.run_uri)
    store.upsert(labels)
    reviewers = sorted(labels["reviewer"].unique().to_list())
    print(f"imported {labels.height} label(s) by {', '.join(reviewers)} into {store.uri}")
    print(f"next: cflab review {run.run_uri} --apply")
    return EXIT_OK


def _export_labels(run, sample) -> int:
    # here, not at the top: it imports polars and Pillow
    from counterfactual_lab.review.interchange import export_label_studio

    # here, not at the top: it imports polars
    from counterfactual_lab.review.sample import write_sample_record

    # here, not at the top: it imports Pillow
    from counterfactual_lab.storage.files import read_image

    write_sample_record(run.run_uri, sample)
    tasks, config, count = export_label_studio(run.run_uri, run.run_id, sample, read_image)
    print(f"wrote {count} Label Studio task(s) to {tasks} and the labeling config to {config}")
    print(f"import the annotations back: cflab review {run.run_uri} --import EXPORT.json")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the sample dataset and tiny models if missing, run the audit, print the report path."""

    # here, not at the top: it imports polars
    from counterfactual_lab.runs.publisher import REPORT_NAME

    home = Path(args.home).resolve()
    if not any((home / "sample-dataset").glob("*.parquet")) or not (home / "models").is_dir():
        status(f"first run: building the sample dataset and four tiny models under {home} (about a minute) ...")
        # here, not at the top: only the first demo builds models
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # one status line instead of a bar per saved shard
    inputs = prepare_demo(home=args.home, out_uri=args.out, full=args.full)
    print(f"demo dataset: {inputs.dataset_dir}")
    print(f"demo config: {inputs.config_path}")
    # The demo's runs stay in its own home (.cflab/prefect), out of the user's Prefect UI,
    # unless PREFECT_API_URL names a server to show them on.
    run_uri = _run_audit_flow(str(inputs.config_path), None, args.out, evaluate=True, prefect_home=home / "prefect")
    print(f"run: {run_uri}")
    print(f"report: {join(run_uri, REPORT_NAME)}")
    return EXIT_OK


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="ingest and validate a dataset, quarantining bad rows",
        description="Ingest a Parquet dataset (file, folder or glob; local or s3://), validate every row "
        "with Great Expectations and write quarantine.parquet, validation.json and expectations.json. "
        "Exit 0 when the quarantined fraction is within --max-invalid-fraction, 1 when over, 2 on errors.",
    )
    p.add_argument("dataset_uri", nargs="?", metavar="DATASET_URI", help="dataset URI (overrides the spec's uri)")
    p.add_argument("--spec", metavar="FILE", help="dataset spec YAML (default: input-contract columns, default vocabularies)")
    p.add_argument("--out", default="./out/validation", metavar="DIR", help="output folder, local or s3:// (default: %(default)s)")
    p.add_argument("--max-invalid-fraction", type=_fraction, default=0.05, metavar="F",
                   help="largest quarantined fraction that still exits 0 (default: %(default)s)")
    p.add_argument("--batch-rows", type=_positive_int, default=1024, metavar="N", help="rows per record batch (default: %(default)s)")
    p.set_defaults(handler=cmd_validate)


def _add_sample_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample-dataset", help="write the synthetic sample dataset",
                       description="Write a small deterministic image-text Parquet dataset (Hugging Face image layout).")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--rows", type=_positive_int, default=24, metavar="N", help="number of rows (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--image-size", type=_positive_int, default=64, metavar="PX", help="image side in pixels (default: %(default)s)")
    p.add_argument("--files", type=_positive_int, default=1, metavar="N", help="number of Parquet files (default: %(default)s)")
    p.set_defaults(handler=cmd_sample_dataset)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="build local models", description="Build local models for tests and the demo.")
    models_sub = p.add_subparsers(dest="models_command", metavar="KIND", required=True)
    tiny = models_sub.add_parser(
        "tiny", help="tiny random-weight models",
        description="Build tiny seeded random-weight models (instruct-pix2pix, img2img, ledits, clip, text2image, "
        "inpaint, clipseg, vlm, toxicity, sentiment, text-embedder) under DIR, one folder each, loadable with from_pretrained. Their outputs mean nothing.",
    )
    tiny.add_argument("dir", metavar="DIR", help="output folder")
    tiny.set_defaults(handler=cmd_models_tiny)


def _add_config_run(sub: argparse._SubParsersAction, name: str, handler: Callable, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--config", required=True, metavar="FILE", help="audit config YAML")
    p.add_argument("--dataset", metavar="URI", help="dataset URI or spec YAML, overriding the config's dataset")
    p.add_argument("--out", metavar="URI", help="output URI (local or s3://), overriding output.uri")
    p.add_argument("--force", action="store_true",
                   help="run every stage again even when a complete run of the same config and data exists "
                   "(stored images are still reused)")
    p.set_defaults(handler=handler)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    _add_config_run(sub, "generate", cmd_generate,
                    "ingest, validate, generate and judge counterfactuals; write counterfactuals.parquet and manifest.json")


def _add_audit(sub: argparse._SubParsersAction) -> None:
    _add_config_run(sub, "audit", cmd_audit,
                    "run the whole audit (generate, judge, evaluate, publish) and print where the report is")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print a run's headline metrics",
                       description="Print the headline metrics of a finished run (OUT/<run_id>, local or s3://).")
    p.add_argument("run_uri", metavar="RUN_URI",
                   help="the run folder that `cflab audit` printed as 'run:', e.g. out/sample-<id> or s3://bucket/out/<run_id>")
    p.set_defaults(handler=cmd_report)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="what changed between two runs, or over the runs of an output folder",
        description="Compare two finished runs (local or s3://): print which findings appeared, disappeared or "
        "changed beyond their intervals (paired over the sources both runs share) and warn where the runs differ "
        "in model, generator, judge, dataset or metric parameters; write compare.html. With --history OUT: each "
        "headline number over the runs under OUT, written to OUT/history.html.")
    p.add_argument("runs", nargs="*", metavar="RUN", help="RUN_A RUN_B: the run folders `cflab audit` printed as 'run:'")
    p.add_argument("--history", metavar="OUT", help="the output folder of a scheduled audit (its output.uri)")
    p.add_argument("--out", metavar="FILE",
                   help="where to write the page (default: ./compare.html, or OUT/history.html with --history)")
    p.set_defaults(handler=cmd_compare)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the one-command demo audit on tiny models",
                       description="Build the sample dataset and tiny models if missing, run the audit flow on a "
                       "temporary local Prefect server and print the path of report.html.")
    p.add_argument("--out", default="./out", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--home", default="./.cflab", metavar="DIR",
                   help="where the sample dataset and tiny models are kept (default: %(default)s)")
    p.add_argument("--full", action="store_true",
                   help="the second demo: a tiny generative VLM asked in two phrasings per question, offered an "
                        "'unclear' answer, its answers compared across counterfactuals, and the synthetic shift "
                        "(slower: a few minutes)")
    p.set_defaults(handler=cmd_demo)


def _add_review(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review", help="people check a run's counterfactuals in the browser",
        description="Serve a local review page for a stratified, seeded sample of a run's counterfactual sets "
        "(kept and dropped by the judge); every answer is saved at once in RUN/review/labels.parquet. "
        "--apply puts the labels' figures (human validity, the judge's agreement with people) into the run's "
        "metrics and report; --import and --export exchange labels with a CSV or Label Studio.",
    )
    p.add_argument("run_uri", metavar="RUN", help="the run folder that `cflab audit` printed as 'run:'")
    p.add_argument("--reviewer", metavar="NAME",
                   help="who is labelling; each person their own name (default: your login name)")
    p.add_argument("--size", type=_positive_int, default=None, metavar="N",
                   help="sets in the sample (default: the recorded sample's, else 100)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="the sample's seed (default: the recorded sample's, else 0); the same seed gives the same sets")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; another exposes the page to the network)")
    p.add_argument("--port", type=int, default=8765, metavar="PORT",
                   help="port to listen on (default: %(default)s; 0 picks a free one)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--import", dest="import_file", metavar="FILE",
                        help="add labels made elsewhere: a CSV with the labels' columns, or a Label Studio JSON export")
    action.add_argument("--export", choices=["label-studio"],
                        help="write the sample as Label Studio tasks and labeling config under RUN/review/")
    action.add_argument("--apply", action="store_true",
                        help="write review.parquet and the review rows of metrics.parquet, and render the report again")
    p.set_defaults(handler=cmd_review)


# Subcommand parser builders, in the order `cflab --help` lists them.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo, _add_audit, _add_generate, _add_report, _add_compare, _add_review, _add_validate, _add_sample_dataset,
    _add_models,
]


def _add_output_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="also print Prefect's INFO log lines (task states); they always reach the Prefect UI")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="like --verbose, plus the traceback of any error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cflab",
        description="Multimodal Counterfactual Lab: audit vision-language models for social bias.",
        epilog="Exit codes: 0 success; 1 the data failed a limit you set (--max-invalid-fraction, "
        "runtime.max_invalid_fraction, runtime.max_failed_fraction); 2 any other error, printed as one line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_output_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    # Accept --verbose/--debug after the subcommand too (`cflab demo --verbose`); SUPPRESS keeps
    # a subcommand's unset flag from overwriting one given before it.
    for choice in _subparsers(parser):
        _add_output_flags(choice, default=argparse.SUPPRESS)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action.choices.values():
                found.append(choice)
                found.extend(_subparsers(choice))
    return found


def main(argv: list[str] | None = None) -> int:
    global _verbosity
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    debug = bool(getattr(args, "debug", False))
    _verbosity = "debug" if debug else "verbose" if getattr(args, "verbose", False) else "quiet"
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("cflab: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line (traceback with --debug)
        if isinstance(exc, SystemExit):
            raise
        # Error text may quote a credential (a URI with a password, a library echoing an
        # option): masked with every secret this process was handed, like log records are.
        if debug:
            print(printable(mask_known(traceback.format_exc())), end="", file=sys.stderr)
        _fail(mask_known(describe_error(exc, debug)))
        return EXIT_OVER_LIMIT if isinstance(exc, DataOverLimit) else EXIT_USAGE


def describe_error(exc: BaseException, debug: bool = False) -> str:
    """One line for ``exc``: the message of an error the tool raised on purpose; for an I/O error,
    what failed and on which path; otherwise the exception's type and message."""
    if isinstance(exc, UserError):
        return str(exc)
    if is_credentials_error(exc):  # botocore's (not an OSError), from a call that did not name its path
        return credentials_hint("the S3 store", exc)
    if isinstance(exc, OSError):
        # strerror for errno errors; else the message the raiser gave (s3fs: "Access Denied").
        what = exc.strerror or (str(exc.args[0]) if exc.args else "") or type(exc).__name__
        where = exc.filename if exc.filename is not None else None
        if where is not None:
            second = f" -> {exc.filename2}" if exc.filename2 else ""
            return f"{what}: {where}{second}"
        return f"{type(exc).__name__}: {what}"
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if debug else f"{text} (run with --debug for the traceback)"
def _fail(message: str) -> int:
    first_line = (message.strip().splitlines() or ["unknown error"])[0]
    print(f"cflab: error: {printable(first_line)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
