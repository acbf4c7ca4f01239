"""GLUE RTE: does sentence 1 entail sentence 2 (PASCAL RTE 1-3, 5). Metric: accuracy.
Labels follow the HF convention: 0 = entailment, 1 = not_entailment."""

from pathlib import Path

from loraexp.tasks.classification import ClassificationTask


def read_rte(path: Path):
    """HF-datasets parquet (a ``pandas.DataFrame``) with ``sentence1, sentence2, label, idx``."""
    import pandas as pd

    return pd.read_parquet(path)


RTE = ClassificationTask(
    name="rte",
    text_fields=("sentence1", "sentence2"),
    hub_config="rte",
    local_files={"train": "glue/rte/train.parquet", "validation": "glue/rte/validation.parquet"},
    read_local=read_rte,
)
