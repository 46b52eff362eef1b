"""Flex-template entry point (``FLEX_TEMPLATE_PYTHON_PY_FILE``): ``pipelines.main``.

The launcher runs ``python launch_pipeline.py --<parameter>=<value> ...`` with
the template's parameters and pipeline options. A file outside the package,
so the package's own directory does not land first on ``sys.path``.
"""

import logging

from pipelines.main import run

if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run()
