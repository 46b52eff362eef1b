"""Idempotent creation of the Pub/Sub and BigQuery resources the pipeline uses.

* Pub/Sub: the input topic and the pipeline's subscription (ack deadline 60 s).
* BigQuery: the dataset and every table of ``table_schemas(config)``, DAY
  partitioned and clustered as ``table_layouts(config)`` says (the same
  request locally and in the cloud). A table that already exists must have
  exactly the expected schema; otherwise ``ValueError`` names the table and
  the differing columns (nothing is altered: an incompatible table is a
  decision for a human). An existing table with another layout is only
  logged: it works, but scans more (partitioning cannot be changed in place).

Works against the emulators (``PUBSUB_EMULATOR_HOST``/``BIGQUERY_EMULATOR_HOST``
set) and against real Google Cloud (Application Default Credentials). The
pipeline calls ``ensure_bigquery_tables(project, dataset, config)`` at launch.

CLI::

    python -m dataset.resources --project local-project --config configs/traffic.yaml \\
        --topic events --subscription events-pipeline --bq_dataset traffic_local
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from dataset.config import DatasetConfig, load_config
from dataset.tables import TableLayout, table_layouts, table_schemas

logger = logging.getLogger(__name__)

DEFAULT_ACK_DEADLINE_SECONDS = 60
# Bounded retries: the clients' defaults retry for up to 10 minutes, which looks
# like a hang when an emulator is down.
API_TIMEOUT_SECONDS = 30.0
_BQ_RETRY = bigquery.DEFAULT_RETRY.with_deadline(API_TIMEOUT_SECONDS)

# Legacy SQL type names that the API may return for the standard ones we declare.
_TYPE_ALIASES = {
    "INTEGER": "INT64",
    "FLOAT": "FLOAT64",
    "BOOLEAN": "BOOL",
    "STRUCT": "RECORD",
    "DECIMAL": "NUMERIC",
    "BIGDECIMAL": "BIGNUMERIC",
}


# --------------------------------------------------------------------------- BigQuery


def bigquery_emulator_url() -> str | None:
    """``BIGQUERY_EMULATOR_HOST`` with a scheme, or None when no emulator is set."""
    host = os.environ.get("BIGQUERY_EMULATOR_HOST")
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def bigquery_client(project: str) -> bigquery.Client:
    """A BigQuery client for ``project``; honours ``BIGQUERY_EMULATOR_HOST``.

    With an emulator configured the client uses anonymous credentials (no
    credentials lookup at all) and accepts the host with or without ``http://``.
    """
    host = bigquery_emulator_url()
    if not host:
        return bigquery.Client(project=project)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=host),
    )


def _normalize(fields: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str, Any]]:
    """name -> (type, mode, nested fields) with canonical type names."""
    out: dict[str, tuple[str, str, Any]] = {}
    for f in fields:
        ftype = str(f.get("type", "")).upper()
        ftype = _TYPE_ALIASES.get(ftype, ftype)
        mode = str(f.get("mode") or "NULLABLE").upper()
        nested = _normalize(f.get("fields") or []) if ftype == "RECORD" else None
        out[str(f["name"])] = (ftype, mode, nested)
    return out


def _describe(spec: tuple[str, str, Any]) -> str:
    return f"{spec[0]} {spec[1]}"


def schema_differences(
    expected: Sequence[Mapping[str, Any]],
    actual: Sequence[Mapping[str, Any]],
    prefix: str = "",
) -> list[str]:
    """Human-readable differences between two schemas in BigQuery API form.

    Returns:
        One string per differing column, e.g. ``"speed: expected FLOAT64 NULLABLE,
        found STRING NULLABLE"``; empty if the schemas match (column order ignored).
    """
    exp, act = _normalize(expected), _normalize(actual)
    diffs: list[str] = []
    for name, spec in exp.items():
        col = f"{prefix}{name}"
        if name not in act:
            diffs.append(f"{col}: missing (expected {_describe(spec)})")
            continue
        got = act[name]
        if spec[:2] != got[:2]:
            diffs.append(f"{col}: expected {_describe(spec)}, found {_describe(got)}")
        elif spec[2] is not None:
            exp_nested = next(f for f in expected if f["name"] == name).get("fields") or []
            act_nested = next(f for f in actual if f["name"] == name).get("fields") or []
            diffs.extend(schema_differences(exp_nested, act_nested, f"{col}."))
    for name, spec in act.items():
        if name not in exp:
            diffs.append(f"{prefix}{name}: unexpected column ({_describe(spec)})")
    return diffs


def table_definition(
    table_id: str, fields: Sequence[Mapping[str, Any]], layout: TableLayout
) -> bigquery.Table:
    """The ``bigquery.Table`` to create: schema, time partitioning and clustering."""
    table = bigquery.Table(
        table_id, schema=[bigquery.SchemaField.from_api_repr(dict(f)) for f in fields]
    )
    table.time_partitioning = bigquery.TimePartitioning(
        type_=layout.partition_type, field=layout.partition_field
    )
    if layout.cluster_fields:
        table.clustering_fields = list(layout.cluster_fields)
    return table


def layout_difference(expected: TableLayout, table: bigquery.Table) -> str | None:
    """How an existing table's layout differs from ``expected`` (None: it matches)."""
    partitioning = table.time_partitioning
    got = (
        (partitioning.type_, partitioning.field) if partitioning is not None else (None, None),
        tuple(table.clustering_fields or ()),
    )
    want = ((expected.partition_type, expected.partition_field), expected.cluster_fields)
    if got == want:
        return None
    return (
        f"partitioning {got[0]} and clustering {list(got[1])}, expected "
        f"{want[0]} and {list(want[1])}"
    )


def ensure_bigquery_dataset(
    client: bigquery.Client,
    project: str,
    dataset: str,
    location: str | None = None,
) -> bigquery.Dataset:
    """Creates the dataset if it does not exist; returns it.

    An existing dataset is only read, so a service account with rights on the
    dataset alone (no project-wide ``bigquery.datasets.create``) can run this.
    """
    try:
        existing = client.get_dataset(
            f"{project}.{dataset}", retry=_BQ_RETRY, timeout=API_TIMEOUT_SECONDS
        )
        logger.info("BigQuery dataset %s.%s exists", project, dataset)
        return existing
    except gexc.NotFound:
        pass
    ds = bigquery.Dataset(f"{project}.{dataset}")
    if location:
        ds.location = location
    created = client.create_dataset(
        ds, exists_ok=True, retry=_BQ_RETRY, timeout=API_TIMEOUT_SECONDS
    )
    logger.info("BigQuery dataset %s.%s ready", project, dataset)
    return created


def ensure_bigquery_tables(
    project: str,
    dataset: str,
    config: DatasetConfig,
    client: bigquery.Client | None = None,
    location: str | None = None,
) -> dict[str, bigquery.Table]:
    """Creates the dataset and every table the pipeline writes, if missing.

    Args:
        project: BigQuery project id.
        dataset: Dataset id (created if missing).
        config: The dataset config; tables and schemas come from ``table_schemas``.
        client: Optional client; by default one from ``bigquery_client(project)``.
        location: Dataset location for a new dataset (e.g. ``"EU"``); None: default.

    Returns:
        table name -> ``bigquery.Table`` as it exists now.

    Raises:
        ValueError: if a table exists with a different schema (names the table
            and each differing column).
    """
    client = client or bigquery_client(project)
    ensure_bigquery_dataset(client, project, dataset, location)
    tables: dict[str, bigquery.Table] = {}
    mismatches: list[str] = []
    layouts = table_layouts(config)
    for name, fields in table_schemas(config).items():
        table_id = f"{project}.{dataset}.{name}"
        table = client.create_table(
            table_definition(table_id, fields, layouts[name]),
            exists_ok=True,
            retry=_BQ_RETRY,
            timeout=API_TIMEOUT_SECONDS,
        )
        # create_table(exists_ok=True) returns the existing table unchanged.
        actual = [f.to_api_repr() for f in table.schema]
        diffs = schema_differences(fields, actual)
        if diffs:
            mismatches.append(f"table {table_id}: " + "; ".join(diffs))
        layout_diff = layout_difference(layouts[name], table)
        if layout_diff:
            logger.warning(
                "table %s exists with %s; queries on it scan more than needed. "
                "Recreate it (copy the rows) to get the layout.",
                table_id,
                layout_diff,
            )
        tables[name] = table
    if mismatches:
        raise ValueError(
            "BigQuery tables exist with a schema other than the dataset config's "
            f"({config.source_path or config.name}). Drop or migrate them:\n  "
            + "\n  ".join(mismatches)
        )
    logger.info("BigQuery tables ready in %s.%s: %s", project, dataset, ", ".join(tables))
    return tables


# --------------------------------------------------------------------------- Pub/Sub


def topic_path(project: str, topic: str) -> str:
    """``projects/<project>/topics/<topic>`` from a short name or a full path."""
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def subscription_path(project: str, subscription: str) -> str:
    """``projects/<project>/subscriptions/<name>`` from a short name or a full path."""
    if subscription.startswith("projects/"):
        return subscription
    return f"projects/{project}/subscriptions/{subscription}"


def ensure_pubsub(
    project: str,
    topic: str,
    subscription: str | None = None,
    ack_deadline_seconds: int = DEFAULT_ACK_DEADLINE_SECONDS,
) -> tuple[str, str | None]:
    """Creates the topic and (optionally) a pull subscription on it, if missing.

    An existing subscription keeps its settings, except that a different ack
    deadline is updated; one attached to another topic is an error.

    Returns:
        (topic path, subscription path or None).

    Raises:
        ValueError: if the subscription exists on a different topic.
    """
    from google.cloud import pubsub_v1

    tpath = topic_path(project, topic)
    publisher = pubsub_v1.PublisherClient()
    try:
        publisher.create_topic(name=tpath, timeout=API_TIMEOUT_SECONDS)
        logger.info("created topic %s", tpath)
    except gexc.AlreadyExists:
        logger.info("topic %s already exists", tpath)
    finally:
        publisher.transport.close()
    if subscription is None:
        return tpath, None

    spath = subscription_path(project, subscription)
    subscriber = pubsub_v1.SubscriberClient()
    try:
        try:
            subscriber.create_subscription(
                request={
                    "name": spath,
                    "topic": tpath,
                    "ack_deadline_seconds": ack_deadline_seconds,
                },
                timeout=API_TIMEOUT_SECONDS,
            )
            logger.info("created subscription %s (ack deadline %d s)", spath, ack_deadline_seconds)
        except gexc.AlreadyExists:
            existing = subscriber.get_subscription(
                request={"subscription": spath}, timeout=API_TIMEOUT_SECONDS
            )
            if existing.topic != tpath:
                raise ValueError(
                    f"subscription {spath} exists but reads {existing.topic}, not {tpath}; "
                    "delete it or pick another subscription name"
                ) from None
            if existing.ack_deadline_seconds != ack_deadline_seconds:
                subscriber.update_subscription(
                    request={
                        "subscription": {
                            "name": spath,
                            "ack_deadline_seconds": ack_deadline_seconds,
                        },
                        "update_mask": {"paths": ["ack_deadline_seconds"]},
                    },
                    timeout=API_TIMEOUT_SECONDS,
                )
                logger.info(
                    "subscription %s: ack deadline %d s -> %d s",
                    spath,
                    existing.ack_deadline_seconds,
                    ack_deadline_seconds,
                )
            else:
                logger.info("subscription %s already exists", spath)
    finally:
        subscriber.close()
    return tpath, spath


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dataset.resources",
        description="Create the Pub/Sub topic/subscription and the BigQuery dataset/tables "
        "(idempotent).",
    )
    parser.add_argument("--project", required=True, help="project id (>= 6 characters)")
    parser.add_argument("--config", required=True, help="dataset config YAML/JSON")
    parser.add_argument("--topic", help="topic name or projects/<p>/topics/<t>")
    parser.add_argument("--subscription", help="subscription name or full path")
    parser.add_argument("--bq_dataset", help="BigQuery dataset (omit to skip BigQuery)")
    parser.add_argument("--bq_project", help="project of the dataset (default: --project)")
    parser.add_argument("--bq_location", help="location of a new dataset")
    parser.add_argument("--ack_deadline", type=int, default=DEFAULT_ACK_DEADLINE_SECONDS)
    args = parser.parse_args(argv)
    if args.subscription and not args.topic:
        parser.error("--subscription needs --topic")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parse_args(argv)
    try:
        config = load_config(args.config)
        if args.topic:
            tpath, spath = ensure_pubsub(
                args.project, args.topic, args.subscription, args.ack_deadline
            )
            print(f"topic: {tpath}")
            if spath:
                print(f"subscription: {spath}")
        if args.bq_dataset:
            bq_project = args.bq_project or args.project
            tables = ensure_bigquery_tables(
                bq_project, args.bq_dataset, config, location=args.bq_location
            )
            for name in tables:
                print(f"table: {bq_project}.{args.bq_dataset}.{name}")
    except ValueError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    except gexc.GoogleAPIError as e:
        print(f"ERROR: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
