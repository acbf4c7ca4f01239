"""GSM8K grade-school math (Cobbe et al., 2021): SFT on worked solutions, scored by exact match.

Rows have ``question`` and ``answer``; an answer is a worked solution whose last line is
``#### <final answer>``. Calculator annotations such as ``<<48/2=24>>`` are removed before
training (``strip_calculator``). ``validation`` is the test split (1,319 questions).

Evaluation: eval loss on the test split as for every SFT task, plus greedy generation on
the first ``evaluation.generation_samples`` test questions: ``exact_match`` compares the
number after ``####`` in the generation with the reference (strict), ``exact_match_flexible``
the last number in the generation (as lm-evaluation-harness's "flexible-extract").
"""

from __future__ import annotations

import json
import re
from typing import Any

from loraexp.errors import DataError
from loraexp.tasks.base import read_text, require_file
from loraexp.tasks.sft import InstructionTask, render

CALCULATOR = re.compile(r"<<[^>]*>>")
FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def normalize_number(text: str | None) -> str | None:
    """``"1,234.50"`` -> ``"1234.5"``; None stays None."""
    if text is None:
        return None
    value = text.replace(",", "").rstrip(".")
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:g}" if not number.is_integer() else str(int(number))


def final_answer(text: str) -> str | None:
    """The normalized number after ``####`` (strict), or None."""
    match = FINAL_ANSWER.search(text)
    return normalize_number(match.group(1)) if match else None


def last_number(text: str) -> str | None:
    """The normalized last number in ``text`` (flexible), or None."""
    numbers = NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


class GSM8KTask(InstructionTask):
    name = "gsm8k"
    local_files = {"train": "gsm8k/train.jsonl", "validation": "gsm8k/test.jsonl"}
    hub_dataset = "openai/gsm8k"
    hub_config = "main"
    strip_calculator = True

    def load_split(self, split: str, data_dir):
        """``datasets.Dataset`` with ``question`` and ``answer``."""
        import datasets

        if data_dir is None:
            hub_split = "train" if split == "train" else "test"
            return datasets.load_dataset(self.hub_dataset, self.hub_config, split=hub_split)
        path = require_file(data_dir, self.local_files[split], f"gsm8k {split}")
        rows = []
        for number, line in enumerate(read_text(path, "gsm8k").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"gsm8k file {str(path)!r} line {number} is not valid JSON: {exc}") from None
            if not {"question", "answer"} <= set(row):
                raise DataError(f"gsm8k file {str(path)!r} line {number} lacks `question`/`answer`: {sorted(row)}")
            rows.append({"question": row["question"], "answer": row["answer"]})
        if not rows:
            raise DataError(f"gsm8k file {str(path)!r} has no rows")
        return datasets.Dataset.from_list(rows)

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        answer = CALCULATOR.sub("", row["answer"]) if self.strip_calculator else row["answer"]
        return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": answer}]

    def evaluate_generation(self, model, tokenizer, dataset, evaluation):
        """Greedy generation on the first ``evaluation.generation_samples`` rows of ``dataset``
        (``evaluation.max_new_tokens`` new tokens, ``evaluation.generation_batch_size``
        prompts at a time).

        Returns:
            ``(metrics, records)``: ``exact_match``, ``exact_match_flexible`` (fractions in
            [0, 1]) and ``generation_samples``; one record per question with the prompt's
            reference and predicted answers and the generated text.
        """
        from loraexp.tasks.generation import generate_texts

        rows = dataset.select(range(min(evaluation.generation_samples, len(dataset))))
        prompts = [render(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)
                   for q in rows["question"]]
        texts = generate_texts(model, tokenizer, prompts, max_new_tokens=evaluation.max_new_tokens,
                               batch_size=evaluation.generation_batch_size)
        records = []
        for question, answer, text in zip(rows["question"], rows["answer"], texts):
            reference = final_answer(answer)
            strict, flexible = final_answer(text), last_number(text)
            records.append({"question": question, "reference": reference, "predicted": strict,
                            "predicted_flexible": flexible, "exact_match": strict == reference,
                            "exact_match_flexible": flexible == reference, "generation": text})
        n = len(records)
        metrics = {"exact_match": sum(r["exact_match"] for r in records) / n,
                   "exact_match_flexible": sum(r["exact_match_flexible"] for r in records) / n,
                   "generation_samples": n}
        return metrics, records


GSM8K = GSM8KTask()
