"""LIMA instruction tuning (Zhou et al., 2023): 1,000 single-turn and 29 multi-turn rows.

Local file: ``lima/lima.json`` in LLaMA-Factory's alpaca format (``instruction``, ``input``,
``output``, ``history`` = earlier ``[user, assistant]`` pairs). Hub: ``GAIR/lima`` (gated;
``conversations`` = alternating user/assistant texts). LIMA has one split: every 20th row
(index % 20 == 0, 52 rows) is held out as ``validation``, the rest trains.
"""

from __future__ import annotations

import json
from typing import Any

from loraexp.errors import DataError
from loraexp.tasks.base import read_text, require_file
from loraexp.tasks.sft import InstructionTask

HOLDOUT_EVERY = 20


class LimaTask(InstructionTask):
    name = "lima"
    local_files = {"train": "lima/lima.json", "validation": "lima/lima.json"}
    hub_dataset = "GAIR/lima"

    def _rows(self, data_dir) -> list[dict[str, Any]]:
        if data_dir is None:
            import datasets

            rows = datasets.load_dataset(self.hub_dataset, split="train")
            return [{"conversations": list(r["conversations"])} for r in rows]
        path = require_file(data_dir, self.local_files["train"], "lima")
        try:
            rows = json.loads(read_text(path, "lima"))
        except json.JSONDecodeError as exc:
            raise DataError(f"lima file {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(rows, list) or not rows:
            raise DataError(f"lima file {str(path)!r} must hold a non-empty JSON array of rows")
        missing = [k for k in ("instruction", "output") if k not in rows[0]]
        if missing:
            raise DataError(f"lima file {str(path)!r} rows lack the keys {missing}; they have {sorted(rows[0])}")
        return rows

    def load_split(self, split: str, data_dir):
        """``datasets.Dataset`` with column ``messages`` (list of role/content dicts)."""
        import datasets

        rows = self._rows(data_dir)
        keep = [r for i, r in enumerate(rows) if (i % HOLDOUT_EVERY == 0) == (split == "validation")]
        return datasets.Dataset.from_dict({"messages": [self.to_messages(r) for r in keep]})

    @staticmethod
    def to_messages(row: dict[str, Any]) -> list[dict[str, str]]:
        """Conversation of one row in either format; multi-turn history comes first."""
        if "conversations" in row:
            turns = row["conversations"]
            return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        messages = []
        for user, assistant in row.get("history") or []:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return row["messages"]


LIMA = LimaTask()
