"""Text generation with transformers' ``generate``: batched, left-padded, greedy by default."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, batch_size: int = 8,
                   do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                   top_k: int = 50, add_special_tokens: bool | None = None) -> list[str]:
    """Continuations (new tokens only, special tokens removed) of each prompt.

    Args:
        prompts: already formatted prompt texts (e.g. a chat template with the generation
            prompt).
        max_new_tokens: generation budget per prompt, in tokens.
        batch_size: prompts per ``generate`` call; prompts are left-padded so every
            continuation starts at the same position.
        do_sample: False = greedy decoding (temperature/top_p/top_k unused); True samples.
        add_special_tokens: passed to the tokenizer; None = only when the tokenizer has no
            chat template (a rendered chat template already holds its special tokens).
    """
    if add_special_tokens is None:
        add_special_tokens = not getattr(tokenizer, "chat_template", None)
    sampling = {"do_sample": do_sample}
    if do_sample:
        sampling.update(temperature=temperature, top_p=top_p, top_k=top_k)
    else:  # silence generation_config sampling defaults that greedy decoding ignores
        sampling.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=add_special_tokens).to(model.device)
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                       **sampling)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return outputs
