"""doit entry point: ``doit list``, ``doit build``, ``doit build recipe=NAME``.

Only wiring: the steps live in kpatchbuild/pipeline.py, their doit tasks in kpatchbuild/tasks.py.
"""

import sys

from doit import get_var

from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import Store
from kpatchbuild.graph.tasks import DOIT_CONFIG, diff_task_creators, generate_tasks, pipelines

__all__ = ["DOIT_CONFIG", "task_pipeline"]

try:
    PIPELINES = pipelines(Store(), get_var("recipe"))
except KpbError as error:
    print(f"kpatchbuild: error: {error.message}", file=sys.stderr)
    sys.exit(error.exit_code)


def task_pipeline():
    yield from generate_tasks(PIPELINES)


# The per-object diff tasks: created by doit once each target's patched objects are known.
globals().update(diff_task_creators(PIPELINES))
