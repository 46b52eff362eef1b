"""Point Beam's BigQuery clients at the local emulator when one is configured.

Beam 2.77 has no emulator switch. Streaming inserts go through
google-cloud-bigquery, which follows ``BIGQUERY_EMULATOR_HOST`` but must be
told the project (Beam creates it without one); table and job calls go
through Beam's apitools client, whose base URL is hard-wired. This only
reaches in-process runners (the DirectRunner), and only runs when the
emulator variable is set: on Dataflow nothing changes.
"""

from __future__ import annotations

import logging
import os

from dataset.resources import bigquery_emulator_url

_LOG = logging.getLogger(__name__)


def configure_bigquery_emulator(project: str) -> bool:
    """Redirects Beam's BigQuery clients to the emulator; returns whether it did."""
    url = bigquery_emulator_url()
    if url is None:
        return False
    os.environ["BIGQUERY_EMULATOR_HOST"] = url
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", project)
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client

    bigquery_v2_client.BigqueryV2.BASE_URL = f"{url.rstrip('/')}/bigquery/v2/"
    _LOG.info("BigQuery calls go to the emulator at %s (project %s)", url, project)
    return True


def configure_bigquery_storage_emulator() -> bool:
    """Points Beam's Storage Read client (``DIRECT_READ``) at the emulator's gRPC port.

    Beam creates ``BigQueryReadClient()`` without arguments; with
    ``BIGQUERY_EMULATOR_GRPC_HOST`` set (and only then) every such client of
    this process gets an insecure channel to that address. Returns whether it did.
    """
    host = os.environ.get("BIGQUERY_EMULATOR_GRPC_HOST")
    if not host:
        return False
    import grpc
    from google.cloud import bigquery_storage_v1
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
        BigQueryReadGrpcTransport,
    )

    original = getattr(bigquery_storage_v1, "_UNPATCHED_READ_CLIENT", None)
    if original is None:
        original = bigquery_storage_v1.BigQueryReadClient
        bigquery_storage_v1._UNPATCHED_READ_CLIENT = original

    def emulator_client(*args, **kwargs):
        channel = grpc.insecure_channel(host)
        return original(transport=BigQueryReadGrpcTransport(channel=channel))

    bigquery_storage_v1.BigQueryReadClient = emulator_client
    _LOG.info("BigQuery Storage reads go to the emulator at %s", host)
    return True
