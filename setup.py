"""Packaging for the streaming continuous-training system.

Dataflow workers install this package (``--setup_file``); versions come from
requirements.txt so they are pinned in one place.
"""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


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
            "local*",
        ]
    ),
    package_data={"": ["*.yaml", "*.json"]},
    install_requires=_requirements(),
)
