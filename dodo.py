"""doit entry point: ``doit list``, ``doit build [recipe=NAME]``, ``doit test [recipe=NAME]
[kernel=PATTERN] [force=1] [json=PATH] [junit=PATH]``, ``doit package [recipe=NAME]
[kernel=PATTERN] [unsigned=1]``; ``module_key=KEY module_cert=CERT`` sign the modules.

Only wiring: the steps live in kpatchbuild/graph/pipeline.py, their doit tasks in
kpatchbuild/graph/tasks.py.
"""

import sys

from doit import get_var

from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import Store
from kpatchbuild.graph import matrix
from kpatchbuild.graph.tasks import (
    DOIT_CONFIG,
    command_line_signing_key,
    diff_task_creators,
    generate_tasks,
    lock_database,
    pipelines,
)

__all__ = ["DOIT_CONFIG", "task_pipeline"]

command_line_signing_key()
try:
    PIPELINES = matrix.select(pipelines(Store(), get_var("recipe")), get_var("kernel"))
except KpbError as error:
    print(f"kpatchbuild: error: {error.message}", file=sys.stderr)
    sys.exit(error.exit_code)
lock_database()


def task_pipeline():
    yield from generate_tasks(PIPELINES, force_proof=get_var("force", "") not in ("", "0"),
                              unsigned=get_var("unsigned", "") not in ("", "0"))


# The per-object diff tasks: created by doit once each target's patched objects are known.
globals().update(diff_task_creators(PIPELINES))
