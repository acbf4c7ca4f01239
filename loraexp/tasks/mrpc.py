"""GLUE MRPC: is sentence 2 a paraphrase of sentence 1 (Dolan & Brockett, 2005).
Metrics: accuracy and F1 of the paraphrase class."""

from pathlib import Path

from loraexp.tasks.classification import ClassificationTask, read_tsv


def read_mrpc(path: Path):
    """GLUE's MRPC TSV: ``Quality, #1 ID, #2 ID, #1 String, #2 String``, with a UTF-8 BOM."""
    frame = read_tsv(path, encoding="utf-8-sig", what="mrpc")
    return frame.rename(columns={"Quality": "label", "#1 String": "sentence1", "#2 String": "sentence2"})


MRPC = ClassificationTask(
    name="mrpc",
    text_fields=("sentence1", "sentence2"),
    hub_config="mrpc",
    local_files={"train": "glue/mrpc/train.tsv", "validation": "glue/mrpc/dev.tsv"},
    read_local=read_mrpc,
    metrics=("accuracy", "f1"),
)
