"""Packaging for the streaming continuous-training system.

``install_requires`` holds loose, compatible ranges: one entry per
third-party package the code imports (or that Beam's TensorFlow handler
imports for it). Exact versions live in one place, the lock
``requirements.txt``, which the container image, ``local/setup_env.sh`` and CI
install. Dataflow workers run the container image (``--sdk_container_image``),
so they install nothing at start. ``local/`` (the emulator stack) is not shipped.
"""

import setuptools

setuptools.setup(
    name="streaming-continuous-training",
    version="0.1.0",
    description="Streaming continuous training on Apache Beam / Dataflow",
    python_requires=">=3.11",
    packages=setuptools.find_packages(
        include=[
            "dataset*",
            "pipelines*",
            "transforms*",
            "model*",
            "trainer*",
            "simulator*",
            "dashboard*",
            "serving*",
        ]
    ),
    package_data={"": ["*.yaml", "*.json"]},
    install_requires=[
        "apache-beam[gcp]>=2.77,<3",
        "tensorflow>=2.21,<3",
        "keras>=3.15,<4",
        # Imported by apache_beam.ml.inference.tensorflow_inference.
        "tensorflow-hub>=0.16,<1",
        "tensorflow-metadata>=1.21,<2",
        # Data-validation statistics and TFMD schema helpers (the design card's stack).
        "tfx-bsl>=1.21,<2",
        # The dashboard and the online prediction service, and their server.
        "fastapi>=0.115,<1",
        "starlette>=0.40",
        "uvicorn>=0.30,<1",
        "google-api-core>=2.25,<3",
        "google-auth>=2.40,<3",
        "google-cloud-aiplatform>=1.165,<2",
        "google-cloud-bigquery>=3.47,<4",
        # Storage Read client and its gRPC channel (batch-predict's DIRECT_READ locally).
        "google-cloud-bigquery-storage>=2.30,<3",
        "grpcio>=1.60,<2",
        "google-cloud-pubsub>=2.44,<3",
        "google-cloud-storage>=3.4,<4",
        # The backtest's quality plot (pipelines/backtest.py).
        "matplotlib>=3.8",
        "numpy>=2.0,<3",
        # The trainer's column-wise window (trainer/data.py, statistics, validation).
        "pyarrow>=18",
        # The online prediction service's metrics (serving/).
        "prometheus-client>=0.20,<1",
        "psutil>=5.9",
        "pyyaml>=6.0,<7",
    ],
)
