"""GLUE SST-2: binary sentiment of single sentences (Socher et al., 2013). Metric: accuracy."""

from pathlib import Path

from loraexp.tasks.classification import ClassificationTask, read_tsv


def read_sst2(path: Path):
    """``sentence<TAB>label`` with a header (GLUE's SST-2 TSV)."""
    return read_tsv(path, what="sst2")


SST2 = ClassificationTask(
    name="sst2",
    text_fields=("sentence",),
    hub_config="sst2",
    local_files={"train": "glue/sst2/train.tsv", "validation": "glue/sst2/dev.tsv"},
    read_local=read_sst2,
)
