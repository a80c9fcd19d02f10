"""A processing worker's entry point, ``python -m llmship.worker`` (started by ``llmship run`` with ``[agent]
workers`` > 1; see llmship.workers): a module of its own because llmship.workers is compiled (setup.py
COMPILED_MODULES), and ``python -m`` runs only a module's source."""

import sys

from llmship.workers import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
