"""Task registry: name -> the task's forms, one per objective (``peft.TaskType`` value).

A task with both forms (``sst2``) is scored with a classification head on an encoder and
with a verbalizer on a causal LM; :func:`task_type_for` picks the form for the model.
``squad_v2`` has one form, extractive QA on an encoder (``QUESTION_ANS``); a causal LM on it
is refused (generative QA is not implemented). Task
modules import their heavy libraries (pandas, torch, datasets) inside functions, so this
registry is cheap to import (config validation and ``--help`` use it).
"""

from __future__ import annotations

from loraexp.config.schema import TASK_NAMES
from loraexp.errors import ConfigError
from loraexp.tasks.base import Task
from loraexp.tasks.gsm8k import GSM8K
from loraexp.tasks.lima import LIMA
from loraexp.tasks.mrpc import MRPC
from loraexp.tasks.rte import RTE
from loraexp.tasks.shakespeare import SHAKESPEARE
from loraexp.tasks.squad_v2 import SQUAD_V2
from loraexp.tasks.sst2 import SST2
from loraexp.tasks.sst2_verbalizer import SST2_VERBALIZER

# peft.TaskType values (TaskType is a str enum: TaskType.CAUSAL_LM == "CAUSAL_LM")
SEQ_CLS = "SEQ_CLS"
CAUSAL_LM = "CAUSAL_LM"
QUESTION_ANS = "QUESTION_ANS"

ALL_FORMS: tuple[Task, ...] = (SST2, MRPC, RTE, SST2_VERBALIZER, SHAKESPEARE, LIMA, GSM8K, SQUAD_V2)
FORMS: dict[str, dict[str, Task]] = {
    name: {t.task_type: t for t in ALL_FORMS if t.name == name} for name in {t.name for t in ALL_FORMS}}
if tuple(sorted(FORMS)) != TASK_NAMES:
    raise ImportError(f"loraexp.tasks registers {sorted(FORMS)}, but loraexp.config.schema.TASK_NAMES is "
                      f"{list(TASK_NAMES)}: add the task to both")

# The eval metric a task is judged by (Optuna / W&B objective, the console's main column).
MAIN_METRICS = {"sst2": "accuracy", "mrpc": "accuracy", "rte": "accuracy", "shakespeare": "loss", "lima": "loss",
                "gsm8k": "loss", "squad_v2": "f1"}


def task_type_for(name: str, model_task_type: str) -> str:
    """The objective task ``name`` has on a model whose checkpoint is ``model_task_type``: a
    causal LM uses the task's causal-LM form when it has one, else a classification head on
    top of it (e.g. ``LlamaForSequenceClassification`` for MRPC); an encoder needs a
    classification form.

    Raises:
        ConfigError: unknown task, a causal-LM-only task on an encoder model, or extractive QA
            (``squad_v2``) on a causal LM.
    """
    forms = _forms(name)
    if model_task_type == CAUSAL_LM and CAUSAL_LM in forms:
        return CAUSAL_LM
    if SEQ_CLS in forms:
        return SEQ_CLS
    if QUESTION_ANS in forms:
        if model_task_type == CAUSAL_LM:
            raise ConfigError(f"`task` {name!r} is extractive question answering on an encoder "
                              "(AutoModelForQuestionAnswering), but `model` is a causal LM: generative QA is not "
                              "supported; use an encoder, e.g. model: minilm")
        return QUESTION_ANS
    raise ConfigError(f"`task` {name!r} is a causal-LM task, but `model` is not a causal LM (its architectures do "
                      "not end in ForCausalLM); use e.g. model: smollm2-135m")


def get_task(name: str, task_type: str = SEQ_CLS) -> Task:
    """The form of task ``name`` for objective ``task_type`` (see :func:`task_type_for`).

    Raises:
        ConfigError: unknown task, or no form of that type.
    """
    forms = _forms(name)
    if task_type not in forms:
        raise ConfigError(f"`task` {name!r} has no {task_type} form; tasks with one: "
                          f"{', '.join(n for n in TASK_NAMES if task_type in FORMS[n])}")
    return forms[task_type]


def configured_task(cfg, model_task_type: str) -> Task:
    """The task of ``cfg`` in its form for the model (:func:`task_type_for`), with the
    config's settings for it applied (``squad_v2``: the ``qa`` section).

    Raises:
        ConfigError: see :func:`task_type_for`.
    """
    import dataclasses

    task = get_task(cfg.task, task_type_for(cfg.task, model_task_type))
    if task is SQUAD_V2:
        task = dataclasses.replace(task, settings=cfg.qa)
    return task


def _forms(name: str) -> dict[str, Task]:
    if name not in FORMS:
        raise ConfigError(f"`task` {name!r} is unknown; allowed: {', '.join(TASK_NAMES)}")
    return FORMS[name]


__all__ = ["CAUSAL_LM", "FORMS", "MAIN_METRICS", "QUESTION_ANS", "SEQ_CLS", "TASK_NAMES", "Task", "configured_task",
           "get_task", "task_type_for"]
