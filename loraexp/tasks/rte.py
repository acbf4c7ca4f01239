"""GLUE RTE: does sentence 1 entail sentence 2 (PASCAL RTE 1-3, 5). Metric: accuracy.
Labels follow the HF convention: 0 = entailment, 1 = not_entailment."""

from pathlib import Path

import pandas as pd

from loraexp.tasks.base import ClassificationTask


def read_rte(path: Path) -> pd.DataFrame:
    """HF-datasets parquet with ``sentence1, sentence2, label, idx``."""
    return pd.read_parquet(path)


RTE = ClassificationTask(
    name="rte",
    text_fields=("sentence1", "sentence2"),
    hub_config="rte",
    local_files={"train": "glue/rte/train.parquet", "validation": "glue/rte/validation.parquet"},
    read_local=read_rte,
)
