"""One evaluation pass of a run: the Trainer's metrics, post-processed by the task, its
generation metrics, and the per-example scores the seed and bootstrap statistics need
(docs/results.md, "Statistics")."""

from __future__ import annotations

from typing import Any

from loraexp.results.storage import RunStore


def evaluate_split(trainer, task, tokenizer, eval_split, eval_data, evaluation, store: RunStore, label: str,
                   keep_examples: bool = False, main: bool = True) -> tuple[dict[str, Any], str | None]:
    """Evaluate ``trainer.model`` on ``eval_data`` (the tokenized ``eval_split``).

    Metrics come without the ``<label>_`` prefix, post-processed by the task
    (:meth:`~loraexp.tasks.base.Task.postprocess_metrics`), plus its generation metrics
    (``evaluation``: :class:`~loraexp.config.schema.EvaluationConfig`; per-example records to
    ``generations_<label>.jsonl``). With ``keep_examples`` (or for a task whose metrics need the
    examples) ``Trainer.predict`` runs the same evaluation loop and the task scores each example
    (:meth:`~loraexp.tasks.base.Task.example_scores`); with ``keep_examples`` the per-example
    scores go to ``predictions.npz`` on the ``main`` process
    (:func:`~loraexp.results.statistics.save_predictions`).

    Returns:
        ``(metrics, predictions file name or None)``.
    """
    from loraexp.results.statistics import PREDICTIONS_FILE, record_scores, save_predictions

    columns: dict[str, Any] = {}
    scores: dict[str, Any] = {}
    if keep_examples or task.metrics_from_examples:
        output = trainer.predict(eval_data, metric_key_prefix=label)
        columns, scores, extra = task.example_scores(output.predictions, output.label_ids, tokenizer, eval_split,
                                                     eval_data)
        metrics = {**output.metrics, **{f"{label}_{k}": v for k, v in extra.items()}}
        trainer.log(metrics)
    else:
        metrics = trainer.evaluate(metric_key_prefix=label)
    out = task.postprocess_metrics({k.removeprefix(f"{label}_"): v for k, v in metrics.items()})
    generated = task.evaluate_generation(trainer.model, tokenizer, eval_split, evaluation)
    if generated is not None:
        values, records = generated
        out.update(values)
        store.write_jsonl(f"generations_{label}.jsonl", records)
        if records and keep_examples:
            scores.update(record_scores(records, [k for k in values if k in records[0]]))
    if keep_examples and scores and main:
        save_predictions(store.run_dir / PREDICTIONS_FILE, columns, scores)
        return out, PREDICTIONS_FILE
    return out, None
