"""A faster stand-in for trl's fused LM head, for CPU runs only.

trl 1.16's SFT and DPO trainers patch the model so that ``model(..., fused_lm_head=True)``
returns per-token log-probabilities without building the full ``(batch, seq, vocab)`` logits.
On a GPU that runs as Triton kernels over the label positions only. Without Triton it folds
every position (prompt included) through a dozen elementwise passes per vocabulary tile; with
SmolLM2's 49k vocabulary that made a tiny model's CPU step ~8x slower than plain logits.

Here, on CPU, the same output contract (``FusedCausalLMOutput``) is computed the plain way, but
only at the positions whose label is not -100: the backbone runs once, the LM head projects the
completion positions, log-softmax gives every field trl reads. trl's loss code is untouched.
"""

from __future__ import annotations

import types

import torch
from trl.trainer.utils import FusedCausalLMOutput


def use_plain_lm_head(model: torch.nn.Module, log_sum_sq_probs: bool = False) -> None:
    """Replace trl's fused-head forward of ``model`` (already patched by trl) on CPU.

    ``log_sum_sq_probs`` is only read by DPO's WPO weighting (``use_weighting``): off by default.
    """
    trl_forward = model.forward  # trl's patched forward; the plain path goes through it

    def forward(
        self,
        *args,
        fused_lm_head=False,
        labels=None,
        shift_labels=None,
        num_items_in_batch=None,
        **kwargs,
    ):
        if not fused_lm_head:
            return trl_forward(
                *args,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        mask = labels != -100
        targets = labels[mask]
        logits = self.get_output_embeddings()(hidden[mask]).float()
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(-1, targets[:, None]).squeeze(-1)

        def full(values: torch.Tensor) -> torch.Tensor:
            # masked_scatter keeps the graph even when no label is valid (a zero, not an error).
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        with torch.no_grad():
            probs = logp.exp()
            entropy = -(probs * logp).sum(-1)
            log_sum_sq = torch.logsumexp(2 * logp, dim=-1) if log_sum_sq_probs else None
            mean_logits = logits.mean(-1)
            is_top1 = (logits.argmax(-1) == targets).float()
        log_probs = full(picked)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=full(entropy),
            log_sum_sq_probs=full(log_sum_sq) if log_sum_sq is not None else None,
            mean_logits=full(mean_logits),
            is_top1=full(is_top1).bool(),
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
