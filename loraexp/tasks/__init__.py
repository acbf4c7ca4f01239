"""Task registry: name -> task. One task per file."""

from loraexp.errors import ConfigError
from loraexp.tasks.base import ClassificationTask
from loraexp.tasks.mrpc import MRPC
from loraexp.tasks.rte import RTE
from loraexp.tasks.sst2 import SST2

TASKS: dict[str, ClassificationTask] = {t.name: t for t in (SST2, MRPC, RTE)}


def get_task(name: str) -> ClassificationTask:
    """The task registered as ``name``.

    Raises:
        ConfigError: unknown task; the message lists the known ones.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"`task` {name!r} is unknown; allowed: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "ClassificationTask", "get_task"]
