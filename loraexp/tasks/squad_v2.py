"""SQuAD 2.0 extractive question answering (Rajpurkar et al. 2018) on an encoder
(``peft.TaskType.QUESTION_ANS``): the :class:`~loraexp.tasks.base.Task` implementation.

The conventions are those of transformers' ``examples/pytorch/question-answering/run_qa.py``
and its ``utils_qa.postprocess_qa_predictions``:

* Preprocessing: the question first, the context second and truncated only
  (``truncation="only_second"``) into overlapping windows of ``max_seq_length`` tokens that
  share ``qa.doc_stride`` tokens (``return_overflowing_tokens``); a window is labelled with
  the token span of the first gold answer, or with the CLS position when the question is
  unanswerable or the answer is not wholly inside that window.
* Post-processing: per question, over all its windows, the ``qa.n_best`` highest start and
  end logits give candidate spans inside the context (end >= start, at most
  ``qa.max_answer_length`` tokens) scored start + end; the null score is the smallest
  CLS start + end over the windows. The question is predicted unanswerable when
  null score − best span score > ``qa.null_score_diff_threshold``.
* Metrics: the official SQuAD 2.0 evaluation (:mod:`loraexp.tasks.squad_v2_eval`), with the
  best span as the answer and null score − best span score as the no-answer "probability",
  so ``best_exact_thresh`` / ``best_f1_thresh`` are in those units (logits). Beside them, the
  always-no-answer baseline (every prediction empty).

Local data: ``squad_v2/cs224n-dev-v2.0.json`` (CS224n's half of the official dev set, 16
articles) is split by article: the first ``qa.local_train_articles`` train, the rest
evaluate, so no context is shared. Such figures are not comparable to published SQuAD 2.0
dev scores (a smaller train set, different eval articles; docs/tasks.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraexp.config.schema import QAConfig
from loraexp.errors import DataError
from loraexp.tasks.base import SPLITS, read_local_splits, require_file

LOCAL_FILE = "squad_v2/cs224n-dev-v2.0.json"
NO_CONTEXT = (-1, -1)  # offset of a token outside the context (question, special tokens)


@dataclass(frozen=True)
class SquadV2Task:
    """SQuAD 2.0 as extractive QA (a :class:`~loraexp.tasks.base.Task`); see the module
    docstring for the conventions."""

    settings: QAConfig = field(default_factory=QAConfig)  # the config's ``qa`` section
    name: str = "squad_v2"
    task_type: str = "QUESTION_ANS"
    num_labels: int = 0
    local_files: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SPLITS, LOCAL_FILE))
    hub_dataset: str = "rajpurkar/squad_v2"
    hub_config: str | None = None
    scores_base_model: bool = True  # the untrained qa_outputs head: the baseline the adapter must beat
    merge_space: str = "logits"
    merge_check_rows: int | None = 16  # of 128-window eval batches: (256-token windows) x 8 forward passes
    metrics_from_examples: bool = True  # answers are text, assembled from windows
    windows_per_example: bool = True  # max_eval_samples counts questions, not windows

    # -- data ------------------------------------------------------------------------------
    def check_data(self, data_dir: str | Path | None) -> None:
        """Fail before any training if the local file is missing, is not SQuAD JSON, or has
        too few articles for ``local_train_articles``. No-op for the Hub.

        Raises:
            DataError: naming the file and what is wrong with it.
        """
        read_local_splits(self, data_dir)

    def load_split(self, split: str, data_dir: str | Path | None):
        """``datasets.Dataset`` of questions with ``id``, ``title``, ``context``, ``question``
        and ``answers`` (``{"text": [...], "answer_start": [...]}``; empty lists: unanswerable),
        the Hub's schema. Locally, ``train`` is the first ``local_train_articles`` articles and
        ``validation`` the rest.

        Raises:
            DataError: the file is missing, not UTF-8 SQuAD JSON, or the split would be empty.
        """
        import datasets

        if data_dir is None:
            return datasets.load_dataset(self.hub_dataset, split=split)
        path = require_file(data_dir, self.local_files[split], f"{self.name} {split}")
        articles = read_squad_json(path)
        cut = self.settings.local_train_articles
        if not 0 < cut < len(articles):
            raise DataError(f"`qa.local_train_articles` is {cut}, but {str(path)!r} has {len(articles)} articles; "
                            f"it must be between 1 and {len(articles) - 1} so that both splits have articles")
        chosen = articles[:cut] if split == "train" else articles[cut:]
        return datasets.Dataset.from_list([row for article in chosen for row in question_rows(article)])

    # -- model inputs ----------------------------------------------------------------------
    def tokenize(self, dataset, tokenizer, max_length: int):
        """Windows of at most ``max_length`` tokens: ``input_ids``, ``attention_mask``, the
        labels ``start_positions`` / ``end_positions`` (token indices; CLS when the window has no
        answer), and for post-processing ``example_index`` (the
        question's row in ``dataset``) and ``offset_mapping`` (character span of each token in
        the context; (-1, -1) outside it), which the Trainer drops before the model sees them.

        No ``token_type_ids``: PEFT's ``PeftModelForQuestionAnswering.forward`` does not pass
        them to the model (PEFT 0.21.2 and its main branch of 2026-08), so the adapter trains
        and evaluates with segment 0 everywhere, while the merged model would use them: the
        merge check measured 0.16 logits apart on a tiny BERT. Without them every path (adapter,
        reload, merge, an exported merged model) computes the same function
        (tests/test_squad_v2_task.py pins the PEFT behaviour).

        Raises:
            DataError: ``qa.doc_stride`` leaves no room for the context (the tokenizer's
                complaint, with the fields to change).
        """
        stride = self.doc_stride(max_length)

        def encode(batch, indices):
            try:
                enc = tokenizer([q.lstrip() for q in batch["question"]], batch["context"], truncation="only_second",
                                max_length=max_length, stride=stride,
                                return_overflowing_tokens=True, return_offsets_mapping=True,
                                return_token_type_ids=False)
            except Exception as exc:  # tokenizers raises a plain Exception for a stride too long
                raise DataError(f"`qa.doc_stride` {stride} does not fit `max_seq_length` "
                                f"{max_length} with the questions ({exc}); lower qa.doc_stride or raise "
                                "max_seq_length") from None
            samples = enc.pop("overflow_to_sample_mapping")
            enc["start_positions"], enc["end_positions"], enc["example_index"] = [], [], []
            for window, offsets in enumerate(enc["offset_mapping"]):
                in_context = [s == 1 for s in enc.sequence_ids(window)]
                start, end = answer_token_span(offsets, in_context, batch["answers"][samples[window]],
                                               cls_index=cls_position(enc["input_ids"][window], tokenizer))
                enc["start_positions"].append(start)
                enc["end_positions"].append(end)
                enc["example_index"].append(indices[samples[window]])
                enc["offset_mapping"][window] = [tuple(o) if c else NO_CONTEXT for o, c in zip(offsets, in_context)]
            return enc

        return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names)

    def doc_stride(self, max_length: int) -> int:
        """``qa.doc_stride``, or a third of ``max_length`` when it is null."""
        stride = self.settings.doc_stride
        return max_length // 3 if stride is None else stride

    def collator(self, tokenizer, pad_to_multiple_of: int | None = None):
        """Dynamic padding per batch (``transformers.DataCollatorWithPadding``), rounded up to a
        multiple of ``pad_to_multiple_of`` tokens when given; the labels are one index per
        window."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def trainer_metrics(self, tokenizer) -> dict[str, Any]:
        """None: ``Trainer.evaluate`` gives the span loss only; the text metrics need the
        questions (:meth:`example_scores`)."""
        return {}

    def training_defaults(self) -> dict[str, Any]:
        """No token-count loss rescaling: the span loss is a per-window mean (as for
        classification; transformers issue #35078)."""
        return {"average_tokens_across_devices": False}

    def postprocess_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` unchanged."""
        return metrics

    def evaluate_generation(self, model, tokenizer, dataset, evaluation) -> None:
        """None: answers are spans, not generated."""
        return None

    # -- scoring ---------------------------------------------------------------------------
    def example_scores(self, predictions, label_ids, tokenizer, examples=None,
                       features=None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Text answers from the windows' logits, the official metrics and per-question scores.

        Args:
            predictions: ``(start_logits, end_logits)``, each ``(windows, seq)`` float
                (positions past a window's length padded by the Trainer with -100).
            label_ids: unused (the gold answers are in ``examples``).
            examples: the eval questions (:meth:`load_split` rows).
            features: their windows (:meth:`tokenize` of ``examples``), in the same order as
                ``predictions``.

        Returns:
            ``(columns, scores, metrics)``: per question ``index``, ``id``, ``prediction``
            (the answer after the threshold; "" = no answer), ``best_span``,
            ``null_score_diff``, ``has_answer``, ``exact`` and ``f1`` (0/1, 0–1);
            :class:`~loraexp.results.statistics.ExampleScores` of ``exact``, ``f1`` and their
            ``HasAns_`` / ``NoAns_`` parts (percent, so the value equals the metric); the
            official metrics (percent) plus ``no_answer_exact`` / ``no_answer_f1`` of the
            always-no-answer baseline.
        """
        import numpy as np

        from loraexp.results.statistics import ExampleScores
        from loraexp.tasks.squad_v2_eval import apply_no_answer_threshold, has_answer, raw_scores, squad_v2_scores

        start_logits, end_logits = predictions
        spans, diffs = best_spans(start_logits, end_logits, features["example_index"], features["offset_mapping"],
                                  examples["context"], self.settings.n_best, self.settings.max_answer_length)
        ids = list(examples["id"])
        gold = {qid: list(answers["text"]) for qid, answers in zip(ids, examples["answers"])}
        best = dict(zip(ids, spans))
        no_answer = dict(zip(ids, diffs))
        threshold = self.settings.null_score_diff_threshold
        metrics = squad_v2_scores(gold, best, no_answer, threshold)
        baseline = squad_v2_scores(gold, dict.fromkeys(ids, ""))
        metrics.update({"no_answer_exact": baseline["exact"], "no_answer_f1": baseline["f1"]})

        answerable = has_answer(gold)
        exact, f1 = raw_scores(gold, best)
        exact = apply_no_answer_threshold(exact, no_answer, answerable, threshold)
        f1 = apply_no_answer_threshold(f1, no_answer, answerable, threshold)
        index = np.arange(len(ids))
        has = np.array([answerable[q] for q in ids])
        columns = {"index": index, "id": np.array(ids), "best_span": np.array(spans, dtype=str),
                   "prediction": np.array(["" if no_answer[q] > threshold else best[q] for q in ids], dtype=str),
                   "null_score_diff": np.array(diffs), "has_answer": has,
                   "exact": np.array([exact[q] for q in ids], dtype=float), "f1": np.array([f1[q] for q in ids])}
        scores = {}
        for prefix, rows in (("", index), ("HasAns_", index[has]), ("NoAns_", index[~has])):
            if len(rows):
                for name in ("exact", "f1"):
                    scores[f"{prefix}{name}"] = ExampleScores(rows, 100.0 * columns[name][rows], np.ones(len(rows)))
        return columns, scores, metrics


def read_squad_json(path: Path) -> list[dict[str, Any]]:
    """The ``data`` list (articles) of a SQuAD JSON file.

    Raises:
        DataError: not UTF-8, not JSON, not the SQuAD schema (``data[].paragraphs[].qas[]``, each
            answer with ``text`` and an integer ``answer_start``), or a question id repeated.
    """
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
        [paragraph["context"] for article in articles for paragraph in article["paragraphs"]]  # noqa: B018
        ids = [row["id"] for article in articles for row in question_rows(article)]  # every field read once
    except UnicodeDecodeError as exc:
        raise DataError(f"squad_v2 file {str(path)!r} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"squad_v2 file {str(path)!r} is not JSON: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"squad_v2 file {str(path)!r} is not in the SQuAD schema (data[].paragraphs[].context, "
                        f"qas[].id/question/answers[].text/answer_start): {type(exc).__name__} {exc}") from None
    if not articles:
        raise DataError(f"squad_v2 file {str(path)!r} has no articles")
    repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if repeated:
        raise DataError(f"squad_v2 file {str(path)!r} repeats question ids (each question is scored by its id): "
                        f"{repeated[:3]}")
    return articles


def question_rows(article: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per question of a SQuAD article, in the Hub's schema."""
    return [{"id": qa["id"], "title": article.get("title", ""), "context": paragraph["context"],
             "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [int(a["answer_start"]) for a in qa["answers"]]}}
            for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def cls_position(input_ids: list[int], tokenizer) -> int:
    """Index of the CLS token in a window (0 when the tokenizer has none there)."""
    cls = tokenizer.cls_token_id
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


def answer_token_span(offsets: list[tuple[int, int]], in_context: list[bool], answers: dict[str, list],
                      cls_index: int = 0) -> tuple[int, int]:
    """``(start, end)`` token indices (inclusive) of the first gold answer in one window, or
    ``(cls_index, cls_index)`` when the question has no answer or the answer is not wholly
    inside the window's context (run_qa.py's ``prepare_train_features``).

    Args:
        offsets: ``(start_char, end_char)`` of each token of the window in its own sequence.
        in_context: whether each token belongs to the context.
        answers: ``{"text": [...], "answer_start": [...]}`` (character offsets in the context).
    """
    if not answers["answer_start"] or not answers["text"][0].strip():  # no answer, or an empty one
        return cls_index, cls_index
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [i for i, inside in enumerate(in_context) if inside]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return cls_index, cls_index
    start = next((i for i in context if offsets[i][1] > start_char), None)
    end = next((i for i in reversed(context) if offsets[i][0] < end_char), None)
    if start is None or end is None or end < start:  # an answer between tokens (white space only)
        return cls_index, cls_index
    return start, end


def best_spans(start_logits, end_logits, example_index, offset_mapping, contexts, n_best: int,
               max_answer_length: int) -> tuple[list[str], list[float]]:
    """Per question, the best answer span and null score − best span score
    (``utils_qa.postprocess_qa_predictions`` with ``version_2_with_negative``).

    Args:
        start_logits, end_logits: ``(windows, seq)`` floats; positions past a window's length
            are ignored (the Trainer pads them).
        example_index: ``(windows,)`` the question each window belongs to (0..questions−1).
        offset_mapping: per window, ``(start_char, end_char)`` of each token in the context,
            (-1, -1) outside it.
        contexts: the questions' contexts.
        n_best: start and end candidates per window; max_answer_length: in tokens.

    Returns:
        ``(spans, diffs)``, one per question: the best span's text ("" when no window has a
        valid span; its score is then −inf and the diff +inf) and null score − best score,
        where the null score is the smallest CLS (position 0) start + end over the windows.
    """
    import numpy as np

    questions = len(contexts)
    best_score = np.full(questions, -np.inf)
    best_text = [""] * questions
    null_score = np.full(questions, np.inf)
    for window, question in enumerate(example_index):
        offsets = offset_mapping[window]
        starts = np.asarray(start_logits[window][:len(offsets)], dtype=np.float64)
        ends = np.asarray(end_logits[window][:len(offsets)], dtype=np.float64)
        null_score[question] = min(null_score[question], starts[0] + ends[0])
        for s in np.argsort(starts)[::-1][:n_best]:
            for e in np.argsort(ends)[::-1][:n_best]:
                if (offsets[s][0] < 0 or offsets[e][0] < 0 or e < s or e - s + 1 > max_answer_length
                        or starts[s] + ends[e] <= best_score[question]):
                    continue
                best_score[question] = starts[s] + ends[e]
                best_text[question] = contexts[question][offsets[s][0]:offsets[e][1]]
    return best_text, [float(d) for d in null_score - best_score]


SQUAD_V2 = SquadV2Task()
