"""Task registry: name -> task, for sequence classification and for causal LMs.

A task with both forms (``sst2``) is scored with a classification head on an encoder and
with a verbalizer on a causal LM; :func:`get_task` picks the form for the model.
"""

from loraexp.errors import ConfigError
from loraexp.tasks.base import CAUSAL_LM, SEQUENCE_CLASSIFICATION, ClassificationTask
from loraexp.tasks.causal_lm import CausalLMTask
from loraexp.tasks.gsm8k import GSM8K
from loraexp.tasks.lima import LIMA
from loraexp.tasks.mrpc import MRPC
from loraexp.tasks.rte import RTE
from loraexp.tasks.shakespeare import SHAKESPEARE
from loraexp.tasks.sst2 import SST2
from loraexp.tasks.sst2_verbalizer import SST2_VERBALIZER

CLASSIFICATION_TASKS: dict[str, ClassificationTask] = {t.name: t for t in (SST2, MRPC, RTE)}
CAUSAL_LM_TASKS: dict[str, CausalLMTask] = {t.name: t for t in (SST2_VERBALIZER, SHAKESPEARE, LIMA, GSM8K)}
TASKS = sorted({*CLASSIFICATION_TASKS, *CAUSAL_LM_TASKS})


def task_kind(name: str, model_kind: str) -> str:
    """How task ``name`` runs on a model of ``model_kind``: a causal LM uses the task's
    causal-LM form when it has one, else a classification head on top of the causal LM
    (e.g. ``LlamaForSequenceClassification`` for MRPC); an encoder needs a classification task.

    Raises:
        ConfigError: unknown task, or a causal-LM-only task on an encoder model.
    """
    if name not in TASKS:
        raise ConfigError(f"`task` {name!r} is unknown; allowed: {', '.join(TASKS)}")
    if model_kind == CAUSAL_LM and name in CAUSAL_LM_TASKS:
        return CAUSAL_LM
    if name in CLASSIFICATION_TASKS:
        return SEQUENCE_CLASSIFICATION
    raise ConfigError(f"`task` {name!r} is a causal-LM task, but `model` is not a causal LM (its architectures do "
                      "not end in ForCausalLM); use e.g. model: smollm2-135m")


def get_task(name: str, kind: str = SEQUENCE_CLASSIFICATION):
    """The task registered as ``name`` in form ``kind`` (see :func:`task_kind`).

    Raises:
        ConfigError: unknown task, or no form of that kind.
    """
    if name not in TASKS:
        raise ConfigError(f"`task` {name!r} is unknown; allowed: {', '.join(TASKS)}")
    registry = CAUSAL_LM_TASKS if kind == CAUSAL_LM else CLASSIFICATION_TASKS
    if name not in registry:
        raise ConfigError(f"`task` {name!r} has no {kind} form; allowed: {', '.join(sorted(registry))}")
    return registry[name]


__all__ = ["CAUSAL_LM_TASKS", "CLASSIFICATION_TASKS", "TASKS", "ClassificationTask", "CausalLMTask", "get_task",
           "task_kind"]
