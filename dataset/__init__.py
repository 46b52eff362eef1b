"""The stream's schema as code: the leaf every other package depends on.

``config`` loads a dataset config (the one file that describes a stream),
``times`` parses and formats event times, ``tables`` derives the BigQuery
schemas, ``resources`` creates the BigQuery tables and Pub/Sub resources and
builds clients (the same code locally and in the cloud). Nothing here imports
``pipelines``, ``transforms``, ``model``, ``trainer``, ``simulator`` or ``local``.
"""
